"""In-process request figures: counts, errors and latency histograms per route."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

# Upper bounds in milliseconds; the last bucket is everything slower.
LATENCY_BOUNDS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


@dataclass(slots=True)
class Series:
    """Figures of one (route, method, status class)."""

    count: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    histogram: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))

    def observe(self, latency_ms: float, error: bool) -> None:
        self.count += 1
        self.errors += error
        self.latency_sum_ms += latency_ms
        if latency_ms > self.latency_max_ms:
            self.latency_max_ms = latency_ms
        self.histogram[bisect.bisect_left(LATENCY_BOUNDS_MS, latency_ms)] += 1


def percentile(histogram: list[int], q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` (None when empty)."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    running = 0
    for i, n in enumerate(histogram):
        running += n
        if running >= rank:
            return float(LATENCY_BOUNDS_MS[i]) if i < len(LATENCY_BOUNDS_MS) else float("inf")
    return float("inf")


class RequestMetrics:
    """Accumulates what the metrics middleware observes since start."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], Series] = {}

    def observe(self, route: str, method: str, status: int, latency_ms: float) -> None:
        key = (route, method, f"{status // 100}xx")
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        series.observe(latency_ms, status >= 500)

    def totals(self) -> dict[str, Any]:
        """Summed figures over every series."""
        count = sum(s.count for s in self.series.values())
        errors = sum(s.errors for s in self.series.values())
        return {"requests": count, "errors": errors, "error_rate": errors / count if count else 0.0}

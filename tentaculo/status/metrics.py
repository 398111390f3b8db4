"""In-process request figures: counts, errors and latency histograms per route and per provider.

Figures accumulate in the current bucket until :meth:`RequestMetrics.seal` hands them to the
rollup writer (``tentaculo.rollup``) and starts a new one; totals since start are kept beside.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Upper bounds in milliseconds; the last bucket is everything slower. Rollups of every instance
# are summed bucket by bucket, so changing these bounds needs a migration of performance_logs.
LATENCY_BOUNDS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
# "2xx" for 200..299, without formatting a string per request.
_STATUS_CLASSES = tuple(f"{n}xx" for n in range(10))


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

    def merge(self, other: Series) -> None:
        """Add ``other``'s figures to these (histograms bucket by bucket)."""
        self.count += other.count
        self.errors += other.errors
        self.latency_sum_ms += other.latency_sum_ms
        if other.latency_max_ms > self.latency_max_ms:
            self.latency_max_ms = other.latency_max_ms
        hist = self.histogram
        for i, n in enumerate(other.histogram[: len(hist)]):
            hist[i] += n


def merge_into(target: dict[Any, Series], source: Mapping[Any, Series]) -> None:
    """Add every series of ``source`` to ``target``, copying rather than sharing."""
    for key, series in source.items():
        mine = target.get(key)
        if mine is None:
            mine = target[key] = Series()
        mine.merge(series)


def quantile(histogram: Iterable[int], q: float, max_ms: float) -> float | None:
    """Quantile ``q`` of a fixed-bucket histogram, interpolated inside its bucket and capped at
    the largest value seen (None when empty). The same estimate as Prometheus' histogram_quantile."""
    counts = list(histogram)
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    running = 0
    lower = 0.0
    for i, n in enumerate(counts):
        upper = float(LATENCY_BOUNDS_MS[i]) if i < len(LATENCY_BOUNDS_MS) else max(max_ms, lower)
        if n and running + n >= rank:
            return round(min(lower + (upper - lower) * (rank - running) / n, max_ms), 3)
        running += n
        lower = upper
    return round(max_ms, 3)


HttpKey = tuple[str, str, str]  # route, method, status class
ProviderKey = tuple[str, str, str, str]  # route, method, outcome (ok | error | cancelled), provider


@dataclass(slots=True)
class Bucket:
    """Figures observed from ``start`` to ``end`` (wall-clock seconds), handed over by ``seal``."""

    start: float
    end: float
    http: dict[HttpKey, Series]
    providers: dict[ProviderKey, Series]

    @property
    def empty(self) -> bool:
        return not self.http and not self.providers


class RequestMetrics:
    """Accumulates what the metrics middleware and the chat path observe.

    ``series`` and ``provider_series`` hold the current bucket; ``seal()`` swaps them for empty
    ones (no work on the request path) and adds them to the totals since start.
    """

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self.started = self.opened = clock()
        self.series: dict[HttpKey, Series] = {}
        self.provider_series: dict[ProviderKey, Series] = {}
        self._http_total: dict[HttpKey, Series] = {}
        self._provider_total: dict[ProviderKey, Series] = {}

    def observe(self, route: str, method: str, status: int, latency_ms: float) -> None:
        key = (route, method, _STATUS_CLASSES[status // 100] if 0 <= status < 1000 else "other")
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        series.observe(latency_ms, status >= 500)

    def observe_provider(self, route: str, method: str, provider: str, outcome: str, latency_ms: float) -> None:
        """One provider call of a chat ended: ``outcome`` is ok, error or cancelled."""
        key = (route, method, outcome, provider)
        series = self.provider_series.get(key)
        if series is None:
            series = self.provider_series[key] = Series()
        series.observe(latency_ms, outcome == "error")

    def seal(self) -> Bucket:
        """Hand over the current bucket and start a new one."""
        now = self._clock()
        bucket = Bucket(self.opened, now, self.series, self.provider_series)
        self.series, self.provider_series, self.opened = {}, {}, now
        merge_into(self._http_total, bucket.http)
        merge_into(self._provider_total, bucket.providers)
        return bucket

    def current(self) -> Bucket:
        """The figures not sealed yet (shared, not copied: read them before the next await)."""
        return Bucket(self.opened, self._clock(), self.series, self.provider_series)

    def since_start(self) -> tuple[dict[HttpKey, Series], dict[ProviderKey, Series]]:
        """Copies of every figure since this instance started."""
        http: dict[HttpKey, Series] = {}
        merge_into(http, self._http_total)
        merge_into(http, self.series)
        providers: dict[ProviderKey, Series] = {}
        merge_into(providers, self._provider_total)
        merge_into(providers, self.provider_series)
        return http, providers

    def totals(self) -> dict[str, Any]:
        """Summed request figures since start."""
        count = errors = 0
        for part in (self._http_total, self.series):
            for s in part.values():
                count += s.count
                errors += s.errors
        return {"requests": count, "errors": errors, "error_rate": errors / count if count else 0.0}

"""The circuit breaker a provider (and a proxied module) gets: it stops calling a backend that keeps failing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class CircuitBreaker:
    """Per-provider breaker: ``closed`` -> ``open`` after N consecutive failures -> ``half_open``
    after ``reset_seconds`` (one trial call) -> ``closed`` on success, ``open`` again on failure."""

    def __init__(self, failures: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._state = "closed"
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self._state == "open" and self.opened_at is not None:
            if self._clock() - self.opened_at >= self.reset_seconds:
                self._state = "half_open"
                self._trial = False
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In ``half_open`` only one trial call at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self._state, self.failures, self.opened_at, self._trial = "closed", 0, None, False

    def failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self._state, self.opened_at, self._trial = "open", self._clock(), False

    def release(self) -> None:
        """A call ended without a verdict (cancelled): let another trial through."""
        self._trial = False

    def snapshot(self) -> dict[str, Any]:
        state = self.state
        retry_in = None
        if state == "open" and self.opened_at is not None:
            retry_in = round(max(0.0, self.reset_seconds - (self._clock() - self.opened_at)), 3)
        return {"state": state, "failures": self.failures, "retry_in_s": retry_in}

"""DependencyMonitor: PostgreSQL and Redis checked in the background, so status answers from memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tentaculo.db import DB_FAILURES, queries
from tentaculo.health import Status, shorten
from tentaculo.http.errors import failure_reason
from tentaculo.tasks import Periodic, within

log = structlog.get_logger("tentaculo.dependencies")

# What a PostgreSQL or Redis call may raise when either is away.
DEPENDENCY_FAILURES = (*DB_FAILURES, RedisError)


@dataclass(frozen=True, slots=True)
class DependencyCheck:
    """The last check of one dependency."""

    status: Status
    reason: str | None
    latency_ms: float | None
    checked_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "latency_ms": self.latency_ms,
                "checked_at": self.checked_at}


NOT_CHECKED = DependencyCheck("error", "not checked yet", None, None)


async def timed_check(check: Callable[[], Awaitable[str | None]], timeout: float) -> tuple[str | None, float]:
    """Run ``check`` within ``timeout`` s: what is wrong (None: nothing) and how long it took, in ms."""
    started = time.perf_counter()
    try:
        problem = await within(check(), timeout)
    except DEPENDENCY_FAILURES as exc:
        problem = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else failure_reason(exc)
    return problem, round((time.perf_counter() - started) * 1000, 3)


class DependencyMonitor:
    """Pings PostgreSQL and Redis every ``interval`` s (each bounded by ``timeout``) and keeps the results."""

    def __init__(self, pool: asyncpg.Pool, redis: Redis, *, interval: float, timeout: float = 2.0) -> None:
        self.interval = interval
        self.timeout = timeout
        async def postgresql() -> None:
            await queries.ping(pool)

        async def redis_ping() -> None:
            await redis.ping()

        self._checks: dict[str, Callable[[], Awaitable[None]]] = {"postgresql": postgresql, "redis": redis_ping}
        self.results: dict[str, DependencyCheck] = dict.fromkeys(self._checks, NOT_CHECKED)
        self._checking = Periodic("dependency-monitor", self.check_all, interval)

    async def start(self) -> None:
        """Check once (bounded), then keep checking in the background."""
        await self.check_all()
        self._checking.start()

    async def close(self) -> None:
        await self._checking.stop()

    async def check_all(self) -> None:
        """Check every dependency at once and keep the results."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._check(self._checks[n]) for n in names))
        for name, result in zip(names, results, strict=True):
            previous = self.results.get(name)
            if previous is not None and previous.checked_at is not None and previous.status != result.status:
                log.info("dependency_status_changed", dependency=name, status=result.status, reason=result.reason)
            self.results[name] = result

    async def _check(self, ping: Callable[[], Awaitable[None]]) -> DependencyCheck:
        reason, latency = await timed_check(ping, self.timeout)
        now = datetime.now(UTC)
        if reason is None:
            return DependencyCheck("on", None, latency, now)
        return DependencyCheck("error", shorten(reason), None, now)

    def redis_check(self) -> DependencyCheck:
        """The last check of the gateway's Redis (what the ``redis`` module shows when it is that Redis)."""
        return self.results["redis"]

    def last_check(self) -> tuple[float | None, datetime | None]:
        """(latency in ms, time) of the gateway's own last health check, as ``tentaculo_link`` shows it.

        The gateway is healthy when its dependencies answer, so its check is theirs: it waits on the
        slowest of them, and has no latency while one does not answer.
        """
        checks = list(self.results.values())
        times = [c.checked_at for c in checks if c.checked_at is not None]
        latencies = [c.latency_ms for c in checks]
        slowest = None if None in latencies else max((x for x in latencies if x is not None), default=None)
        return slowest, max(times, default=None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: check.as_dict() for name, check in self.results.items()}

"""MetricsRollup: every instance's figures in ``performance_logs``, and windows read back across instances.

Writing. Every ``bucket_seconds`` (aligned to the wall clock) the rollup seals this instance's
current figures (:meth:`RequestMetrics.seal`) and writes them with one COPY: a row per
(bucket, instance, route, method, status class, provider) that saw traffic, with a fixed-bound
latency histogram, so rows of any instances add up and percentiles can be taken from the sum.
While PostgreSQL is away sealed buckets wait in memory (at most ``backlog`` buckets; older ones
are dropped and counted). Shutdown seals and writes what is left.

Reading. A window is every instance's rows from its start on, plus this instance's figures not
written yet (the sealed backlog and the current bucket). A flush moves figures from memory to
the table, so a read must not overlap one: the read notes a generation number, queries, and
takes the memory part only if no flush began meanwhile (else it tries again, and finally reads
under the flush lock). Nothing is counted twice or missed.

Event. Every ``event_seconds`` each instance tries to claim the period in Redis (SET NX); the one
that does publishes a ``metrics`` event with every instance's figures over the smallest window
covering the period, so clients get one summary per period whatever the number of instances.

Maintenance. One instance at a time (advisory lock) merges rows older than ``COMPACT_AFTER``
into ``COMPACT_SECONDS`` buckets and deletes rows older than ``RETENTION``, so the 24 h window
reads about a thousand rows per series and instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from redis.asyncio import Redis

from tentaculo.db import DB_FAILURES, DB_REJECTED, queries
from tentaculo.events.hub import REDIS_FAILURES, EventHub
from tentaculo.http.errors import failure_reason
from tentaculo.status.metrics import LATENCY_BOUNDS_MS, Bucket, RequestMetrics, Series, merge_into, quantile
from tentaculo.tasks import stop_task

log = structlog.get_logger("tentaculo.rollup")

WINDOWS = {"1m": 60, "5m": 300, "1h": 3600, "24h": 86_400}
COMPACT_AFTER = 2 * 3600
COMPACT_SECONDS = 300
RETENTION = 86_400 + 3600
MAINTENANCE_SECONDS = 300.0
WRITE_TIMEOUT = 5.0
READ_TIMEOUT = 5.0
READ_TRIES = 3
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))

# (route, method, status class or provider outcome, provider; "" for request rows)
RowKey = tuple[str, str, str, str]



def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def bucket_rows(bucket: Bucket, instance: str, bucket_seconds: int) -> list[tuple[Any, ...]]:
    """``performance_logs`` rows of one sealed bucket (columns of ``queries.PERFORMANCE_COLUMNS``)."""
    start = _utc(math.floor(bucket.start / bucket_seconds) * bucket_seconds)
    rows: list[tuple[Any, ...]] = []
    for (route, method, status_class), s in bucket.http.items():
        rows.append((start, bucket_seconds, instance, route, method, status_class, None, s.count, s.errors,
                     s.latency_sum_ms, s.latency_max_ms, s.histogram))
    for (route, method, outcome, provider), s in bucket.providers.items():
        rows.append((start, bucket_seconds, instance, route, method, outcome, provider, s.count, s.errors,
                     s.latency_sum_ms, s.latency_max_ms, s.histogram))
    return rows


def _add_bucket(target: dict[RowKey, Series], bucket: Bucket) -> None:
    merge_into(target, {(r, m, c, ""): s for (r, m, c), s in bucket.http.items()})
    merge_into(target, {(r, m, o, p): s for (r, m, o, p), s in bucket.providers.items()})


@dataclass(slots=True)
class Figures:
    """Summed series of a window, by (route, method, status class or outcome, provider)."""

    seconds: float
    since: float
    until: float
    series: dict[RowKey, Series] = field(default_factory=dict)
    instances: set[str] = field(default_factory=set)
    complete: bool = True
    reason: str | None = None

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            hist = list(row["histogram"] or ())
            width = len(LATENCY_BOUNDS_MS) + 1
            s = Series(int(row["count"]), int(row["errors"]), float(row["latency_sum_ms"]),
                       float(row["latency_max_ms"]), (hist + [0] * width)[:width])
            merge_into(self.series, {(row["route"], row["method"], row["status_class"], row["provider"]): s})
            self.instances.update(row["instances"] or ())

    def add_bucket(self, bucket: Bucket, instance: str) -> None:
        if not bucket.empty:
            _add_bucket(self.series, bucket)
            self.instances.add(instance)


EVENT_ROUTES = 20


def event_window(period_seconds: float) -> str:
    """The smallest window that covers an event period."""
    return next((name for name, seconds in WINDOWS.items() if seconds >= period_seconds), "24h")


def event_data(figures: Figures, window: str) -> dict[str, Any]:
    """The ``metrics`` event's data (docs/events.md): totals, the busiest routes, every provider."""
    doc = summarize(figures)
    totals = doc["totals"]
    return {
        "window": window,
        "window_seconds": WINDOWS[window],
        "from": doc["from"],
        "to": doc["to"],
        "instances": doc["instances"],
        "complete": doc["complete"],
        **totals,
        "status_classes": {c: v["requests"] for c, v in doc["status_classes"].items()},
        "routes": [{"route": r["route"], "method": r["method"], "requests": r["requests"], "errors": r["errors"],
                    "p99_ms": r["latency_ms"]["p99"]} for r in doc["routes"][:EVENT_ROUTES]],
        "providers": [{"provider": p["provider"], "calls": p["calls"], "errors": p["errors"],
                       "p99_ms": p["latency_ms"]["p99"]} for p in doc["providers"]],
    }


def latency_view(s: Series) -> dict[str, float | None]:
    """p50/p95/p99 (histogram estimates), mean and max of one series, in milliseconds."""
    view: dict[str, float | None] = {name: quantile(s.histogram, q, s.latency_max_ms) for name, q in QUANTILES}
    view["mean"] = round(s.latency_sum_ms / s.count, 3) if s.count else None
    view["max"] = round(s.latency_max_ms, 3) if s.count else None
    return view


def _figures_view(s: Series, seconds: float, *, count_name: str) -> dict[str, Any]:
    return {
        count_name: s.count,
        "rate_per_s": round(s.count / seconds, 6) if seconds else 0.0,
        "errors": s.errors,
        "error_rate": round(s.errors / s.count, 6) if s.count else 0.0,
        "latency_ms": latency_view(s),
    }


def summarize(figures: Figures) -> dict[str, Any]:
    """The document of ``GET /operator/api/metrics`` (without window name and dropped counts)."""
    seconds = figures.seconds
    total = Series()
    by_class: dict[str, Series] = {}
    routes: dict[tuple[str, str], tuple[Series, dict[str, int]]] = {}
    providers: dict[str, tuple[Series, dict[str, int]]] = {}
    for (route, method, status_class, provider), s in sorted(figures.series.items()):
        if provider:
            p, outcomes = providers.setdefault(provider, (Series(), {}))
            p.merge(s)
            outcomes[status_class] = outcomes.get(status_class, 0) + s.count
            continue
        total.merge(s)
        by_class.setdefault(status_class, Series()).merge(s)
        r, classes = routes.setdefault((route, method), (Series(), {}))
        r.merge(s)
        classes[status_class] = classes.get(status_class, 0) + s.count
    return {
        "from": _utc(figures.since),
        "to": _utc(figures.until),
        "instances": sorted(figures.instances),
        "complete": figures.complete,
        "reason": figures.reason,
        "totals": _figures_view(total, seconds, count_name="requests"),
        "status_classes": {c: _figures_view(s, seconds, count_name="requests") for c, s in sorted(by_class.items())},
        "routes": [
            {"route": route, "method": method, **_figures_view(s, seconds, count_name="requests"),
             "status_classes": classes}
            for (route, method), (s, classes) in sorted(routes.items(), key=lambda kv: (-kv[1][0].count, kv[0]))
        ],
        "providers": [
            {"provider": name, **_figures_view(s, seconds, count_name="calls"), "outcomes": outcomes}
            for name, (s, outcomes) in sorted(providers.items())
        ],
    }


class MetricsRollup:
    """Writes this instance's figures to ``performance_logs`` and reads windows across instances."""

    def __init__(
        self,
        metrics: RequestMetrics,
        pool: asyncpg.Pool,
        *,
        instance: str,
        bucket_seconds: float,
        backlog: int,
        hub: EventHub | None = None,
        redis: Redis | None = None,
        redis_prefix: str = "",
        event_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._pool = pool
        self.instance = instance
        self.bucket_seconds = max(1, int(bucket_seconds))
        self.backlog = backlog
        self._hub = hub
        self._redis = redis
        self._event_key = f"{redis_prefix}metrics:event:"
        self.event_seconds = event_seconds
        self._clock = clock
        self._pending: deque[Bucket] = deque()
        self._lock = asyncio.Lock()
        self._idle = asyncio.Event()
        self._idle.set()
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self._next_event = (math.floor(clock() / event_seconds) + 1) * event_seconds if event_seconds else 0.0
        self._maintained = 0.0
        self.written_rows = 0
        self.dropped_buckets = 0
        self.failures = 0
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="metrics-rollup")

    async def close(self, timeout: float) -> None:
        """Stop the loop and write what is left for at most ``timeout`` seconds."""
        await stop_task(self._task)
        self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not await self.flush():
                    await asyncio.sleep(0.2)
        if self._pending:
            self.dropped_buckets += len(self._pending)
            log.error("metrics_lost_at_shutdown", buckets=len(self._pending), error=self.last_error)
            self._pending.clear()

    async def _run(self) -> None:
        while True:
            now = self._clock()
            await asyncio.sleep((math.floor(now / self.bucket_seconds) + 1) * self.bucket_seconds - now)
            try:
                await self.flush()
                now = self._clock()
                if self.event_seconds and now >= self._next_event:
                    self._next_event = (math.floor(now / self.event_seconds) + 1) * self.event_seconds
                    await self.publish_summary(now)
                if self._clock() - self._maintained >= MAINTENANCE_SECONDS:
                    await self.maintain()
            except asyncio.CancelledError:
                raise
            except Exception:  # isolation boundary: one bad round must not end the rollups
                log.exception("metrics_rollup_failed")

    # -- writing -----------------------------------------------------------------------------

    async def flush(self) -> bool:
        """Seal the current figures and write every sealed bucket; False when PostgreSQL refused."""
        async with self._lock:
            self._generation += 1  # odd: a flush is moving figures from memory to the table
            self._idle.clear()
            try:
                return await self._write()
            finally:
                self._generation += 1
                self._idle.set()

    async def _write(self) -> bool:
        bucket = self._metrics.seal()
        if not bucket.empty:
            self._pending.append(bucket)
            while len(self._pending) > self.backlog:
                self._pending.popleft()
                self.dropped_buckets += 1
                log.error("metrics_bucket_dropped", dropped=self.dropped_buckets, backlog=self.backlog)
        if not self._pending:
            return True
        rows = [row for b in self._pending for row in bucket_rows(b, self.instance, self.bucket_seconds)]
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                async with self._pool.acquire() as conn:
                    async with conn.transaction():
                        await queries.copy_performance_rows(conn, rows)
        except DB_REJECTED as exc:
            self.dropped_buckets += len(self._pending)
            self._pending.clear()
            self.last_error = failure_reason(exc)
            log.error("metrics_rows_rejected", rows=len(rows), error=self.last_error)
            return True
        except DB_FAILURES as exc:
            self.failures += 1
            if self.last_error is None:
                log.warning("metrics_write_failed", buckets=len(self._pending), error=type(exc).__name__)
            self.last_error = failure_reason(exc)
            return False
        self._pending.clear()
        self.written_rows += len(rows)
        if self.last_error is not None:
            log.info("metrics_write_recovered")
            self.last_error = None
        return True

    async def maintain(self) -> None:
        """Compact old rows and drop expired ones, when no other instance is doing it."""
        self._maintained = now = self._clock()
        try:
            async with asyncio.timeout(30):
                async with self._pool.acquire() as conn:
                    async with conn.transaction():
                        if not await queries.try_performance_maintenance_lock(conn):
                            return
                        deleted = await queries.delete_performance_logs(conn, _utc(now - RETENTION))
                        compacted = await queries.compact_performance_logs(
                            conn, _utc(now - COMPACT_AFTER), COMPACT_SECONDS
                        )
        except DB_FAILURES as exc:
            log.warning("metrics_maintenance_failed", error=failure_reason(exc))
            return
        if deleted or compacted:
            log.info("metrics_maintained", deleted=deleted, compacted_into=compacted)

    # -- reading -----------------------------------------------------------------------------

    def _unwritten(self, figures: Figures, since_label: float) -> None:
        """Add this instance's figures not in the table yet (sealed backlog and current bucket)."""
        for bucket in (*self._pending, self._metrics.current()):
            if self._label(bucket.start) >= since_label:
                figures.add_bucket(bucket, self.instance)

    def _label(self, start: float) -> float:
        return math.floor(start / self.bucket_seconds) * self.bucket_seconds

    async def window(self, seconds: float) -> Figures:
        """Every instance's figures of the last ``seconds``, this instance's unwritten ones included once."""
        until = self._clock()
        figures = Figures(seconds, until - seconds, until)
        since = _utc(figures.since)
        try:
            for _ in range(READ_TRIES):
                await self._idle.wait()
                generation = self._generation
                rows = await self._query(since)
                if generation == self._generation:
                    break
            else:
                async with self._lock:  # no flush can start until the memory part is taken too
                    rows = await self._query(since)
                    figures.add_rows(rows)
                    self._unwritten(figures, figures.since)
                    return figures
        except DB_FAILURES as exc:
            figures.complete = False
            figures.reason = f"PostgreSQL unreachable ({type(exc).__name__}): only this instance's unwritten figures"
            self._unwritten(figures, figures.since)
            return figures
        figures.add_rows(rows)
        self._unwritten(figures, figures.since)
        return figures

    async def _query(self, since: datetime) -> list[asyncpg.Record]:
        async with asyncio.timeout(READ_TIMEOUT):
            return await queries.performance_window(self._pool, since)

    # -- the periodic event ------------------------------------------------------------------

    async def publish_summary(self, now: float) -> bool:
        """Publish the ``metrics`` event of the period holding ``now``: every instance's figures over
        the smallest window covering the period. Every instance tries; the first to claim the period
        in Redis publishes, so clients get one event per period. False when another one did."""
        if self._hub is None or self._redis is None or not self.event_seconds:
            return False
        period = math.floor(now / self.event_seconds)
        try:
            claimed = await self._redis.set(f"{self._event_key}{period}", self.instance, nx=True,
                                            ex=max(1, math.ceil(2 * self.event_seconds)))
        except REDIS_FAILURES as exc:
            log.warning("metrics_event_skipped", error=failure_reason(exc))
            return False
        if not claimed:
            return False
        window = event_window(self.event_seconds)
        data = event_data(await self.window(WINDOWS[window]), window)
        return self._hub.publish("metrics", data, correlation_id=None,
                                 severity="warning" if data["error_rate"] >= 0.05 else "info")

    def snapshot(self) -> dict[str, Any]:
        """Counters for status and metrics."""
        return {
            "queued_buckets": len(self._pending),
            "written_rows": self.written_rows,
            "dropped_buckets": self.dropped_buckets,
            "failures": self.failures,
            "last_error": self.last_error,
        }

"""AuditWriter: one row per request, buffered in memory, written to PostgreSQL in batches."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import asyncpg
import structlog

from tentaculo.db import queries

log = structlog.get_logger("tentaculo.audit")

# Errors in the data itself: retrying the same batch can never succeed.
_POISON = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


class AuditWriter:
    """Takes rows without blocking and writes them with COPY off the request path.

    While PostgreSQL is away rows stay in a buffer bounded by ``capacity``; rows beyond it
    are dropped and counted, never silently. ``close()`` flushes what is left.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        capacity: int,
        batch_size: int,
        flush_seconds: float,
        max_backoff: float = 5.0,
    ) -> None:
        self._pool = pool
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.max_backoff = max_backoff
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None

    @property
    def queued(self) -> int:
        return len(self._buffer)

    @property
    def healthy(self) -> bool:
        """False while the last write attempt failed."""
        return self.last_error is None

    def record(self, row: tuple[Any, ...]) -> None:
        """Queue one row (columns of ``queries.AUDIT_COLUMNS``); never blocks, never raises."""
        if len(self._buffer) >= self.capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("audit_buffer_full", dropped=self.dropped, capacity=self.capacity)
            return
        self._buffer.append(row)
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                await asyncio.sleep(backoff)
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                ok = await self.flush()
            except Exception as exc:  # isolation boundary: the writer must outlive any one failure
                log.exception("audit_writer_error", error=type(exc).__name__)
                self.last_error = f"{type(exc).__name__}: {exc}"
                ok = False
            backoff = 0.0 if ok else min(max(backoff * 2, 0.1), self.max_backoff)

    async def flush(self) -> bool:
        """Write everything queued; False if PostgreSQL refused (the rows stay queued)."""
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            try:
                async with self._pool.acquire() as conn:
                    await queries.copy_audit_rows(conn, batch)
            except asyncio.CancelledError:
                self._buffer.extendleft(reversed(batch))
                raise
            except _POISON as exc:
                self.dropped += len(batch)
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("audit_batch_rejected", rows=len(batch), error=self.last_error)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._buffer.extendleft(reversed(batch))
                self.failures += 1
                if self.last_error is None:
                    log.warning("audit_write_failed", queued=len(self._buffer), error=type(exc).__name__)
                self.last_error = f"{type(exc).__name__}: {exc}"
                return False
            else:
                self.written += len(batch)
                if self.last_error is not None:
                    log.info("audit_write_recovered", queued=len(self._buffer))
                    self.last_error = None
        return True

    async def close(self, timeout: float) -> None:
        """Stop the background loop and flush what is queued, for at most ``timeout`` seconds."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            async with asyncio.timeout(timeout):
                while not await self.flush():
                    await asyncio.sleep(0.2)
        except TimeoutError:
            pass
        if self._buffer:
            self.dropped += len(self._buffer)
            log.error("audit_rows_lost_at_shutdown", rows=len(self._buffer), error=self.last_error)
            self._buffer.clear()

    def snapshot(self) -> dict[str, Any]:
        """Counters for status and metrics."""
        return {
            "queued": self.queued,
            "written": self.written,
            "dropped": self.dropped,
            "failures": self.failures,
            "capacity": self.capacity,
            "last_error": self.last_error,
        }

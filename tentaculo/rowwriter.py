"""RowWriter: rows taken without blocking and written to PostgreSQL in batches, off the request path.

The audit log and the chat action log are both one of these; they differ only in the table
(the write function) and their name in logs and status.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import structlog

from tentaculo.db import DB_FAILURES, DB_REJECTED
from tentaculo.errors import failure_reason
from tentaculo.tasks import stop_task

log = structlog.get_logger("tentaculo.rows")

WriteRows = Callable[[asyncpg.Connection, Sequence[tuple[Any, ...]]], Awaitable[None]]

class RowWriter:
    """A bounded buffer of rows and the background task that writes them.

    ``record()`` never blocks and never raises. While PostgreSQL is away rows stay queued, up to
    ``capacity``; rows beyond it are dropped and counted, never silently. A batch PostgreSQL
    refuses for its data is retried one row at a time, so one bad row costs only itself.
    ``close()`` stops taking rows and flushes what is queued.
    """

    def __init__(
        self,
        name: str,
        pool: asyncpg.Pool,
        write: WriteRows,
        *,
        capacity: int,
        batch_size: int,
        flush_seconds: float,
        max_backoff: float = 5.0,
    ) -> None:
        self.name = name
        self._pool = pool
        self._write = write
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.max_backoff = max_backoff
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._one_at_a_time = 0  # rows left to write singly after a batch was refused
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None

    @property
    def queued(self) -> int:
        return len(self._buffer)

    def record(self, row: tuple[Any, ...]) -> None:
        """Queue one row; never blocks, never raises."""
        if self._closed or len(self._buffer) >= self.capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:  # counted always, logged sparingly
                log.error("rows_dropped", writer=self.name, dropped=self.dropped, closed=self._closed,
                          capacity=self.capacity)
            return
        self._buffer.append(row)
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-writer")

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
                log.exception("rows_writer_error", writer=self.name, error=type(exc).__name__)
                self.last_error = failure_reason(exc)
                ok = False
            backoff = 0.0 if ok else min(max(backoff * 2, 0.1), self.max_backoff)

    async def flush(self) -> bool:
        """Write everything queued; False if PostgreSQL could not be reached (the rows stay queued)."""
        while self._buffer:
            size = 1 if self._one_at_a_time else self.batch_size
            self._one_at_a_time = max(0, self._one_at_a_time - 1)
            batch = [self._buffer.popleft() for _ in range(min(size, len(self._buffer)))]
            try:
                async with self._pool.acquire() as conn:
                    await self._write(conn, batch)
            except asyncio.CancelledError:
                self._buffer.extendleft(reversed(batch))
                raise
            except DB_REJECTED as exc:
                if len(batch) > 1:
                    self._buffer.extendleft(reversed(batch))
                    self._one_at_a_time = len(batch)
                    continue
                self.dropped += 1
                self.last_error = failure_reason(exc)
                log.error("row_rejected", writer=self.name, error=self.last_error)
            except DB_FAILURES as exc:
                self._buffer.extendleft(reversed(batch))
                self.failures += 1
                if self.last_error is None:
                    log.warning("rows_write_failed", writer=self.name, queued=len(self._buffer),
                                error=type(exc).__name__)
                self.last_error = failure_reason(exc)
                return False
            else:
                self.written += len(batch)
                if self.last_error is not None:
                    log.info("rows_write_recovered", writer=self.name, queued=len(self._buffer))
                    self.last_error = None
        return True

    async def close(self, timeout: float) -> None:
        """Stop taking rows, stop the loop, and flush for at most ``timeout`` seconds."""
        self._closed = True
        await stop_task(self._task)
        self._task = None
        try:
            async with asyncio.timeout(timeout):
                while not await self.flush():
                    await asyncio.sleep(0.2)
        except TimeoutError:
            pass
        if self._buffer:
            self.dropped += len(self._buffer)
            log.error("rows_lost_at_shutdown", writer=self.name, rows=len(self._buffer), error=self.last_error)
            self._buffer.clear()

    def snapshot(self) -> dict[str, Any]:
        """Counters for status, readiness and metrics."""
        return {
            "queued": self.queued,
            "written": self.written,
            "dropped": self.dropped,
            "failures": self.failures,
            "capacity": self.capacity,
            "last_error": self.last_error,
        }

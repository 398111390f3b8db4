"""ChatActionLog: one ``copilot_actions_log`` row per chat, written off the request path."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import asyncpg
import structlog

from tentaculo.db import queries

log = structlog.get_logger("tentaculo.chatlog")

_POISON = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
_TRANSIENT = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class ChatActionLog:
    """Takes chat rows without blocking and writes them in batches.

    While PostgreSQL is away the rows wait in a buffer bounded by ``capacity``; rows beyond it
    are dropped, counted and logged. ``close()`` flushes what is left before the pool closes.
    """

    def __init__(self, pool: asyncpg.Pool, *, capacity: int, batch_size: int, flush_seconds: float,
                 max_backoff: float = 5.0) -> None:
        self._pool = pool
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
        self.last_error: str | None = None

    @property
    def queued(self) -> int:
        return len(self._buffer)

    def record(self, row: tuple[Any, ...]) -> None:
        """Queue one row (columns of ``queries.CHAT_ACTION_COLUMNS``); never blocks, never raises."""
        if self._closed or len(self._buffer) >= self.capacity:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:  # counted always, logged sparingly
                log.error("chat_action_dropped", dropped=self.dropped, closed=self._closed, capacity=self.capacity)
            return
        self._buffer.append(row)
        if len(self._buffer) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chat-action-log")

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
            backoff = 0.0 if await self.flush() else min(max(backoff * 2, 0.1), self.max_backoff)

    async def flush(self) -> bool:
        """Write everything queued; False if PostgreSQL refused (the rows stay queued)."""
        while self._buffer:
            size = 1 if self._one_at_a_time else self.batch_size
            self._one_at_a_time = max(0, self._one_at_a_time - 1)
            batch = [self._buffer.popleft() for _ in range(min(size, len(self._buffer)))]
            try:
                async with self._pool.acquire() as conn:
                    await queries.insert_chat_actions(conn, batch)
            except asyncio.CancelledError:
                self._buffer.extendleft(reversed(batch))
                raise
            except _POISON as exc:
                if len(batch) > 1:
                    # One bad row must not cost the others: retry them one at a time.
                    self._buffer.extendleft(reversed(batch[1:]))
                    self._buffer.appendleft(batch[0])
                    self._one_at_a_time = len(batch)
                    continue
                self.dropped += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("chat_action_row_rejected", error=self.last_error, correlation_id=batch[0][1])
            except _TRANSIENT as exc:
                self._buffer.extendleft(reversed(batch))
                if self.last_error is None:
                    log.warning("chat_action_write_failed", queued=len(self._buffer), error=type(exc).__name__)
                self.last_error = f"{type(exc).__name__}: {exc}"
                return False
            else:
                self.written += len(batch)
                if self.last_error is not None:
                    log.info("chat_action_write_recovered", queued=len(self._buffer))
                    self.last_error = None
        return True

    async def close(self, timeout: float) -> None:
        """Stop taking rows, stop the loop, and flush for at most ``timeout`` seconds."""
        self._closed = True
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
            log.error("chat_actions_lost_at_shutdown", rows=len(self._buffer), error=self.last_error)
            self._buffer.clear()

    def snapshot(self) -> dict[str, Any]:
        """Counters for status and metrics."""
        return {"queued": self.queued, "written": self.written, "dropped": self.dropped,
                "capacity": self.capacity, "last_error": self.last_error}

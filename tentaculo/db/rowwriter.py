"""RowWriter: rows taken without blocking and written to PostgreSQL in batches, off the request path.

The audit log and the chat action log are both one of these; they differ only in the table
(the write function), which of its columns hold JSON, and their name in logs and status.

A row is never dropped for what it holds. PostgreSQL text cannot hold NUL, and a str holding a
lone surrogate (what aiohttp makes of invalid UTF-8 in a path) cannot even be encoded for it, so
before a batch is written every string is made storable: NUL and invalid UTF-8 become visible
escapes (``\\x00``, ``\\xff``). A batch PostgreSQL still refuses for its data is halved until the
row at fault is found; that row is written with its text replaced by ``UNSTORABLE``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from tentaculo.db import DB_FAILURES, DB_REJECTED
from tentaculo.http.errors import failure_reason
from tentaculo.tasks import Periodic

log = structlog.get_logger("tentaculo.rows")

WriteRows = Callable[[asyncpg.Connection, Sequence[tuple[Any, ...]]], Awaitable[None]]

# What a text field of a row PostgreSQL refused even once made storable is replaced with.
UNSTORABLE = "[unstorable]"
# While writes fail, PostgreSQL is asked this often whether it answers again (one SELECT 1).
PROBE_SECONDS, PROBE_TIMEOUT = 0.2, 1.0
# The longest one batch's write may take before it counts as failed and its rows are kept.
WRITE_TIMEOUT = 10.0
# Rows queued longer than this mean writes have stalled (a silent partition raises nothing).
STALLED_SECONDS = 2.0
_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")
# JSON escapes jsonb refuses: \u0000 and lone surrogates. A false hit only costs a re-encoding.
_UNSTORABLE_JSON_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def refused_for_data(exc: Exception) -> bool:
    """Whether writing the same rows again can never succeed: PostgreSQL refused their data, or
    asyncpg's encoder failed on them before anything was sent (UnicodeEncodeError for a lone
    surrogate, TypeError, OverflowError, IndexError, ...); anything else of PostgreSQL is an outage."""
    return isinstance(exc, DB_REJECTED) or not isinstance(exc, DB_FAILURES)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte it could not decode
        return f"\\x{code - 0xDC00:02x}"
    return "\\x00" if code == 0 else f"\\u{code:04x}"


def storable_text(value: str) -> str:
    """``value`` as PostgreSQL text can hold it: NUL and undecodable bytes become ``\\x..`` escapes."""
    if (value.isascii() and "\x00" not in value) or _UNSTORABLE_CHAR.search(value) is None:
        return value
    return _UNSTORABLE_CHAR.sub(_escape, value)


def storable_json(text: str) -> str:
    """JSON text jsonb can hold: every string in it made storable; text that is not JSON is left to PostgreSQL."""
    if not _UNSTORABLE_JSON_ESCAPE.search(text) and storable_text(text) is text:
        return text
    try:
        return json.dumps(_storable_data(json.loads(text, strict=False)), ensure_ascii=False, separators=(",", ":"))
    except (ValueError, RecursionError):
        return text


def _storable_data(data: Any) -> Any:
    if isinstance(data, str):
        return storable_text(data)
    if isinstance(data, list):
        return [_storable_data(item) for item in data]
    if isinstance(data, dict):
        return {storable_text(k): _storable_data(v) for k, v in data.items()}
    return data


class RowWriter:
    """A bounded buffer of rows and the background task that writes them.

    ``record()`` never blocks and never raises. While PostgreSQL is away rows stay queued, up to
    ``capacity``; rows beyond it are dropped and counted, never silently. Rows are made storable
    in the writer task (see the module docstring); a batch refused for its data is halved until
    the row at fault is found, so one bad row costs only itself and is still written, with a
    marker. A refusal for data is never taken for an outage. ``close()`` stops taking rows and
    flushes what is queued.
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
        json_columns: Collection[int] = (),
    ) -> None:
        self.name = name
        self._pool = pool
        self._write = write
        self._json_columns = frozenset(json_columns)
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.max_backoff = max_backoff
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._wake = asyncio.Event()
        self._writing = Periodic(f"{name}-writer", self._write_queued, flush_seconds, wake=self._wake)
        self._backoff = 0.0
        self._closed = False
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self.escaped = 0  # rows written with NUL or invalid UTF-8 escaped
        self.marked = 0  # rows written with their text replaced by UNSTORABLE
        self.rejected = 0  # rows refused even so (a value that is not text is wrong: a bug)
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
        self._writing.start()

    async def _write_queued(self) -> None:
        """Write what is queued; when that fails, back off, then try again at once."""
        if await self._flush_guarded():
            self._backoff = 0.0
            return
        self._backoff = min(max(self._backoff * 2, 0.1), self.max_backoff)
        await self._back_off(self._backoff)
        self._wake.set()

    async def _back_off(self, seconds: float) -> None:
        """Wait out a backoff, but return as soon as a cheap probe says PostgreSQL answers again.

        Without it the writer slept up to ``max_backoff`` after PostgreSQL came back, while rows of
        calls made after the recovery filled the buffer and were dropped.
        """
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while (left := until - loop.time()) > 0:
            await asyncio.sleep(min(PROBE_SECONDS, left))
            if await self._answers():
                return

    async def _answers(self) -> bool:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                async with self._pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
        except (*DB_FAILURES, TimeoutError):
            return False
        return True

    def oldest_age(self) -> float | None:
        """Seconds the oldest queued row has waited (its first field is its time), or None when none waits."""
        if not self._buffer:
            return None
        first = self._buffer[0][0]
        return max(0.0, (datetime.now(UTC) - first).total_seconds()) if isinstance(first, datetime) else None

    async def _flush_guarded(self) -> bool:
        try:
            return await self.flush()
        except Exception as exc:  # isolation boundary: the writer must outlive any one failure
            log.error("rows_writer_error", writer=self.name, error=type(exc).__name__, queued=len(self._buffer))
            self.last_error = type(exc).__name__
            return False

    async def flush(self) -> bool:
        """Write everything queued; False if PostgreSQL could not be reached (the rows stay queued)."""
        while self._buffer:
            batch = [self._storable(self._buffer.popleft()) for _ in range(min(self.batch_size, len(self._buffer)))]
            done = 0  # rows of the batch written: halves are written in order, so always a prefix
            parts = [batch]
            try:
                while parts:
                    part = parts.pop()
                    try:
                        await self._write_rows(part)
                    except Exception as exc:
                        if not refused_for_data(exc):
                            raise
                        if len(part) > 1:
                            half = len(part) // 2
                            parts += (part[half:], part[:half])
                            continue
                        await self._write_marked(part[0], exc)
                    else:
                        self.written += len(part)
                    done += len(part)
            except DB_FAILURES as exc:
                self._buffer.extendleft(reversed(batch[done:]))
                self.failures += 1
                if self.last_error is None:
                    log.warning("rows_write_failed", writer=self.name, queued=len(self._buffer),
                                error=type(exc).__name__)
                self.last_error = failure_reason(exc)
                return False
            except BaseException:
                # Cancelled (or a bug outside the write): the rows stay queued, never lost unseen.
                self._buffer.extendleft(reversed(batch[done:]))
                raise
            if self.last_error is not None:
                log.info("rows_write_recovered", writer=self.name, queued=len(self._buffer))
                self.last_error = None
        return True

    async def _write_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        # A deadline on the whole write: a silent partition must fail it (rows stay queued), not hang it.
        async with asyncio.timeout(WRITE_TIMEOUT):
            async with self._pool.acquire() as conn:
                await self._write(conn, rows)

    def _storable(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """``row`` with every string made storable (the same tuple when nothing needed it)."""
        for value in row:  # the fast path: nearly every row is plain ASCII text
            if type(value) is str and not (value.isascii() and "\x00" not in value):
                break
        else:
            if not self._json_columns:
                return row
        fixed: list[Any] | None = None
        for i, value in enumerate(row):
            if type(value) is str:
                new = storable_json(value) if i in self._json_columns else storable_text(value)
                if new is not value:
                    fixed = fixed or list(row)
                    fixed[i] = new
        if fixed is None:
            return row
        self.escaped += 1
        return tuple(fixed)

    async def _write_marked(self, row: tuple[Any, ...], refusal: BaseException) -> None:
        """Write a row refused for its data with every text field replaced by UNSTORABLE.

        Only type names are logged: the refusal's message may quote the row, which may hold
        what a client sent.
        """
        marked = tuple(
            (json.dumps(UNSTORABLE) if i in self._json_columns else UNSTORABLE) if type(value) is str else value
            for i, value in enumerate(row)
        )
        try:
            await self._write_rows([marked])
        except Exception as exc:
            if not refused_for_data(exc):
                raise
            self.rejected += 1
            log.error("row_rejected", writer=self.name, error=type(exc).__name__, rejected=self.rejected)
        else:
            self.written += 1
            self.marked += 1
            log.warning("row_written_with_marker", writer=self.name, error=type(refusal).__name__)

    async def close(self, timeout: float) -> None:
        """Stop taking rows, stop the loop, and flush for at most ``timeout`` seconds."""
        self._closed = True
        await self._writing.stop()
        try:
            async with asyncio.timeout(timeout):
                while not await self._flush_guarded():
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
            "escaped": self.escaped,
            "marked": self.marked,
            "rejected": self.rejected,
            "capacity": self.capacity,
            "last_error": self.last_error,
            "oldest_queued_s": None if (age := self.oldest_age()) is None else round(age, 3),
        }

    def stalled(self) -> bool:
        """Whether the oldest queued row has waited past ``STALLED_SECONDS`` (flushes are every fraction of one)."""
        age = self.oldest_age()
        return age is not None and age > max(STALLED_SECONDS, 4 * self.flush_seconds)

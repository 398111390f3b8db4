"""A provider's answer in progress: read timeout, size cap, plugin bugs and the breaker's verdict."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog

from tentaculo.chat.plugin import (
    ChatRequest,
    Chunk,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
    ProviderUnavailable,
)

if TYPE_CHECKING:
    from tentaculo.chat.registry import Attempt, ProviderRegistry, ProviderSlot

log = structlog.get_logger("tentaculo.providers")

# An answer longer than this is refused rather than held in memory.
MAX_ANSWER_CHARS = 4_000_000


async def _aclose(iterator: AsyncIterator[Chunk]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except (ProviderError, RuntimeError, StopAsyncIteration):
        pass
    except Exception:  # isolation boundary: a plugin failing while being closed
        log.exception("provider_aclose_failed")


class ChatStream:
    """A provider's answer in progress, from its first delta on.

    Iterate it for the chunks (the first one included). It enforces the read timeout, caps the
    answer's size, turns plugin bugs into :class:`ProviderError` and reports the outcome to the
    provider's circuit breaker. ``aclose()`` stops the upstream call. It is read by the task that
    opened it (the request's handler): that is the task its read timeout cancels.
    """

    def __init__(self, registry: ProviderRegistry, slot: ProviderSlot, request: ChatRequest) -> None:
        self._registry = registry
        self._slot = slot
        assert slot.provider is not None
        self.provider = slot.name
        self.model: str | None = request.model or slot.provider.default_model
        self.attempts: list[Attempt] = []
        self.degraded = False
        self.finished = False
        self._iterator = slot.provider.stream(request).__aiter__()
        self._pending: list[Chunk] = []
        self._chars = 0
        self._closed = False
        self._verdict = False
        # The read timeout is one lazily re-armed timer per stream, not one per chunk: a chunk
        # only stamps the time, and the timer cancels a read that has waited too long.
        self._timeout = registry.settings.provider_read_timeout
        self._loop = asyncio.get_running_loop()
        self._owner = asyncio.current_task()
        self._reading = False
        self._read_since = 0.0
        self._expired = False
        self._timer: asyncio.TimerHandle | None = None
        self._priming = False

    def _watch(self) -> None:
        self._timer = None
        if not self._reading or self._closed or self._owner is None:
            return  # not reading now: the next read re-arms
        due = self._read_since + self._timeout
        if self._loop.time() >= due:
            self._expired = True
            self._owner.cancel()
        else:
            self._timer = self._loop.call_at(due, self._watch)

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> Chunk:
        """The next chunk: one coroutine per chunk, since a long answer has hundreds of them."""
        if self.finished or self._closed:
            raise StopAsyncIteration
        if self._pending:
            chunk = self._pending.pop(0)
        else:
            self._reading = True
            self._read_since = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(self._read_since + self._timeout, self._watch)
            try:
                chunk = await self._iterator.__anext__()
            except BaseException as exc:
                self._reading = False
                error = self._error_for(exc)
                raise await self._settle(error) from error.__cause__
            self._reading = False
            if not isinstance(chunk, Chunk):
                raise await self._settle(ProviderProtocolError(
                    f"{self.provider} yielded {type(chunk).__name__}, not a Chunk"))
            if chunk.model:
                self.model = chunk.model
            self._chars += len(chunk.content) + len(chunk.reasoning)
            if self._chars > MAX_ANSWER_CHARS:
                raise await self._settle(ProviderProtocolError(
                    f"{self.provider}'s answer exceeds {MAX_ANSWER_CHARS} characters"))
        if chunk.finish_reason and not self._priming:
            self._done()
            await self.aclose()
        return chunk

    def _error_for(self, exc: BaseException) -> BaseException:
        """What a failed read raises: a ProviderError, or ``exc`` itself when it is not the provider's.

        A plugin's own bug becomes the new error's ``__cause__``; the caller raises ``from`` it.
        """
        error: BaseException
        if isinstance(exc, asyncio.CancelledError):
            if not (self._expired and self._owner is not None and self._owner.uncancel() == 0):
                return exc
            self._expired = False
            error = ProviderTimeout(f"{self.provider} sent nothing for {self._timeout:g} s")
        elif isinstance(exc, StopAsyncIteration):
            error = ProviderUnavailable(f"{self.provider}'s stream ended before the answer finished")
        elif isinstance(exc, ProviderError) or not isinstance(exc, Exception):
            return exc
        else:  # isolation boundary: a plugin bug
            log.error("provider_plugin_error", provider=self.provider, exc_info=exc)
            error = ProviderError(f"{self.provider} failed: {type(exc).__name__}")
            error.__cause__ = exc
        return error

    async def _settle(self, exc: BaseException) -> BaseException:
        """``exc``, to raise; a provider error after the first delta also counts against the provider.

        While priming, the registry does the counting instead (it may retry or fall back).
        """
        if isinstance(exc, ProviderError) and not self._priming:
            self._verdict = True
            self._registry._failed(self._slot, exc)
            await self.aclose()
        return exc

    async def prime(self) -> None:
        """Read until the first delta (or an immediate finish); failures raise ProviderError."""
        self._priming = True
        try:
            while True:
                chunk = await self.__anext__()
                self._pending.append(chunk)
                if chunk.is_delta or chunk.finish_reason:
                    return
        finally:
            self._priming = False

    def _done(self) -> None:
        self.finished = True
        self._verdict = True
        self._registry._succeeded(self._slot)

    async def aclose(self) -> None:
        """Stop reading and close the provider's stream (cancels the upstream call)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._verdict:
            self._slot.breaker.release()
        await _aclose(self._iterator)

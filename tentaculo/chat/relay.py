"""A chat turn streamed as server-sent events: the one relay loop both chat faces use, and the
server's shutdown ending such a stream with a terminal event instead of a cut connection.

Each face says what it writes through :class:`ChatFrames` (the operator face names its events
``start``, ``delta``, ``done`` and ``error``; the OpenAI face sends unnamed ``chat.completion.chunk``
messages and ``[DONE]``); the relay decides when, and records how the turn ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from typing import Protocol

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from tentaculo import keys
from tentaculo.chat.registry import ChatStream, Chunk, ProviderError
from tentaculo.chat.turn import ChatTurn
from tentaculo.http.errors import Problem

# One SSE message: its data and its event name (None: an unnamed message).
Frame = tuple[str, str | None]


class ChatFrames(Protocol):
    """What one chat face writes while a turn streams."""

    def opening(self, turn: ChatTurn) -> Iterable[Frame]:
        """Before the first delta (the provider is known)."""

    def delta(self, turn: ChatTurn, chunk: Chunk) -> Frame:
        """One piece of the answer (``chunk.is_delta``)."""

    def closing(self, turn: ChatTurn) -> Iterable[Frame]:
        """After the answer ended well."""

    def failure(self, turn: ChatTurn, problem: Problem) -> Frame:
        """The terminal message of a turn the provider or the server ended."""


@contextlib.contextmanager
def cut_at_shutdown(request: web.Request) -> Iterator[keys.Lifecycle]:
    """Register a streamed answer so the server's shutdown can end it with a terminal event (Lifecycle.cut_streams)."""
    lifecycle = request.app[keys.LIFECYCLE]
    task = asyncio.current_task()
    assert task is not None
    lifecycle.streams.add(task)
    try:
        yield lifecycle
    finally:
        lifecycle.streams.discard(task)
        lifecycle.cut.discard(task)


def stopped_by_server(lifecycle: keys.Lifecycle) -> bool:
    """In an ``except CancelledError``: True (and the cancel undone) when the shutdown cut the stream."""
    if not lifecycle.is_cut():
        return False
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return True


async def relay(request: web.Request, turn: ChatTurn, stream: ChatStream, frames: ChatFrames) -> web.StreamResponse:
    """Stream ``turn``'s answer as SSE, ending with exactly one terminal message, and record how it ended."""
    with cut_at_shutdown(request) as lifecycle:
        async with sse_response(request, allow_all_methods=True) as sse:
            try:
                await _send(sse, frames.opening(turn))
                try:
                    async for chunk in stream:
                        turn.add(chunk)
                        if chunk.is_delta:
                            await _send(sse, [frames.delta(turn, chunk)])
                except ProviderError as exc:
                    await _send(sse, [frames.failure(turn, turn.failed(exc))])
                    return sse
                turn.succeeded()
                await _send(sse, frames.closing(turn))
            except ConnectionResetError:
                # Without handler cancellation the disconnect shows up as a failed write.
                if turn.ended is None:
                    turn.cancelled()
            except asyncio.CancelledError:
                if not stopped_by_server(lifecycle):
                    raise
                problem = turn.shut_down()
                with contextlib.suppress(ConnectionError):
                    await _send(sse, [frames.failure(turn, problem)])
        return sse


async def _send(sse: EventSourceResponse, messages: Iterable[Frame]) -> None:
    for data, event in messages:
        await sse.send(data, event=event)

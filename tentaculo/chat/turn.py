"""The chat domain both chat faces share: a validated request (:class:`ChatSpec`), one chat from
finding a provider to its record (:class:`ChatTurn`), and that record (:class:`ChatRecord`), the one
shape of what a chat was, which renders the ``copilot_actions_log`` row, the ``chat`` event and the
operator face's answer.

The faces (``views``, ``openai_views``) parse their own wire format into a :class:`ChatSpec`, run a
:class:`ChatTurn` and write its answer; nothing here knows either format.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from tentaculo import keys
from tentaculo.chat.registry import (
    AllProvidersFailed,
    Attempt,
    ChatRequest,
    ChatStream,
    Chunk,
    ProviderError,
    Usage,
)
from tentaculo.db import queries
from tentaculo.http.errors import Problem
from tentaculo.http.middlewares import new_correlation_id, route_of


@dataclass(frozen=True, slots=True)
class ChatSpec:
    """A validated chat request: what to ask, whom, and how to answer."""

    request: ChatRequest
    provider: str
    stream: bool
    session_id: str | None


def chain_failure(attempts: Sequence[Attempt]) -> str:
    """What every provider tried said, each provider and each of its reasons named once.

    Retries repeat a provider with the same reason, and a provider's message often starts with its
    own name: both would make the sentence stutter.
    """
    reasons: dict[str, list[str]] = {}
    for attempt in attempts:
        said = reasons.setdefault(attempt.provider, [])
        if attempt.error:
            kind, _, message = attempt.error.partition(": ")
            message = message.removeprefix(f"{attempt.provider}: ")
            reason = f"{kind}: {message}" if message else kind
            if reason not in said:
                said.append(reason)
    tried = ", ".join(reasons) or "none"
    why = "; ".join(f"{name}: {', '.join(said)}" for name, said in reasons.items() if said)
    return f"no provider could answer (tried: {tried})" + (f": {why}" if why else "")


def first_steps(name_mock: str) -> str:
    """What a newcomer whose chain has nothing configured yet can do about it."""
    return (f". To try the gateway without a model, name {name_mock}; for real answers set "
            "DEEPSEEK_API_KEY or TENTACULO_LOCAL_BASE_URL (a local OpenAI-compatible server)")


def usage_view(usage: Usage | None) -> dict[str, int | None]:
    """Token counts as clients see them: both named, null when the provider did not say."""
    return {"prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None}


# Fields of the record only operators see (the chat event, the action log), never the asking client.
_RECORD_ONLY = frozenset({"token_name", "status", "streamed", "error"})


@dataclass(frozen=True, slots=True)
class ChatRecord:
    """What one chat was, never its text; see the module docstring."""

    correlation_id: str
    message_id: str
    session_id: str
    token_name: str | None
    provider: str | None
    model: str | None
    status: str  # ok | error | cancelled | shutdown
    finish_reason: str | None
    usage: Usage | None
    latency_ms: float
    degraded: bool
    streamed: bool
    attempts: tuple[Attempt, ...]
    error: str | None

    def metadata(self) -> dict[str, Any]:
        """Every field, JSON-ready: what ``on_chat`` listeners get and the ``chat`` event carries."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["usage"] = usage_view(self.usage)
        out["attempts"] = [a.as_dict() for a in self.attempts]
        return out

    def row(self, ts: datetime, instance: str) -> tuple[Any, ...]:
        """The ``copilot_actions_log`` row, in the order of ``queries.CHAT_ACTION_COLUMNS``."""
        values = self.metadata()
        values.update(values.pop("usage"), ts=ts, instance=instance,
                      attempts=orjson.dumps(values["attempts"]).decode())
        return tuple(values[column] for column in queries.CHAT_ACTION_COLUMNS)

    def answer(self, content: str, reasoning: str) -> dict[str, Any]:
        """The operator face's JSON answer: the record as the asking client may see it, and the text."""
        shown = {name: value for name, value in self.metadata().items() if name not in _RECORD_ONLY}
        return {**shown, "content": content, "reasoning": reasoning or None}


class ChatTurn:
    """One chat, from finding a provider to its ``copilot_actions_log`` row and ``chat`` event.

    The row is recorded exactly once, whatever happens (answer, provider failure, client gone),
    by :meth:`close`; the handler uses the turn as ``async with``, which calls it on the way out
    and marks the turn cancelled when the client went away.
    """

    def __init__(self, request: web.Request, spec: ChatSpec, *, streamed: bool) -> None:
        self.app = request.app
        self.registry = request.app[keys.PROVIDERS]
        self.spec = spec
        self.streamed = streamed
        self.correlation_id = request[keys.CORRELATION_ID]
        principal = request.get(keys.PRINCIPAL)
        self.token_name = principal.name if principal is not None else None
        # Random UUID4s, minted like correlation ids: lookup keys, not secrets.
        self.message_id = new_correlation_id()
        self.session_id = spec.session_id or new_correlation_id()
        self.started = request[keys.STARTED]
        self.opened = self.started
        self.route = (route_of(request) or request.path, request.method)
        self.ended: float | None = None
        self.stream: ChatStream | None = None
        self.attempts: list[Attempt] = []
        self.provider: str | None = None
        self.model: str | None = spec.request.model
        self.degraded = False
        self.status = "error"
        self.error: str | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._closed = False

    @property
    def latency_ms(self) -> float:
        end = self.ended if self.ended is not None else time.perf_counter()
        return round((end - self.started) * 1000, 3)

    def attempts_view(self) -> list[dict[str, Any]]:
        return [a.as_dict() for a in self.attempts]

    def record(self) -> ChatRecord:
        """The turn as it stands."""
        return ChatRecord(
            correlation_id=self.correlation_id,
            message_id=self.message_id,
            session_id=self.session_id,
            token_name=self.token_name,
            provider=self.provider,
            model=self.model,
            status=self.status,
            finish_reason=self.finish_reason,
            usage=self.usage,
            latency_ms=self.latency_ms,
            degraded=self.degraded,
            streamed=self.streamed,
            attempts=tuple(self.attempts),
            error=self.error,
        )

    async def __aenter__(self) -> ChatTurn:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and self.ended is None:
            self.cancelled()
        await self.close()

    async def open(self) -> ChatStream:
        """Find a provider with a first delta; Problem ``provider_unavailable`` when none has one."""
        try:
            stream = await self.registry.open(self.spec.request, self.spec.provider)
        except AllProvidersFailed as exc:
            self.attempts = exc.attempts
            self.error = chain_failure(exc.attempts)
            detail = self.error
            if self.spec.provider == "auto" and "mock" in self.registry:
                detail += first_steps('"model": "mock"' if self.route[0].startswith("/v1/") else '"provider": "mock"')
            raise Problem("provider_unavailable", detail, attempts=self.attempts_view()) from None
        self.stream = stream
        self.opened = time.perf_counter()
        self.attempts = stream.attempts
        self.provider = stream.provider
        self.model = stream.model
        self.degraded = stream.degraded
        return stream

    def observe_providers(self, request_route: str, method: str) -> None:
        """Provider figures: each failed attempt, and the answering call from its start to the answer's end."""
        metrics = self.app[keys.METRICS]
        for attempt in self.attempts:
            if attempt.status == "error":
                metrics.observe_provider(request_route, method, attempt.provider, "error", attempt.latency_ms)
            elif attempt.status == "ok" and self.ended is not None:
                answering = attempt.latency_ms + (self.ended - self.opened) * 1000
                metrics.observe_provider(request_route, method, attempt.provider, self.status, answering)

    def add(self, chunk: Chunk) -> None:
        if chunk.content:
            self._content.append(chunk.content)
        if chunk.reasoning:
            self._reasoning.append(chunk.reasoning)
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
        if self.stream is not None:
            self.model = self.stream.model

    def succeeded(self) -> None:
        self.status, self.ended = "ok", time.perf_counter()

    async def collect(self, stream: ChatStream) -> None:
        """Read the whole answer (the non-streaming faces); a provider failure becomes the problem to raise."""
        try:
            async for chunk in stream:
                self.add(chunk)
        except ProviderError as exc:
            raise self.failed(exc) from None
        self.succeeded()

    def failed(self, exc: ProviderError) -> Problem:
        """Record a failure after the first delta and return the problem the client gets."""
        self.status, self.ended = "error", time.perf_counter()
        self.error = self.registry.describe(exc)
        return Problem(exc.code, f"{self.provider} failed mid-answer: {self.error.partition(': ')[2]}",
                       attempts=self.attempts_view(), provider=self.provider)

    def cancelled(self) -> None:
        self.status, self.ended = "cancelled", time.perf_counter()
        self.error = "the client went away before the answer finished"

    def shut_down(self) -> Problem:
        """The server stopped before the answer finished: recorded as cut by the server, not by the client."""
        self.status, self.ended = "shutdown", time.perf_counter()
        self.error = "cut by the server: the instance shut down before the answer finished"
        return Problem("shutting_down", "the gateway is shutting down; send the message again to another instance",
                       headers={"Retry-After": "1"})

    @property
    def content(self) -> str:
        return "".join(self._content)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    async def close(self) -> None:
        """Stop the upstream call if it still runs, then record the row and publish the chat (once)."""
        if self._closed:
            return
        self._closed = True
        if self.stream is not None:
            await self.stream.aclose()
        if self.ended is None:
            self.ended = time.perf_counter()
        self.observe_providers(*self.route)
        record = self.record()
        self.app[keys.CHAT_LOG].record(record.row(datetime.now(UTC), self.app[keys.SETTINGS].instance))
        self.registry.notify_chat(record.metadata())

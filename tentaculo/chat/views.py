"""``POST /operator/api/chat``: operator chat through the provider registry, as JSON or SSE."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import sse_response

from tentaculo import keys
from tentaculo.auth.tokens import requires
from tentaculo.chat.registry import (
    ROLES,
    AllProvidersFailed,
    Attempt,
    ChatRequest,
    ChatStream,
    Chunk,
    Message,
    ProviderError,
    ProviderRegistry,
    Usage,
)
from tentaculo.http.errors import Problem, ValidationFailed
from tentaculo.http.jsonio import json_response, read_json_object
from tentaculo.http.middlewares import new_correlation_id, route_of
from tentaculo.settings import Settings
from tentaculo.status.features import feature

FIELD_MAX = 200  # model, session_id, provider names
SESSION_ID = re.compile(rf"[^\x00-\x1f\x7f]{{1,{FIELD_MAX}}}")
MAX_TOKENS_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class ChatSpec:
    """A validated chat request: what to ask, whom, and how to answer."""

    request: ChatRequest
    provider: str
    stream: bool
    session_id: str | None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_messages(
    raw: Sequence[Any], settings: Settings, errors: list[dict[str, str]], *, field: str = "messages",
    role_aliases: dict[str, str] | None = None,
) -> tuple[Message, ...]:
    """Validate a list of ``{"role", "content"}``; content may be a string or OpenAI text parts."""
    if len(raw) == 0:
        errors.append({"field": field, "message": "must hold at least one message"})
        return ()
    if len(raw) > settings.chat_max_messages:
        errors.append({"field": field, "message": f"at most {settings.chat_max_messages} messages"})
        return ()
    messages: list[Message] = []
    total = 0
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            errors.append({"field": where, "message": "must be an object with role and content"})
            continue
        role = item.get("role")
        role = (role_aliases or {}).get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            errors.append({"field": f"{where}.role", "message": f"must be one of {', '.join(ROLES)}"})
        content = item.get("content")
        if isinstance(content, list):  # OpenAI content parts: only text is supported
            if all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                content = "".join(p["text"] for p in content)
            else:
                errors.append({"field": f"{where}.content", "message": "only text content parts are supported"})
                continue
        if not isinstance(content, str):
            errors.append({"field": f"{where}.content", "message": "must be a string"})
            continue
        if not content.strip() and role != "assistant":
            errors.append({"field": f"{where}.content", "message": "must not be empty"})
            continue
        total += len(content)
        if isinstance(role, str) and role in ROLES:
            messages.append(Message(role, content))
    if total > settings.chat_max_chars:
        errors.append({"field": field, "message": f"the messages exceed {settings.chat_max_chars} characters"})
    return tuple(messages)


def check_options(data: dict[str, Any], errors: list[dict[str, str]], *, max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    """``max_tokens``, ``temperature`` and ``metadata``, checked."""
    out: dict[str, Any] = {}
    max_tokens = data.get(max_tokens_field)
    if max_tokens is not None:
        if not _is_int(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
            errors.append({"field": max_tokens_field, "message": f"must be an integer from 1 to {MAX_TOKENS_LIMIT}"})
        else:
            out["max_tokens"] = max_tokens
    temperature = data.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= 2:
            errors.append({"field": "temperature", "message": "must be a number from 0 to 2"})
        else:
            out["temperature"] = float(temperature)
    metadata = data.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            errors.append({"field": "metadata", "message": "must be an object"})
        else:
            out["metadata"] = metadata
    return out


def unknown_provider(name: str, registry: ProviderRegistry, field: str = "provider") -> ValidationFailed:
    available = ["auto", *registry.names()]
    problem = ValidationFailed(
        [{"field": field, "message": f"unknown provider {name!r}; available: {', '.join(available)}"}],
        detail=f"there is no provider named {name!r}",
    )
    problem.extra["available"] = available
    return problem


def check_model(model: str, provider: str, registry: ProviderRegistry, errors: list[dict[str, str]]) -> None:
    """The model must be served by the provider named, or by some provider of the chain."""
    if provider == "auto":
        slots = [registry.get(n) for n in registry.chain]
        if any(s is not None and s.provider is not None and s.serves(model) for s in slots):
            return
        served = sorted({m for n in registry.chain if (s := registry.get(n)) is not None for m in s.models})
        errors.append({"field": "model", "message": f"no provider of the chain serves {model!r}; "
                                                    f"models: {', '.join(served) or 'none listed'}"})
        return
    slot = registry.get(provider)
    if slot is not None and not slot.serves(model):
        errors.append({"field": "model", "message": f"{provider} does not serve {model!r}; "
                                                    f"models: {', '.join(slot.models)}"})


def parse_chat(data: dict[str, Any], registry: ProviderRegistry, settings: Settings, correlation_id: str) -> ChatSpec:
    """Validate an operator chat body; raise ValidationFailed naming every bad field."""
    errors: list[dict[str, str]] = []
    if "message" in data and "messages" in data:
        errors.append({"field": "message", "message": "send message or messages, not both"})
    messages: tuple[Message, ...] = ()
    if "messages" in data:
        raw = data["messages"]
        if not isinstance(raw, list):
            errors.append({"field": "messages", "message": "must be a list of {role, content} objects"})
        else:
            messages = check_messages(raw, settings, errors)
    elif "message" in data:
        text = data["message"]
        if not isinstance(text, str):
            errors.append({"field": "message", "message": "must be a string"})
        elif not text.strip():
            errors.append({"field": "message", "message": "must not be empty"})
        elif len(text) > settings.chat_max_chars:
            errors.append({"field": "message", "message": f"exceeds {settings.chat_max_chars} characters"})
        else:
            messages = (Message("user", text),)
    else:
        errors.append({"field": "message", "message": "send message (a string) or messages (a list)"})
    provider = data.get("provider", "auto")
    if not isinstance(provider, str) or not provider or len(provider) > FIELD_MAX:
        errors.append({"field": "provider", "message": "must be \"auto\" or a provider name"})
        provider = "auto"
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip() or len(model) > FIELD_MAX):
        errors.append({"field": "model", "message": f"must be a non-empty string of at most {FIELD_MAX} characters"})
        model = None
    session_id = data.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id)):
        errors.append({"field": "session_id",
                       "message": f"must be 1 to {FIELD_MAX} printable characters (no control characters)"})
        session_id = None
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        errors.append({"field": "stream", "message": "must be true or false"})
        stream = False
    options = check_options(data, errors)
    if provider != "auto" and provider not in registry:
        if errors:
            errors.append({"field": "provider", "message": f"unknown provider {provider!r}; "
                                                           f"available: {', '.join(['auto', *registry.names()])}"})
        else:
            raise unknown_provider(provider, registry)
    elif model is not None:
        check_model(model, provider, registry, errors)
    if errors:
        raise ValidationFailed(errors)
    request = ChatRequest(messages, model=model, correlation_id=correlation_id, **options)
    return ChatSpec(request, provider, stream, session_id)


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


def wants_sse(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def _json(data: Any) -> str:
    return orjson.dumps(data).decode()


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

    def usage_view(self) -> dict[str, int | None]:
        u = self.usage
        return {"prompt_tokens": u.prompt_tokens if u else None, "completion_tokens": u.completion_tokens if u else None}

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
        settings = self.app[keys.SETTINGS]
        u = self.usage
        self.app[keys.CHAT_LOG].record((
            datetime.now(UTC),
            self.correlation_id,
            self.message_id,
            self.session_id,
            self.token_name,
            self.provider,
            self.model,
            self.status,
            self.finish_reason,
            u.prompt_tokens if u else None,
            u.completion_tokens if u else None,
            self.latency_ms,
            self.degraded,
            self.streamed,
            _json(self.attempts_view()),
            self.error,
            settings.instance,
        ))
        self.registry.notify_chat({
            "correlation_id": self.correlation_id,
            "message_id": self.message_id,
            "session_id": self.session_id,
            "token_name": self.token_name,
            "provider": self.provider,
            "model": self.model,
            "status": self.status,
            "finish_reason": self.finish_reason,
            "usage": self.usage_view(),
            "latency_ms": self.latency_ms,
            "degraded": self.degraded,
            "streamed": self.streamed,
            "attempts": self.attempts_view(),
            "error": self.error,
        })



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


@requires("chat")
@feature("chat")
async def chat(request: web.Request) -> web.StreamResponse:
    """Chat through the provider registry: JSON, or SSE with ``stream: true`` / ``Accept: text/event-stream``."""
    data = await read_json_object(request)
    spec = parse_chat(data, request.app[keys.PROVIDERS], request.app[keys.SETTINGS], request[keys.CORRELATION_ID])
    async with ChatTurn(request, spec, streamed=spec.stream or wants_sse(request)) as turn:
        stream = await turn.open()
        if turn.streamed:
            return await _answer_sse(request, turn, stream)
        return await _answer_json(turn, stream)


async def _answer_json(turn: ChatTurn, stream: ChatStream) -> web.Response:
    await turn.collect(stream)
    return json_response({
        "correlation_id": turn.correlation_id,
        "message_id": turn.message_id,
        "session_id": turn.session_id,
        "provider": turn.provider,
        "model": turn.model,
        "content": turn.content,
        "reasoning": turn.reasoning or None,
        "finish_reason": turn.finish_reason,
        "usage": turn.usage_view(),
        "latency_ms": turn.latency_ms,
        "degraded": turn.degraded,
        "attempts": turn.attempts_view(),
    })


async def _answer_sse(request: web.Request, turn: ChatTurn, stream: ChatStream) -> web.StreamResponse:
    with cut_at_shutdown(request) as lifecycle:
        return await _relay_sse(request, turn, stream, lifecycle)


async def _relay_sse(request: web.Request, turn: ChatTurn, stream: ChatStream,
                     lifecycle: keys.Lifecycle) -> web.StreamResponse:
    async with sse_response(request, allow_all_methods=True) as sse:
        try:
            await sse.send(_json({
                "correlation_id": turn.correlation_id,
                "message_id": turn.message_id,
                "session_id": turn.session_id,
                "provider": turn.provider,
                "model": turn.model,
            }), event="start")
            try:
                async for chunk in stream:
                    turn.add(chunk)
                    if chunk.is_delta:
                        delta = {}
                        if chunk.content:
                            delta["content"] = chunk.content
                        if chunk.reasoning:
                            delta["reasoning"] = chunk.reasoning
                        await sse.send(_json(delta), event="delta")
            except ProviderError as exc:
                problem = turn.failed(exc)
                await sse.send(_json(problem.body(turn.correlation_id)), event="error")
                return sse
            turn.succeeded()
            await sse.send(_json({
                "finish_reason": turn.finish_reason,
                "usage": turn.usage_view(),
                "latency_ms": turn.latency_ms,
                "degraded": turn.degraded,
                "model": turn.model,
                "attempts": turn.attempts_view(),
            }), event="done")
        except ConnectionResetError:
            # Without handler cancellation the disconnect shows up as a failed write.
            if turn.ended is None:
                turn.cancelled()
        except asyncio.CancelledError:
            if not stopped_by_server(lifecycle):
                raise
            problem = turn.shut_down()
            with contextlib.suppress(ConnectionError):
                await sse.send(_json(problem.body(turn.correlation_id)), event="error")
    return sse

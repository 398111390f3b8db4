"""``POST /operator/api/chat``: operator chat through the provider registry, as JSON or SSE."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from tentaculo import keys
from tentaculo.auth.tokens import requires
from tentaculo.chat.registry import ROLES, ChatRequest, ChatStream, Chunk, Message, ProviderRegistry
from tentaculo.chat.relay import Frame, relay
from tentaculo.chat.turn import ChatSpec, ChatTurn
from tentaculo.http.errors import Problem, ValidationFailed
from tentaculo.http.jsonio import json_response, read_json_object
from tentaculo.settings import Settings
from tentaculo.status.features import feature

FIELD_MAX = 200  # model, session_id, provider names
SESSION_ID = re.compile(rf"[^\x00-\x1f\x7f]{{1,{FIELD_MAX}}}")
MAX_TOKENS_LIMIT = 1_000_000
# What the stream's ``start`` and ``done`` events tell of the turn.
START_FIELDS = ("correlation_id", "message_id", "session_id", "provider", "model")
DONE_FIELDS = ("finish_reason", "usage", "latency_ms", "degraded", "model", "attempts")


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


def wants_sse(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def _json(data: Any) -> str:
    return orjson.dumps(data).decode()


@requires("chat")
@feature("chat")
async def chat(request: web.Request) -> web.StreamResponse:
    """Chat through the provider registry: JSON, or SSE with ``stream: true`` / ``Accept: text/event-stream``."""
    data = await read_json_object(request)
    spec = parse_chat(data, request.app[keys.PROVIDERS], request.app[keys.SETTINGS], request[keys.CORRELATION_ID])
    async with ChatTurn(request, spec, streamed=spec.stream or wants_sse(request)) as turn:
        stream = await turn.open()
        if turn.streamed:
            return await relay(request, turn, stream, _OperatorFrames())
        return await _answer_json(turn, stream)


async def _answer_json(turn: ChatTurn, stream: ChatStream) -> web.Response:
    await turn.collect(stream)
    return json_response(turn.record().answer(turn.content, turn.reasoning))


class _OperatorFrames:
    """The operator face's stream: ``start``, ``delta``s, then ``done`` or ``error`` (a problem)."""

    def opening(self, turn: ChatTurn) -> list[Frame]:
        return [(_json(_pick(turn, START_FIELDS)), "start")]

    def delta(self, turn: ChatTurn, chunk: Chunk) -> Frame:
        delta = {}
        if chunk.content:
            delta["content"] = chunk.content
        if chunk.reasoning:
            delta["reasoning"] = chunk.reasoning
        return _json(delta), "delta"

    def closing(self, turn: ChatTurn) -> list[Frame]:
        return [(_json(_pick(turn, DONE_FIELDS)), "done")]

    def failure(self, turn: ChatTurn, problem: Problem) -> Frame:
        return _json(problem.body(turn.correlation_id)), "error"


def _pick(turn: ChatTurn, names: tuple[str, ...]) -> dict[str, Any]:
    metadata = turn.record().metadata()
    return {name: metadata[name] for name in names}

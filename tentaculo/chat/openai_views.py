"""The OpenAI-compatible face of the provider registry: ``POST /v1/chat/completions`` and
``GET /v1/models``, so any OpenAI SDK pointed at ``http://gateway/v1`` works unchanged.

``model`` picks the provider: ``"auto"`` walks the chain; a provider name (``"deepseek"``) uses
that provider's default model; ``"provider/model"`` names both; a bare model id
(``"deepseek-reasoner"``) goes to the first provider serving it. ``GET /v1/models``,
``GET /v1/models/{id}`` and an unknown model's 404 all read the registry's one catalogue. Errors are problem+json with an
extra ``error`` member in OpenAI's shape, which the SDKs read (added by the error middleware to
every problem under ``/v1/``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from tentaculo import keys
from tentaculo.auth.tokens import requires
from tentaculo.chat.registry import ChatRequest, ChatStream, Chunk, Message, ProviderRegistry
from tentaculo.chat.relay import Frame, relay
from tentaculo.chat.turn import ChatSpec, ChatTurn
from tentaculo.chat.views import FIELD_MAX, check_messages, check_options
from tentaculo.http.errors import Problem, ValidationFailed, openai_error
from tentaculo.http.jsonio import json_response, read_json_object
from tentaculo.status.features import feature

# Parameters the gateway cannot honour: refused rather than silently ignored.
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "logprobs", "audio")
ROLE_ALIASES = {"developer": "system"}

def resolve_model(model: str, registry: ProviderRegistry) -> tuple[str, str | None] | None:
    """(provider, model or None for its default) for an OpenAI ``model`` value; None if unknown."""
    if model == "auto":
        return "auto", None
    if model in registry:
        return model, None
    name, sep, rest = model.partition("/")
    if sep and name in registry and rest:
        return name, rest
    for served, provider in registry.catalogue():
        if served == model:
            return provider, model
    return None


def model_not_found(model: str, registry: ProviderRegistry) -> Problem:
    """404 ``model_not_found``, as OpenAI answers, listing the models that do exist."""
    ids = ", ".join(m for m, _ in registry.catalogue())
    detail = f"the model {model!r} does not exist; models: {ids} (GET /v1/models)"
    return Problem("model_not_found", detail, errors=[{"field": "model", "message": detail}])


def parse_completion(data: dict[str, Any], registry: ProviderRegistry, request: web.Request) -> tuple[ChatSpec, bool]:
    """Validate an OpenAI chat-completions body: (spec, include_usage)."""
    settings = request.app[keys.SETTINGS]
    errors: list[dict[str, str]] = []
    raw = data.get("messages")
    messages: tuple[Message, ...] = ()
    if not isinstance(raw, list):
        errors.append({"field": "messages", "message": "must be a list of {role, content} objects"})
    else:
        messages = check_messages(raw, settings, errors, role_aliases=ROLE_ALIASES)
    for name in UNSUPPORTED:
        if data.get(name) not in (None, False, [], "none"):
            errors.append({"field": name, "message": "not supported by this gateway"})
    n = data.get("n", 1)
    if n != 1:
        errors.append({"field": "n", "message": "only 1 is supported"})
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        errors.append({"field": "stream", "message": "must be true or false"})
        stream = False
    stream_options = data.get("stream_options") or {}
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    tokens_field = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    options = check_options(data, errors, max_tokens_field=tokens_field)
    model = data.get("model", "auto")
    provider, chosen = "auto", None
    if not isinstance(model, str) or not model or len(model) > FIELD_MAX:
        errors.append({"field": "model", "message": "must be \"auto\", a provider name or a model id"})
    else:
        resolved = resolve_model(model, registry)
        if resolved is None:
            if errors:
                errors.append({"field": "model", "message": f"unknown model {model!r}"})
            else:
                raise model_not_found(model, registry)
        else:
            provider, chosen = resolved
    if errors:
        raise ValidationFailed(errors)
    chat_request = ChatRequest(messages, model=chosen, correlation_id=request[keys.CORRELATION_ID], **options)
    return ChatSpec(chat_request, provider, stream, None), include_usage


@requires("chat")
@feature("chat")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI chat completions, streaming (``data: [DONE]``-terminated chunks) or not."""
    data = await read_json_object(request)
    spec, include_usage = parse_completion(data, request.app[keys.PROVIDERS], request)
    async with ChatTurn(request, spec, streamed=spec.stream) as turn:
        stream = await turn.open()
        if spec.stream:
            return await relay(request, turn, stream, _CompletionChunks(include_usage))
        return await _complete(turn, stream)


def _usage(turn: ChatTurn) -> dict[str, int] | None:
    u = turn.usage
    if u is None:
        return None
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def _envelope(turn: ChatTurn, created: int, obj: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{turn.message_id.replace('-', '')}", "object": obj, "created": created, "model": turn.model or "",
            "system_fingerprint": None}


async def _complete(turn: ChatTurn, stream: ChatStream) -> web.Response:
    await turn.collect(stream)
    message: dict[str, Any] = {"role": "assistant", "content": turn.content}
    if turn.reasoning:
        message["reasoning_content"] = turn.reasoning
    body = _envelope(turn, int(time.time()), "chat.completion")
    body.update({
        "choices": [{"index": 0, "message": message, "finish_reason": turn.finish_reason, "logprobs": None}],
        "usage": _usage(turn),
        "provider": turn.provider,
        "degraded": turn.degraded,
        "correlation_id": turn.correlation_id,
    })
    return json_response(body)


class _CompletionChunks:
    """The OpenAI face's stream: ``chat.completion.chunk`` messages, then ``[DONE]``; a failure is an
    ``error`` object, as OpenAI's SDKs read it."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.created = int(time.time())
        self.first = True  # no delta sent yet: the next chunk carries the role

    def opening(self, turn: ChatTurn) -> list[Frame]:
        return []

    def delta(self, turn: ChatTurn, chunk: Chunk) -> Frame:
        delta = self._role()
        if chunk.content:
            delta["content"] = chunk.content
        if chunk.reasoning:
            delta["reasoning_content"] = chunk.reasoning
        return self._chunk(turn, delta, None)

    def closing(self, turn: ChatTurn) -> list[Frame]:
        frames = [self._chunk(turn, self._role(), turn.finish_reason or "stop")]
        if self.include_usage:
            body = _envelope(turn, self.created, "chat.completion.chunk")
            body.update(choices=[], usage=_usage(turn))
            frames.append((orjson.dumps(body).decode(), None))
        return [*frames, ("[DONE]", None)]

    def failure(self, turn: ChatTurn, problem: Problem) -> Frame:
        return orjson.dumps({"error": openai_error(problem)}).decode(), None

    def _role(self) -> dict[str, Any]:
        first, self.first = self.first, False
        return {"role": "assistant"} if first else {}

    def _chunk(self, turn: ChatTurn, delta: dict[str, Any], finish_reason: str | None) -> Frame:
        body = _envelope(turn, self.created, "chat.completion.chunk")
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        return orjson.dumps(body).decode(), None


def _model(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


@requires("chat")
@feature("chat")
async def list_models(request: web.Request) -> web.Response:
    """Models in OpenAI's list shape: ``auto``, each provider, and each model it serves."""
    catalogue = request.app[keys.PROVIDERS].catalogue()
    return json_response({"object": "list", "data": [_model(m, owner) for m, owner in catalogue]})


@requires("chat")
@feature("chat")
async def get_model(request: web.Request) -> web.Response:
    """One model of the catalogue (what ``client.models.retrieve`` asks for)."""
    registry = request.app[keys.PROVIDERS]
    wanted = request.match_info["model"]
    for model_id, owner in registry.catalogue():
        if model_id == wanted:
            return json_response(_model(model_id, owner))
    raise model_not_found(wanted, registry)

"""A real loopback HTTP server speaking the OpenAI chat-completions wire format, in DeepSeek's
dialect (``reasoning_content`` deltas, usage on the finishing chunk) or OpenAI's (usage in a
separate last chunk), with scripted faults: HTTP errors, hangs, stalls and dropped connections.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Answer:
    """Stream this answer (reasoning pieces first)."""

    content: tuple[str, ...] = ("The ", "Nile, ", "the ", "Amazon, ", "the ", "Yangtze.")
    reasoning: tuple[str, ...] = ()
    usage: tuple[int, int] | None = (11, 6)
    model: str | None = None


@dataclass
class Status:
    """Answer with this HTTP status and an OpenAI-style error body."""

    status: int
    message: str = "something went wrong"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stall:
    """Stream ``after`` content pieces, then go silent until the client goes away."""

    after: int = 1


@dataclass
class Drop:
    """Stream ``after`` content pieces, then cut the connection without finishing."""

    after: int = 1


@dataclass
class Hang:
    """Accept the request and never answer."""


@dataclass
class WholeJSON:
    """Ignore ``stream: true`` and answer one application/json chat completion."""

    content: str = "One JSON answer."


Behaviour = Answer | Status | Stall | Drop | Hang | WholeJSON


class OpenAIWireServer:
    """Serves ``POST /chat/completions`` and ``GET /models`` on 127.0.0.1.

    ``script`` holds the behaviours of the next requests (then ``default``). ``requests``
    records each chat request's JSON body and headers. ``released`` is set whenever a streaming
    request ends because the client went away.
    """

    def __init__(self, *, dialect: str = "deepseek", api_key: str | None = None,
                 models: tuple[str, ...] = ("deepseek-chat", "deepseek-reasoner"), prefix: str = "") -> None:
        self.dialect = dialect
        self.api_key = api_key
        self.models = models
        self.prefix = prefix
        self.script: deque[Behaviour] = deque()
        self.default: Behaviour = Answer()
        self.requests: list[dict[str, Any]] = []
        self.released = asyncio.Event()
        self.correlation_ids: list[str] = []
        self._waiting: set[asyncio.Task[Any]] = set()
        app = web.Application()
        app.router.add_post(prefix + "/chat/completions", self._chat)
        app.router.add_get(prefix + "/models", self._models)
        self._server = TestServer(app, host="127.0.0.1")

    async def start(self, port: int | None = None) -> str:
        if port is not None:
            self._server.port = port
        await self._server.start_server()
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}{self.prefix}"

    async def close(self) -> None:
        for task in self._waiting:  # a test that failed may leave a stalled request behind
            task.cancel()
        await self._server.close()

    def then(self, *behaviours: Behaviour) -> OpenAIWireServer:
        self.script.extend(behaviours)
        return self

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Authentication Fails, Your api key is invalid")
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "test"} for m in self.models]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"body": body, "headers": dict(request.headers)})
        if "X-Correlation-ID" in request.headers:
            self.correlation_ids.append(request.headers["X-Correlation-ID"])
        if not self._authorized(request):
            return _error(401, "Authentication Fails, Your api key is invalid")
        behaviour = self.script.popleft() if self.script else self.default
        if isinstance(behaviour, Status):
            return _error(behaviour.status, behaviour.message, behaviour.headers)
        if isinstance(behaviour, Hang):
            await self._until_gone()
        if isinstance(behaviour, WholeJSON):
            return web.json_response({
                "id": "cmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": behaviour.content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
            })
        answer = behaviour if isinstance(behaviour, Answer) else Answer()
        model = answer.model or body["model"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b": keep-alive\n\n")

        async def send(obj: Any) -> None:
            await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")

        def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> dict[str, Any]:
            out: dict[str, Any] = {"id": "chunk-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            if usage is not None:
                out["usage"] = usage
            return out

        try:
            await send(chunk({"role": "assistant", "content": ""}))
            for piece in answer.reasoning:
                await send(chunk({"content": None, "reasoning_content": piece}))
            for i, piece in enumerate(answer.content):
                if isinstance(behaviour, Stall | Drop) and i == behaviour.after:
                    if isinstance(behaviour, Drop):
                        assert request.transport is not None
                        request.transport.close()
                        return resp
                    await self._until_gone()
                await send(chunk({"content": piece, "reasoning_content": None}))
            usage = None
            if answer.usage is not None:
                prompt, completion = answer.usage
                usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            if self.dialect == "deepseek":
                await send(chunk({"content": ""}, "stop", usage))
            else:
                await send(chunk({}, "stop"))
                if usage is not None:
                    await send({"id": "chunk-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                                "choices": [], "usage": usage})
            await resp.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.released.set()
            raise
        return resp

    async def _until_gone(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            await asyncio.Event().wait()  # until the client disconnects and this handler is cancelled
        except asyncio.CancelledError:
            self.released.set()
            raise
        finally:
            self._waiting.discard(task)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "code": None}},
                             status=status, headers=headers)

"""The OpenAI chat-completions wire format, spoken to any compatible server (DeepSeek, Ollama,
llama.cpp server, vLLM). Shared by the ``deepseek`` and ``local`` providers.

Requests always stream (``"stream": true`` with usage in the last chunk); the server's SSE is
turned into :class:`tentaculo.chat.plugin.Chunk` objects, and HTTP or network failures into
:class:`tentaculo.chat.plugin.ProviderError` subclasses with messages that name the cause and
never a secret.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.http_exceptions import LineTooLong

from tentaculo.chat.plugin import (
    ChatRequest,
    Chunk,
    ProviderAuthError,
    ProviderError,
    ProviderProtocolError,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    Usage,
)
from tentaculo.http.errors import connect_reason

ERROR_BODY_MAX = 4096
# A JSON answer (server that ignored "stream": true) larger than this is refused.
JSON_BODY_MAX = 8 * 1024 * 1024
MODELS_MAX = 200


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class OpenAIWireClient:
    """Chat completions against one OpenAI-compatible base URL (e.g. ``http://host:11434/v1``)."""

    def __init__(
        self,
        *,
        label: str,
        http: aiohttp.ClientSession,
        base_url: str,
        api_key: str | None,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.label = label
        self._http = http
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        parts = urlsplit(self.base_url)
        # What error messages may show: host and port only (a URL could carry credentials).
        self.where = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "?"
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)

    def _headers(self, correlation_id: str, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if correlation_id:
            headers["X-Correlation-ID"] = correlation_id
        return headers

    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        return text[:300]

    async def list_models(self, timeout: float) -> list[str]:
        """Model ids from ``GET /models``; raises ProviderError when the server cannot say."""
        try:
            async with self._http.get(
                self.base_url + "/models",
                headers=self._headers("", "application/json"),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                if resp.status != 200:
                    await self._raise_for_status(resp)
                body = await resp.content.read(JSON_BODY_MAX)
        except ProviderError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._network_error(exc) from None
        try:
            data = orjson.loads(body)
            return [str(m["id"]) for m in data["data"][:MODELS_MAX]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ProviderProtocolError(f"{self.label}: GET /models is not a model list ({type(exc).__name__})") from None

    def payload(self, request: ChatRequest, model: str) -> dict[str, Any]:
        """The JSON body of a streaming chat-completions request."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    async def stream(self, request: ChatRequest, model: str) -> AsyncIterator[Chunk]:
        """POST ``/chat/completions`` and yield the answer's chunks; the last one has ``finish_reason``."""
        try:
            async with self._http.post(
                self.base_url + "/chat/completions",
                data=orjson.dumps(self.payload(request, model)),
                headers={**self._headers(request.correlation_id, "text/event-stream"),
                         "Content-Type": "application/json"},
                timeout=self._timeout,
            ) as resp:
                if resp.status != 200:
                    await self._raise_for_status(resp)
                if resp.content_type == "application/json":
                    yield self._whole_answer(await resp.content.read(JSON_BODY_MAX + 1))
                    return
                async for chunk in self._events(resp):
                    yield chunk
        except ProviderError:
            raise
        except LineTooLong:
            raise ProviderProtocolError(f"{self.label}: {self.where} sent an oversized stream line") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._network_error(exc) from None

    def _network_error(self, exc: BaseException) -> ProviderError:
        if isinstance(exc, TimeoutError):  # aiohttp's Server/ConnectionTimeoutError are TimeoutErrors
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                return ProviderTimeout(f"{self.label}: connecting to {self.where} timed out")
            return ProviderTimeout(f"{self.label}: {self.where} sent nothing in time")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return ProviderUnavailable(f"{self.label}: cannot connect to {self.where} ({connect_reason(exc)})")
        if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
            return ProviderUnavailable(f"{self.label}: {self.where} dropped the connection mid-answer")
        return ProviderUnavailable(f"{self.label}: {self.where}: {type(exc).__name__}")

    async def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        raw = await resp.content.read(ERROR_BODY_MAX)
        detail = ""
        try:
            data = orjson.loads(raw)
            err = data.get("error") if isinstance(data, dict) else None
            if isinstance(err, dict):
                detail = str(err.get("message") or "")
            elif isinstance(err, str):
                detail = err
        except orjson.JSONDecodeError:
            detail = raw.decode("utf-8", "replace").strip()
        detail = self._scrub(detail)
        suffix = f": {detail}" if detail else ""
        status = resp.status
        who = f"{self.label} ({self.where})"
        if status in (401, 403):
            raise ProviderAuthError(f"{who} rejected the API key (HTTP {status}){suffix}")
        if status == 402:
            raise ProviderQuotaError(f"{who}: insufficient balance (HTTP 402){suffix}")
        if status == 429:
            raise ProviderRateLimited(f"{who} is rate limiting (HTTP 429){suffix}",
                                      retry_after=_retry_after(resp.headers.get("Retry-After")))
        if status in (400, 404, 413, 422):
            raise ProviderRejected(f"{who} refused the request (HTTP {status}){suffix}")
        if status >= 500:
            raise ProviderUnavailable(f"{who} failed (HTTP {status}){suffix}")
        raise ProviderError(f"{who} answered HTTP {status}{suffix}")

    def _whole_answer(self, body: bytes) -> Chunk:
        if len(body) > JSON_BODY_MAX:
            raise ProviderProtocolError(f"{self.label}: the answer exceeds {JSON_BODY_MAX} bytes")
        try:
            data = orjson.loads(body)
            choice = data["choices"][0]
            message = choice.get("message") or {}
            return Chunk(
                content=message.get("content") or "",
                reasoning=message.get("reasoning_content") or message.get("reasoning") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                usage=_usage(data.get("usage")),
                model=data.get("model"),
            )
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise ProviderProtocolError(f"{self.label}: the answer is not a chat completion") from None

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[Chunk]:
        finish: str | None = None
        usage: Usage | None = None
        model: str | None = None
        done = False
        data_lines: list[bytes] = []
        async for raw in resp.content:  # one line at a time; aiohttp bounds a line's length
            line = raw.rstrip(b"\r\n")
            if line.startswith(b"data:"):
                data_lines.append(line[5:].lstrip(b" "))
                continue
            if line or not data_lines:
                continue  # a comment (": keep-alive"), an event name or id, or a stray blank line
            data = b"\n".join(data_lines)
            data_lines = []
            if data == b"[DONE]":
                done = True
                break
            event = self._decode(data)
            model = event.get("model") or model
            usage = _usage(event.get("usage")) or usage
            choices = event.get("choices") or []
            if not choices:
                continue
            choice = choices[0] if isinstance(choices[0], dict) else {}
            delta = choice.get("delta") or {}
            content = delta.get("content") or ""
            reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
            if content or reasoning:
                yield Chunk(content=content, reasoning=reasoning, model=model)
            finish = choice.get("finish_reason") or finish
        if not done and finish is None:
            raise ProviderUnavailable(f"{self.label}: {self.where} ended the stream before the answer finished")
        yield Chunk(finish_reason=finish or "stop", usage=usage, model=model)

    def _decode(self, data: bytes) -> dict[str, Any]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ProviderProtocolError(f"{self.label}: {self.where} sent a malformed stream event") from None
        if not isinstance(event, dict):
            raise ProviderProtocolError(f"{self.label}: {self.where} sent a stream event that is not an object")
        err = event.get("error")
        if err:
            message = err.get("message") if isinstance(err, dict) else str(err)
            raise ProviderUnavailable(f"{self.label} reported an error mid-answer: {self._scrub(str(message))}")
        return event


def _usage(data: object) -> Usage | None:
    if not isinstance(data, dict):
        return None
    prompt, completion = data.get("prompt_tokens"), data.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return Usage(prompt, completion)
    return None


def models_or(configured: Iterable[str | None], listed: Iterable[str]) -> list[str]:
    """Configured models first, then the listed ones, without duplicates."""
    seen: dict[str, None] = {}
    for m in [*configured, *listed]:
        if m:
            seen.setdefault(m, None)
    return list(seen)

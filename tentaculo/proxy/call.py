"""One proxied call as the transports receive it, and the failures they report.

A :class:`ProxyCall` is built by the view once every check has passed; a transport reads it and
never changes it. The errors below are the only ones a transport lets out (with
:class:`BodyTooLarge`, the client's fault): each transport maps its library's or its socket's
exceptions to them where they arise, so nothing above the transports knows which client library
carried a call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from tentaculo.http.errors import Problem, RequestTimeout, connect_reason

CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a module is reached: origin and base path, with credentials taken out of the URL."""

    origin: str
    base_path: str
    auth: aiohttp.BasicAuth | None
    host: str = ""
    port: int = 0
    plain: bool = False  # plain HTTP: eligible for the lean GET path

    @classmethod
    def parse(cls, address: str) -> Upstream:
        url = URL(address)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("not an http(s) address")
        auth = aiohttp.BasicAuth(url.user or "", url.password or "") if url.user or url.password else None
        return cls(str(url.origin()), url.raw_path.rstrip("/"), auth, url.host, url.port or 80, url.scheme == "http")

    def url(self, rest: str, query: str) -> URL:
        """The module's URL for a proxied path (kept exactly as the client encoded it)."""
        return URL(f"{self.origin}{self.base_path}/{rest}{'?' + query if query else ''}", encoded=True)


@dataclass(frozen=True, slots=True)
class CallTimeouts:
    """Seconds a call may take: to connect, of silence while reading, waiting for a pooled connection."""

    connect: float
    read: float
    pool_wait: float


@dataclass(frozen=True, slots=True)
class ProxyCall:
    """A call to a module, checked and ready to go: what a transport needs and nothing else."""

    service: str  # the module's name: errors name it, never its address
    method: str
    target: Upstream
    rest: str  # the path after the module's name, as the client encoded it
    query: str  # what is forwarded of the query string
    headers: CIMultiDict[str]  # end-to-end headers as they go upstream (see headers.py)
    body: RequestBody | None
    auth: aiohttp.BasicAuth | None  # the base address's credentials, unless the module has a token
    timeouts: CallTimeouts

    @property
    def url(self) -> URL:
        return self.target.url(self.rest, self.query)


class RequestBody:
    """The client's body streamed upstream chunk by chunk, at most ``limit`` bytes.

    Records why it stopped early, so the caller can tell a client that went away or sent too
    much from a module that failed.
    """

    def __init__(self, content: aiohttp.StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self.sent = 0
        self.too_large = False
        self.client_failed = False
        self.timed_out: RequestTimeout | None = None  # the client sent too slowly (the gateway's 408)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._content.iter_chunked(CHUNK):
                self.sent += len(chunk)
                if self.sent > self._limit:
                    self.too_large = True
                    raise BodyTooLarge(f"over {self._limit} bytes")
                yield chunk
        except RequestTimeout as exc:
            self.timed_out = exc
            raise
        except (OSError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError,
                asyncio.IncompleteReadError):
            self.client_failed = True
            raise


class BodyTooLarge(Exception):
    """The client's body went past ``TENTACULO_PROXY_MAX_BODY_BYTES`` while it streamed."""


# --------------------------------------------------------------------------- what transports raise


class UpstreamError(Problem):
    """A module failed a call. The detail names the module and the kind of failure only: never its
    address, its own error text or a stack trace.

    ``retryable``: the connection failed before any byte of an answer arrived and not by a timeout
    (refused, reset, a kept-alive connection the module had closed), so an idempotent call without
    a body may be sent again. ``cause`` names the library's or socket's exception, for the logs.
    """

    CODE: ClassVar[str] = "upstream_unavailable"

    def __init__(
        self, service: str, reason: str, *, retryable: bool = False, cause: str = "",
        headers: dict[str, str] | None = None, **extra: Any,
    ) -> None:
        super().__init__(self.CODE, f"module {service!r} {reason}", headers=headers, service=service, **extra)
        self.retryable = retryable
        self.cause = cause or type(self).__name__


class UpstreamUnavailable(UpstreamError):
    """The module cannot serve the call (502 ``upstream_unavailable``); its circuit may be open."""


class UpstreamUnreachable(UpstreamUnavailable):
    """No connection to the module, or it ended before any answer (502)."""

    @classmethod
    def refused(cls, call: ProxyCall, exc: OSError) -> UpstreamUnreachable:
        return cls(call.service, f"is unreachable: {connect_reason(exc)}", retryable=True, cause=type(exc).__name__)

    @classmethod
    def closed(cls, call: ProxyCall, *, retryable: bool, cause: str = "") -> UpstreamUnreachable:
        return cls(call.service, "closed the connection before answering", retryable=retryable, cause=cause)


class UpstreamProtocolError(UpstreamUnavailable):
    """The module answered with something that is not the HTTP it owed (502)."""

    @classmethod
    def invalid(cls, call: ProxyCall, cause: str = "") -> UpstreamProtocolError:
        return cls(call.service, "sent an invalid HTTP response", cause=cause)

    @classmethod
    def broke_off(cls, call: ProxyCall, cause: str = "") -> UpstreamProtocolError:
        return cls(call.service, "broke off its response", cause=cause)


class UpstreamTimeout(UpstreamError):
    """The module did not connect or answer in time (504 ``upstream_timeout``)."""

    CODE = "upstream_timeout"

    @classmethod
    def connecting(cls, call: ProxyCall, cause: str = "") -> UpstreamTimeout:
        t = call.timeouts
        return cls(call.service, f"could not be connected to within {t.connect:g} s "
                                 f"(plus up to {t.pool_wait:g} s waiting for a free connection)", cause=cause)

    @classmethod
    def reading(cls, call: ProxyCall, cause: str = "") -> UpstreamTimeout:
        return cls(call.service, f"did not answer within {call.timeouts.read:g} s", cause=cause)

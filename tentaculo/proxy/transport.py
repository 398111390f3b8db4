"""The transport interface: one method that carries a :class:`ProxyCall` to its module and returns
an :class:`UpstreamResponse`. Its contract is written here, once; ``aiohttp_transport.py`` and
``lean_transport.py`` implement it, and :class:`ModuleProxy` picks one per call and retries.

Contract of ``send(call)``
--------------------------
* It sends ``call.method`` to ``call.url`` with exactly ``call.headers`` (plus ``Host``, the
  body's framing and, when ``call.auth`` is set, ``Authorization: Basic``): no header of the
  library's own (no ``User-Agent``, ``Accept``, ``Accept-Encoding``, ``Content-Type``), no
  cookies kept between calls, no redirect followed, no body decoded.
* ``call.body``, when present, streams: it is read from the client in chunks while it is written
  upstream, never held whole. Past ``TENTACULO_PROXY_MAX_BODY_BYTES`` it stops and ``send``
  raises :class:`BodyTooLarge`.
* It returns once the response's status line and headers have arrived, with the body unread.
* Connecting takes at most ``call.timeouts.connect`` seconds, after at most ``pool_wait`` seconds
  waiting for a free pooled connection; the head and each body chunk come within
  ``call.timeouts.read`` seconds of silence.
* It raises nothing but :class:`BodyTooLarge` and :class:`UpstreamError`:
  :class:`UpstreamUnreachable` (no connection, or closed before any answer; 502),
  :class:`UpstreamProtocolError` (not HTTP, or a body broken off; 502) and
  :class:`UpstreamTimeout` (504). An error is ``retryable`` only when no byte of an answer
  arrived and no timeout struck.
* It does not retry: :class:`ModuleProxy` does. One exception: aiohttp's client itself resends an
  idempotent request once when a connection closes before answering (RFC 9112 section 9.3.1),
  so on that transport such a call may reach a module twice per attempt.
* Cancellation passes through, and the call's connection is closed with it.

Contract of the :class:`UpstreamResponse`
-----------------------------------------
``status``, ``headers`` (as the module sent them) and ``content_length`` (its ``Content-Length``
or None). ``read_chunk()`` returns what has arrived of the body (waiting for some), ``b""`` at its
end; ``read()`` the whole rest. Both raise :class:`UpstreamError` only. The caller owns the
response: ``release()`` it when the body was read to its end (``at_eof()``), which lets its
connection serve another call; ``close()`` it otherwise, which closes the connection (an unread
body is never reused). Either may be called more than once.

Which transport, retries
------------------------
A bodyless GET to a plain-HTTP module (the common call) goes over the lean keep-alive transport;
everything else (bodies, HEAD, TLS) goes through aiohttp's client, under the same rules, and so
do WebSocket upgrades (``ModuleProxy.websocket``). Each transport keeps its own connections:
at most ``TENTACULO_PROXY_POOL_PER_MODULE`` per module (aiohttp's also at most
``TENTACULO_PROXY_POOL_SIZE`` in all).

A call is retried (``TENTACULO_PROXY_RETRIES`` times) only when all of these hold: the method
is idempotent per RFC 9110 section 9.2.2 and has no request body (GET, HEAD, OPTIONS, PUT,
DELETE; TRACE is never proxied meaningfully and not retried), and the error is ``retryable``.
Timeouts are not retried: a slow module would only be asked twice as long.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp
import structlog
from multidict import CIMultiDictProxy

from tentaculo.http.trusted import TrustedProxies
from tentaculo.proxy.aiohttp_transport import AiohttpTransport
from tentaculo.proxy.call import CallTimeouts, ProxyCall, Upstream, UpstreamError
from tentaculo.proxy.lean_transport import LeanTransport
from tentaculo.settings import ModuleTimeouts, Settings, public_origin

log = structlog.get_logger("tentaculo.proxy")

# RFC 9110 section 9.2.2 idempotent methods the proxy may retry (TRACE left out on purpose).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_BACKOFF = 0.05


class UpstreamResponse(Protocol):
    """A module's answer with its body still to read; see the module docstring."""

    status: int
    headers: CIMultiDictProxy[str]

    @property
    def content_length(self) -> int | None: ...

    async def read_chunk(self) -> bytes: ...

    async def read(self) -> bytes: ...

    def at_eof(self) -> bool: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Carries one call to its module; see the module docstring for the whole contract."""

    async def send(self, call: ProxyCall) -> UpstreamResponse: ...


class ModuleProxy:
    """The proxy's transports and what they share: picks one per call, retries, owns their pools."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.trusted = TrustedProxies(settings.trusted_proxies)
        self.public = public_origin(settings.public_url) if settings.public_url else None
        self.lean = LeanTransport(settings.proxy_pool_per_module)
        self.aiohttp = AiohttpTransport(settings)
        self._upstreams: dict[str, Upstream] = {}
        self._timeouts: dict[ModuleTimeouts | None, CallTimeouts] = {}

    async def start(self) -> None:
        await self.aiohttp.start()

    async def close(self) -> None:
        self.lean.close()
        await self.aiohttp.close()

    def upstream(self, address: str) -> Upstream:
        """The parsed base address (cached); ValueError for a non-HTTP one."""
        found = self._upstreams.get(address)
        if found is None:
            if len(self._upstreams) >= 1024:
                self._upstreams.clear()
            found = self._upstreams[address] = Upstream.parse(address)
        return found

    def timeouts(self, module: ModuleTimeouts | None) -> CallTimeouts:
        """A module's timeouts, its own settings over the proxy's (cached: settings do not change while running)."""
        found = self._timeouts.get(module)
        if found is None:
            s, t = self.settings, module or ModuleTimeouts()
            found = self._timeouts[module] = CallTimeouts(
                t.connect or s.proxy_connect_timeout, t.read or s.proxy_read_timeout, s.proxy_pool_wait
            )
        return found

    async def send(self, call: ProxyCall) -> UpstreamResponse:
        """Send over the transport the call goes by, retrying what may be; see the module docstring."""
        transport: Transport = self.lean if (
            call.body is None and call.method == "GET" and call.target.plain) else self.aiohttp
        retries = self.settings.proxy_retries if call.method in IDEMPOTENT and call.body is None else 0
        attempt = 0
        while True:
            try:
                return await transport.send(call)
            except UpstreamError as exc:
                if not exc.retryable or attempt >= retries:
                    raise
                attempt += 1
                log.info("proxy_retry", service=call.service, attempt=attempt, error=exc.cause)
            await asyncio.sleep(RETRY_BACKOFF * attempt)

    async def websocket(self, call: ProxyCall, protocols: tuple[str, ...]) -> aiohttp.ClientWebSocketResponse:
        """Open the module's side of a WebSocket (over aiohttp: the lean transport does not upgrade)."""
        return await self.aiohttp.websocket(call, protocols)

"""The transport over aiohttp's client: every call but a plain bodyless GET, and WebSocket upgrades.

aiohttp's exceptions end here: :func:`upstream_error` turns each into the proxy's own
(``call.py``), for the call and for every read of its body.
"""

from __future__ import annotations

import asyncio

import aiohttp
from multidict import CIMultiDictProxy

from tentaculo.proxy.call import (
    BodyTooLarge,
    CallTimeouts,
    ProxyCall,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from tentaculo.proxy.websocket import WS_CLOSE_TIMEOUT, WS_HEARTBEAT, WS_MAX_MESSAGE
from tentaculo.settings import Settings

# Headers aiohttp's client adds when absent: never added, so the module sees only what the client
# sent (a header the client did send is copied like any other).
_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# What aiohttp raises while a body is read.
_READ_FAILURES = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError)


class AiohttpTransport:
    """Two bounded client sessions: one for calls, one for WebSockets (which hold their connection)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._ws_session: aiohttp.ClientSession | None = None
        # One ClientTimeout per distinct module setting, built once rather than on every call.
        self._timeouts: dict[CallTimeouts, aiohttp.ClientTimeout] = {}

    async def start(self) -> None:
        # WebSockets hold their connection for as long as they live: they get a pool of their own
        # (same bounds), so open sockets never starve plain calls of connections.
        self._session, self._ws_session = self._new_session(), self._new_session()

    def _new_session(self) -> aiohttp.ClientSession:
        s = self.settings
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.proxy_pool_size, limit_per_host=s.proxy_pool_per_module,
                                           ttl_dns_cache=60),
            timeout=self._timeout(CallTimeouts(s.proxy_connect_timeout, s.proxy_read_timeout, s.proxy_pool_wait)),
            cookie_jar=aiohttp.DummyCookieJar(),  # one session serves every operator: keep no cookies
            auto_decompress=False,  # bodies pass through as the module encoded them
            trust_env=False,
            skip_auto_headers=_AUTO_HEADERS,
            max_field_size=32 * 1024,
            max_line_size=16 * 1024,
        )

    async def close(self) -> None:
        for session in (self._session, self._ws_session):
            if session is not None:
                await session.close()
        self._session = self._ws_session = None

    def _timeout(self, t: CallTimeouts) -> aiohttp.ClientTimeout:
        found = self._timeouts.get(t)
        if found is None:
            found = self._timeouts[t] = aiohttp.ClientTimeout(
                total=None, connect=t.pool_wait + t.connect, sock_connect=t.connect, sock_read=t.read
            )
        return found

    async def send(self, call: ProxyCall) -> AiohttpResponse:
        """See the contract in ``transport.py``."""
        assert self._session is not None, "AiohttpTransport.start() was not awaited"
        body = call.body
        try:
            response = await self._session.request(
                call.method, call.url, headers=call.headers, data=body.chunks() if body is not None else None,
                auth=call.auth, timeout=self._timeout(call.timeouts), allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            if body is not None and body.too_large:
                raise BodyTooLarge() from None
            raise upstream_error(call, exc) from None
        return AiohttpResponse(response, call)

    async def websocket(self, call: ProxyCall, protocols: tuple[str, ...]) -> aiohttp.ClientWebSocketResponse:
        """Open the module's side of a WebSocket (handshake bounded by the module's timeouts)."""
        assert self._ws_session is not None, "AiohttpTransport.start() was not awaited"
        t = call.timeouts
        try:
            async with asyncio.timeout(t.pool_wait + t.connect + t.read):
                return await self._ws_session.ws_connect(
                    call.url, headers=call.headers, protocols=protocols, auth=call.auth, autoping=True,
                    heartbeat=WS_HEARTBEAT, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=WS_CLOSE_TIMEOUT),
                    max_msg_size=WS_MAX_MESSAGE,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise upstream_error(call, exc) from None


class AiohttpResponse:
    """aiohttp's response behind the transport contract's :class:`UpstreamResponse`."""

    __slots__ = ("_call", "_response", "content_length", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, call: ProxyCall) -> None:
        self._response = response
        self._call = call
        self.status = response.status
        self.headers: CIMultiDictProxy[str] = response.headers
        self.content_length = response.content_length

    async def read_chunk(self) -> bytes:
        try:
            return await self._response.content.readany()
        except _READ_FAILURES as exc:
            raise upstream_error(self._call, exc) from None

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except _READ_FAILURES as exc:
            raise upstream_error(self._call, exc) from None

    def at_eof(self) -> bool:
        return self._response.content.is_eof()

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


def upstream_error(call: ProxyCall, exc: BaseException) -> UpstreamError:
    """The proxy's error for one of aiohttp's (or a timeout): names the module and the kind of failure."""
    cause = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout.connecting(call, cause)
    if isinstance(exc, TimeoutError):  # aiohttp's read timeouts, or the WebSocket handshake's bound
        return UpstreamTimeout.reading(call, cause)
    if isinstance(exc, aiohttp.ClientSSLError):
        return UpstreamUnreachable(call.service, "failed the TLS handshake", cause=cause)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnreachable.refused(call, exc)
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return UpstreamProtocolError(call.service, f"refused the WebSocket upgrade (HTTP {exc.status})",
                                     cause=cause, upstream_status=exc.status)
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamProtocolError.invalid(call, cause)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamProtocolError.broke_off(call, cause)
    # Reset, or a kept-alive connection the module had closed: nothing of an answer arrived.
    retryable = isinstance(exc, (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError))
    return UpstreamUnreachable.closed(call, retryable=retryable, cause=cause)

"""The HTTP server under the app: what happens before a request reaches the middleware chain.

aiohttp's own connection handler answers requests it cannot parse with a plain-text 400 that
echoes the offending bytes (a token header line included) and logs them with a traceback. The
gateway's handler answers those with problem+json instead, logs one line naming the failure's
class only, and bounds what a slow or greedy client can hold:

* a request head must be complete within ``header_timeout`` seconds of the connection opening or
  of its previous answer (idle keep-alive connections close after the same time);
* a request body must keep arriving: ``body_timeout`` seconds, extended by one second for every
  ``body_min_rate`` bytes received (Apache's ``mod_reqtimeout`` rule), else ``408``;
* one client address holds at most ``max_connections_per_client`` open connections (0: no
  limit; addresses in ``TENTACULO_TRUSTED_PROXIES`` are exempt: they speak for many clients);
  a connection past it is answered ``429`` and closed.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tentaculo import keys
from tentaculo.http.errors import Problem
from tentaculo.http.middlewares import BASE_HEADERS, new_correlation_id
from tentaculo.http.trusted import TrustedProxies
from tentaculo.settings import Settings

log = structlog.get_logger("tentaculo.http")

# HTTP parser limits: room for a 10 KB header (replaced, not refused, when it is a bad correlation
# id) while still bounding what one request can make the gateway hold.
MAX_FIELD_SIZE = 32 * 1024
MAX_LINE_SIZE = 16 * 1024


def raw_problem(problem: Problem, correlation_id: str) -> bytes:
    """A complete HTTP/1.1 answer for ``problem`` that closes the connection, for use before any request exists."""
    document = problem.body(correlation_id)
    body = orjson.dumps(document)
    head = [f"HTTP/1.1 {problem.status} {document['title']}", "Content-Type: application/problem+json",
            f"Content-Length: {len(body)}", "Connection: close", f"X-Correlation-ID: {correlation_id}",
            *(f"{k}: {v}" for k, v in BASE_HEADERS.items()), *(f"{k}: {v}" for k, v in problem.headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, with the gateway's answers to what never reaches the app."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        limits = self._limits
        if limits is None:
            return
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        self._address = address if limits.counts(address) else None
        if self._address is not None and not limits.admit(self._address):
            self._address = None
            cid = new_correlation_id()
            log.warning("connection_refused", reason="too many connections from one address",
                        limit=limits.per_client, correlation_id=cid)
            problem = Problem("rate_limited", f"at most {limits.per_client} open connections per client address",
                              headers={"Retry-After": "1"})
            try:
                transport.write(raw_problem(problem, cid))  # type: ignore[attr-defined]
            finally:
                self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        address = getattr(self, "_address", None)
        if address is not None and self._limits is not None:
            self._limits.release(address)
            self._address = None
        super().connection_lost(exc)

    @property
    def _limits(self) -> ConnectionLimits | None:
        manager = self._manager
        return getattr(manager, "connection_limits", None) if manager is not None else None

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """Never aiohttp's message or traceback: both may hold the raw request bytes (tokens)."""
        exc = kw.get("exc_info")
        log.error("server_error", error=type(exc).__name__ if isinstance(exc, BaseException) else None)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request the parser refused (400) or a failure outside the app: problem+json, no request bytes."""
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was partly sent; it cannot be replaced")
        cid = new_correlation_id()
        if status < 500:
            # A client's malformed request: expected noise, one line, naming the parser's verdict class only.
            log.info("request_rejected", status=status, error=type(exc).__name__ if exc else None, correlation_id=cid)
            problem = Problem("bad_request", _bad_request_detail(exc), status=status)
        else:
            log.error("server_error", status=status, error=type(exc).__name__ if exc else None, correlation_id=cid)
            code = "upstream_timeout" if status == 504 else "internal_error"
            problem = Problem(code, "the gateway could not handle this request", status=status)
        response = web.Response(
            body=orjson.dumps(problem.body(cid)),
            status=problem.status,
            content_type="application/problem+json",
            headers={**BASE_HEADERS, "X-Correlation-ID": cid},
        )
        response.force_close()
        return response


def _bad_request_detail(exc: BaseException | None) -> str:
    """What was wrong, in words that carry none of the request's bytes."""
    if isinstance(exc, HttpProcessingError):
        kind = type(exc).__name__
        return {
            "BadHttpMethod": "the request line does not start with a valid HTTP method",
            "LineTooLong": "a request line or header is too long",
            "InvalidHeader": "a header is malformed",
            "BadStatusLine": "the request line is malformed",
            "InvalidURLError": "the request target is malformed",
            "TransferEncodingError": "the body's transfer encoding is malformed",
            "ContentLengthError": "the body's length is malformed",
        }.get(kind, "the request is not valid HTTP/1.1 (malformed request line, header or body framing)")
    return "the request is not valid HTTP/1.1"


class ConnectionLimits:
    """Open connections per client address, bounded; trusted forwarding proxies are exempt."""

    def __init__(self, per_client: int, trusted: TrustedProxies) -> None:
        self.per_client = per_client
        self._trusted = trusted
        self._open: dict[str, int] = {}

    def counts(self, address: str | None) -> bool:
        """Whether connections from ``address`` are counted at all."""
        return address is not None and self.per_client > 0 and address not in self._trusted

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and not counted) when it holds its maximum."""
        count = self._open.get(address, 0)
        if count >= self.per_client:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def open_connections(self, address: str) -> int:
        """How many connections ``address`` holds now."""
        return self._open.get(address, 0)


class GatewayServer(web.Server):
    """aiohttp's server, building the gateway's connection handler."""

    connection_limits: ConnectionLimits | None = None

    def __call__(self) -> web.RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose server uses :class:`GatewayRequestHandler`, with the settings' limits."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        kwargs.update(server_options(settings))
        super().__init__(app, **kwargs)
        self._connection_limits = ConnectionLimits(settings.max_connections_per_client,
                                                   TrustedProxies(settings.trusted_proxies))

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its own Server; the gateway's differs only in the handler class it builds.
        server.__class__ = GatewayServer
        server.connection_limits = self._connection_limits  # type: ignore[attr-defined]
        return server


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of aiohttp's connection handler for ``settings``."""
    return {
        "max_field_size": MAX_FIELD_SIZE,
        "max_line_size": MAX_LINE_SIZE,
        # aiohttp closes a connection that has no complete request head this long after it opened
        # or after its previous answer: the header timeout and the idle timeout in one.
        "keepalive_timeout": settings.header_timeout,
        "access_log": None,
        # A client that goes away cancels its handler, so a chat stops its upstream call at once.
        "handler_cancellation": True,
    }


# Streamed chats still running get their terminal event this long before the server stops waiting.
CUT_MARGIN = 1.0


def shutdown_total(settings: Settings) -> float:
    """The longest a stop takes: drain, in-flight requests, then the buffers' flush (plus a second of slack)."""
    return settings.drain_seconds + settings.shutdown_timeout + settings.shutdown_flush_seconds + 1.0


def serve(app: web.Application, settings: Settings, *, loop: asyncio.AbstractEventLoop,
          print_line: Callable[[str], None], reuse_port: bool = False) -> None:
    """Serve ``app`` on ``loop`` until SIGINT or SIGTERM, then stop in bounded steps and close the loop.

    The stop: drain (``/ready`` answers 503 while the listener still serves, for
    ``drain_seconds``, so a load balancer stops sending); then the listener closes, event streams
    get a final ``shutdown`` event telling them to reconnect, in-flight requests get
    ``shutdown_timeout`` seconds (streamed chats still running a second before it end with an
    ``error`` event ``shutting_down``); then the buffers flush within ``shutdown_flush_seconds``.

    ``reuse_port``: listen with SO_REUSEPORT, beside the other workers of one supervisor
    (``tentaculo.workers``); the kernel spreads new connections over them.
    """
    asyncio.set_event_loop(loop)
    runner = GatewayRunner(app, settings, handle_signals=False, shutdown_timeout=settings.shutdown_timeout)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
        await site.start()
        print_line(f"tentaculo serving on http://{settings.host}:{settings.port} "
                   f"(console: http://{settings.host}:{settings.port}/operator/; Ctrl-C to stop)")

    async def stop() -> None:
        lifecycle = app[keys.LIFECYCLE]
        lifecycle.draining = True
        log.info("draining", seconds=settings.drain_seconds, stop_within_s=shutdown_total(settings))
        await asyncio.sleep(settings.drain_seconds)
        cut = loop.call_later(max(0.0, settings.shutdown_timeout - CUT_MARGIN), _cut, lifecycle)
        try:
            await runner.cleanup()
        finally:
            cut.cancel()

    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    started = False
    try:
        loop.run_until_complete(start())
        started = True
        loop.run_until_complete(stopping.wait())
        log.info("shutting_down")
        began = loop.time()
        loop.run_until_complete(stop())
        log.info("stopped", seconds=round(loop.time() - began, 3))
    finally:
        if not started:
            loop.run_until_complete(runner.cleanup())
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        print_line("tentaculo stopped")
        sys.stderr.flush()


def _cut(lifecycle: keys.Lifecycle) -> None:
    cut = lifecycle.cut_streams()
    if cut:
        log.warning("streams_cut_at_shutdown", streams=cut)

"""Modules on loopback for the reverse proxy tests: a real aiohttp app that records what reached it,
and raw TCP servers that misbehave the way real ones do."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.test_utils import TestServer

GZIPPED = gzip.compress(b"compressed by the module " * 100)
# Response headers that would act on the gateway's origin if they were served on it.
HOSTILE_HEADERS = (
    ("Set-Cookie", "console_session=stolen; Path=/; HttpOnly"),
    ("Set-Cookie", "second=1; Path=/operator"),
    ("Set-Cookie2", "legacy=1"),
    ("Access-Control-Allow-Origin", "https://evil.example"),
    ("Access-Control-Allow-Credentials", "true"),
    ("Access-Control-Allow-Methods", "DELETE"),
    ("Access-Control-Allow-Headers", "X-VX11-Token"),
    ("Access-Control-Allow-Private-Network", "true"),
    ("Access-Control-Expose-Headers", "*"),
    ("Access-Control-Max-Age", "86400"),
    ("Strict-Transport-Security", "max-age=0"),
    ("Clear-Site-Data", '"*"'),
    ("Content-Security-Policy", "script-src *"),
    ("Content-Security-Policy-Report-Only", "default-src *"),
    ("X-Frame-Options", "ALLOWALL"),
    ("X-Content-Type-Options", "sniff-away"),
    ("Alt-Svc", 'h2="evil.example:443"'),
    ("NEL", '{"report_to": "evil", "max_age": 86400}'),
    ("Report-To", '{"group": "evil", "endpoints": [{"url": "https://evil.example/r"}]}'),
    ("Reporting-Endpoints", 'evil="https://evil.example/r"'),
    ("Service-Worker-Allowed", "/"),
    ("Timing-Allow-Origin", "*"),
    ("X-Correlation-ID", "module-chosen-id"),
    ("X-Module-Header", "kept"),
)


@dataclass
class Seen:
    """One request as the module received it."""

    method: str
    raw_path: str
    headers: dict[str, list[str]]
    body_size: int = 0
    peer_port: int | None = None  # the gateway's side of the connection: tells reuse from reconnects


@dataclass
class ModuleApp:
    """A module that answers on every path the tests need and records each request it received."""

    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release_sse: asyncio.Event = field(default_factory=asyncio.Event)
    upload_started: asyncio.Event = field(default_factory=asyncio.Event)
    upload_broken: asyncio.Event = field(default_factory=asyncio.Event)
    ws_close_codes: list[int | None] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    def requests_to(self, prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.raw_path.startswith(prefix)]

    def _record(self, request: web.Request, body_size: int = 0) -> None:
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.seen.append(Seen(request.method, request.raw_path, headers, body_size, peer[1] if peer else None))

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._record(request, len(body))
        return web.json_response(
            {"method": request.method, "raw_path": request.raw_path, "size": len(body)},
            headers={
                "Server": "module-internal/9.9",
                "Connection": "X-Module-Hop",
                "X-Module-Hop": "must not reach the client",
                "Keep-Alive": "timeout=3",
                "Proxy-Agent": "module",
                "X-Module-Header": "kept",
            },
        )

    async def slow(self, request: web.Request) -> web.Response:
        self._record(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(float(request.query.get("delay", "0.05")))
        finally:
            self.in_flight -= 1
        return web.json_response({"slow": True})

    async def status(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.json_response({"error": "module says no"}, status=int(request.match_info["code"]))

    async def sse(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b"event: first\ndata: 1\n\n")
        await self.release_sse.wait()
        await resp.write(b"event: second\ndata: 2\n\n")
        await resp.write_eof()
        return resp

    async def chunks(self, request: web.Request) -> web.StreamResponse:
        """``?count=&size=``: a chunked body of ``count`` chunks of ``size`` bytes."""
        self._record(request)
        count, size = int(request.query.get("count", "4")), int(request.query.get("size", "1024"))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"x" * size
        for _ in range(count):
            await resp.write(block)
        await resp.write_eof()
        return resp

    async def endless(self, request: web.Request) -> web.StreamResponse:
        """Streams a chunk every 20 ms until the gateway goes away; notes that it was cancelled."""
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"data: tick\n\n")
                await asyncio.sleep(0.02)
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled.set()
            raise

    async def broken(self, request: web.Request) -> web.StreamResponse:
        """Promises 100000 bytes, sends 1000, then drops the connection."""
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Length": "100000"})
        await resp.prepare(request)
        await resp.write(b"y" * 1000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def upload(self, request: web.Request) -> web.Response:
        """Reads the body as it streams in: size, digest, and whether it came chunked."""
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in request.content.iter_chunked(65536):
                if size == 0:
                    self.upload_started.set()
                size += len(chunk)
                digest.update(chunk)
        except (asyncio.CancelledError, ConnectionError, HttpProcessingError):
            self.upload_broken.set()
            raise
        self._record(request, size)
        return web.json_response({
            "size": size,
            "sha256": digest.hexdigest(),
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
            "content_length": request.content_length,
        })

    async def hostile(self, request: web.Request) -> web.StreamResponse:
        """A page whose headers try to act on the gateway's origin; ``?size=`` makes its body that long."""
        self._record(request)
        headers = [(name, value) for name, value in HOSTILE_HEADERS]
        resp = web.StreamResponse(headers=headers)
        resp.content_type = "text/html"
        body = b"<script>document.cookie</script>".ljust(int(request.query.get("size", "64")), b" ")
        resp.content_length = len(body)
        await resp.prepare(request)
        if request.method != "HEAD":
            await resp.write(body)
        await resp.write_eof()
        return resp

    async def redirect(self, request: web.Request) -> web.Response:
        self._record(request)
        raise web.HTTPFound(f"{self.url}/base/landing?x=1")

    async def redirect_to(self, request: web.Request) -> web.Response:
        """A 302 to whatever ``to`` says, as a module whose answers someone else controls might send."""
        self._record(request)
        return web.Response(status=302, headers={"Location": request.query["to"]})

    async def gzipped(self, request: web.Request) -> web.Response:
        self._record(request)
        return web.Response(body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        self._record(request)
        ws = web.WebSocketResponse(protocols=("vx11.v1",))
        ws.headers.extend(HOSTILE_HEADERS)  # the handshake's answer tries the same as a page would
        await ws.prepare(request)
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.TEXT:
                if msg.data == "drop":
                    assert request.transport is not None
                    request.transport.abort()
                    break
                if msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"module closed")
                    break
                await ws.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
            else:
                if msg.type == WSMsgType.CLOSE:  # the code the other side closed with
                    self.ws_close_codes.append(msg.data)
                break
        return ws

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        r = app.router
        r.add_get("/health", self.health)
        r.add_route("*", "/base/echo/{tail:.*}", self.echo)
        r.add_get("/base/slow", self.slow)
        r.add_get("/base/status/{code}", self.status)
        r.add_get("/base/sse", self.sse)
        r.add_get("/base/chunks", self.chunks)
        r.add_get("/base/endless", self.endless)
        r.add_get("/base/broken", self.broken)
        r.add_route("*", "/base/upload", self.upload)
        r.add_route("*", "/base/hostile", self.hostile)
        r.add_get("/base/redirect", self.redirect)
        r.add_get("/base/redirect-to", self.redirect_to)
        r.add_get("/base/gzipped", self.gzipped)
        r.add_get("/base/ws", self.ws)
        return app

    async def start(self) -> ModuleApp:
        self.server = TestServer(self.app())  # handler_cancellation: a gateway that goes away cancels the handler
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


Responder = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawModule:
    """A TCP server that reads a request head and answers however ``respond`` says (the n-th connection)."""

    def __init__(self, respond: Responder) -> None:
        self._respond = respond
        self._server: asyncio.Server | None = None
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.request_lines: list[str] = []
        self.port = 0

    def proxied(self) -> list[str]:
        """Request lines other than the health prober's."""
        return [line for line in self.request_lines if " /health " not in line]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawModule:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                self.request_lines.append(line)
                if " /health " not in line:
                    await self._respond(reader, writer, len(self.proxied()))
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    writer.write(b"THIS IS NOT HTTP at 10.1.2.3:8080\r\n\r\n")
    await writer.drain()


async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    """An interim 103 before each real answer, on one kept-alive connection."""
    while True:
        body = b'{"n": %d}' % n
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)  # the real answer arrives in a later read
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request on this connection
        n += 1


async def drop_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    """Every odd request's connection is closed without an answer (a kept-alive connection the module dropped)."""
    if n % 2 == 1:
        return
    body = b'{"second": true}'
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()


async def close_unanswered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    """The connection is closed without a byte of an answer."""


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    """Never answers; waits until the caller gives up and closes."""
    await reader.read()


async def break_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    """Promises 100 bytes, sends 10 and closes."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    await writer.drain()


async def raw_request(
    port: int, target: str, headers: dict[str, str], *, method: str = "GET", host: str = "gateway", body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """Send a request exactly as written (clients normalise paths and refuse odd requests; attackers do not)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    parsed = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), parsed, body


def problem_of(body: bytes) -> dict[str, Any]:
    import json

    return json.loads(body)

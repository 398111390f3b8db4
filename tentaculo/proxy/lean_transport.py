"""The lean transport: a bodyless GET to a plain-HTTP module, the proxy's common call, skips
aiohttp's client machinery and goes over a small keep-alive pool of its own, the response head
parsed by httptools (llhttp).

At most ``TENTACULO_PROXY_POOL_PER_MODULE`` connections per module; one idle for over 15 s is
closed by the next call to that module, if the module has not closed it first. The body is
relayed by Content-Length, chunks or end of connection. Socket errors, parse errors and timeouts
end here: each becomes the proxy's own error (``call.py``) where it arises.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from tentaculo.proxy.call import (
    CHUNK,
    ProxyCall,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

_HEAD_LIMIT = 80 * 1024  # status line plus headers, as aiohttp's client limits allow
_PAUSE_AT = 4 * CHUNK  # stop reading from the module while this much body waits for the client


class LeanTransport:
    """One keep-alive pool per module host and port; see the module docstring."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pools: dict[tuple[str, int], ModulePool] = {}

    async def send(self, call: ProxyCall) -> LeanResponse:
        """See the contract in ``transport.py``; the call is a bodyless GET to a plain-HTTP module."""
        head = request_head(call)
        target = call.target
        key = (target.host, target.port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = ModulePool(target.host, target.port, self._limit)
        response = None
        try:
            conn = await pool.acquire(call)
            response = conn.response = LeanResponse(pool, conn, call)
            if conn.closed or conn.transport is None:
                raise UpstreamUnreachable.closed(call, retryable=True)
            conn.transport.write(head)
            await response.wait_head()
            return response
        except BaseException:
            if response is not None:
                response.close()  # failed, or cancelled (the client left): the module's call ends with it
            raise

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def request_head(call: ProxyCall) -> bytes:
    """A GET's request head as it goes on the wire (what aiohttp's client would send for it)."""
    target, query = call.target, call.query
    parts = [f"GET {target.base_path}/{call.rest}{'?' + query if query else ''} HTTP/1.1\r\n"
             f"Host: {target.origin.partition('://')[2]}\r\n"]
    parts += [f"{name}: {value}\r\n" for name, value in call.headers.items()]
    if call.auth is not None:
        parts.append(f"Authorization: {call.auth.encode()}\r\n")
    parts.append("\r\n")
    text = "".join(parts)
    if text.count("\n") != len(parts) + 1 or text.count("\r") != len(parts) + 1:
        raise ValueError("a header holds a line break")
    return text.encode("utf-8", "surrogateescape")


class LeanResponse:
    """A module's answer on the lean path: status and headers, the body read as it arrives.

    The transport contract's :class:`UpstreamResponse`, fed by the connection's parser.
    """

    __slots__ = ("_buffered", "_call", "_chunks", "_conn", "_error", "_head", "_lost", "_pool", "_raw_headers",
                 "_seen", "_settled", "_waiter", "complete", "headers", "keep_alive", "received", "status")

    def __init__(self, pool: ModulePool, conn: _ModuleConnection, call: ProxyCall) -> None:
        loop = asyncio.get_running_loop()
        self._pool = pool
        self._conn = conn
        self._call = call
        self._head: asyncio.Future[None] = loop.create_future()
        self._waiter: asyncio.Future[None] | None = None
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._seen = 0
        self._error: UpstreamError | None = None
        self._lost = False
        self._settled = False
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.received = False  # any byte of the answer arrived (after that, no retry)
        self.complete = False
        self.keep_alive = False

    # -- fed by the connection

    def _data(self, data: bytes) -> None:
        self.received = True
        if not self._head.done():
            self._seen += len(data)
        try:
            self._conn.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(UpstreamProtocolError.invalid(self._call, type(exc).__name__))
            return
        if not self._head.done() and self._seen > _HEAD_LIMIT:
            self._fail(UpstreamProtocolError.invalid(self._call))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._conn.parser.get_status_code()
        if 100 <= status < 200:
            self._raw_headers.clear()  # an interim answer: the real one follows
            return
        if self._head.done():
            self._fail(UpstreamProtocolError.invalid(self._call))
            return
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(
            (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
            for n, v in self._raw_headers
        ))
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_AT and self._conn.transport is not None:
            self._conn.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:
            return  # the end of an interim answer
        self.complete = True
        self.keep_alive = self._conn.parser.should_keep_alive()  # read here: the parser resets after
        self._wake()

    def _connection_lost(self) -> None:
        self._lost = True
        if self.complete:
            return
        if self._head.done() and "Content-Length" not in self.headers and "Transfer-Encoding" not in self.headers:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        else:
            # Before the head: retried if nothing of an answer arrived (a kept-alive connection it had closed).
            self._fail(UpstreamUnreachable.closed(self._call, retryable=not self.received) if not self._head.done()
                       else UpstreamProtocolError.broke_off(self._call))

    def _fail(self, exc: UpstreamError) -> None:
        if self._error is None:
            self._error = exc
        if not self._head.done():
            self._head.set_exception(exc)
            self._head.exception()  # retrieved: whoever waits re-raises it
        self._wake()
        self._conn.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the caller

    async def wait_head(self) -> None:
        try:
            async with asyncio.timeout(self._call.timeouts.read):
                await self._head
        except TimeoutError:
            raise UpstreamTimeout.reading(self._call) from None

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def at_eof(self) -> bool:
        return self.complete and not self._chunks

    async def read_chunk(self) -> bytes:
        """The body received so far (waits for some); ``b""`` at its end."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._call.timeouts.read):
                    await self._waiter
            except TimeoutError:
                raise UpstreamTimeout.reading(self._call) from None
            finally:
                self._waiter = None
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._buffered > _PAUSE_AT and self._conn.transport is not None and not self._lost:
            self._conn.transport.resume_reading()
        self._buffered = 0
        return data

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.read_chunk():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Done with a body read to its end: the connection goes back to the pool if it may."""
        if not self._settled:
            self._settled = True
            keep = self.complete and self.keep_alive and self._error is None and not self._lost
            self._pool.put_back(self._conn, keep)

    def close(self) -> None:
        """Done early: the connection is closed (an unread body is never reused)."""
        if not self._settled:
            self._settled = True
            self._pool.put_back(self._conn, False)


class _ModuleConnection(asyncio.Protocol):
    """One kept-alive connection to a module; the current response gets its parsed bytes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.response: LeanResponse | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0  # loop time it was last put back in the pool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted any more
            return
        self.response._data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response._connection_lost()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # httptools callbacks, passed on to the response being read
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.response is not None:
            self.response.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response.on_body(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response.on_message_complete()


class ModulePool:
    """At most ``limit`` connections (in use or idle) to one module's host and port.

    Idle connections are reused newest first, so after a burst the oldest sit unused: each call
    that puts a connection back closes those idle for longer than ``IDLE_SECONDS``.
    """

    IDLE_SECONDS = 15.0  # as aiohttp's client keeps an idle connection

    def __init__(self, host: str, port: int, limit: int) -> None:
        self._host = host
        self._port = port
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_ModuleConnection] = []

    async def acquire(self, call: ProxyCall) -> _ModuleConnection:
        """A connection, reused when one is idle; its slot is held until ``put_back``."""
        if self._slots.locked():
            try:
                async with asyncio.timeout(call.timeouts.pool_wait):
                    await self._slots.acquire()
            except TimeoutError:
                raise UpstreamTimeout.connecting(call) from None
        else:
            await self._slots.acquire()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        try:
            async with asyncio.timeout(call.timeouts.connect):
                _, conn = await asyncio.get_running_loop().create_connection(
                    _ModuleConnection, self._host, self._port
                )
        except TimeoutError:
            self._slots.release()
            raise UpstreamTimeout.connecting(call) from None
        except OSError as exc:
            self._slots.release()
            raise UpstreamUnreachable.refused(call, exc) from None
        except BaseException:
            self._slots.release()
            raise
        return conn

    def put_back(self, conn: _ModuleConnection, keep: bool) -> None:
        conn.response = None
        if keep and not conn.closed:
            idle = self._idle
            conn.idle_since = now = asyncio.get_running_loop().time()
            idle.append(conn)
            while now - idle[0].idle_since > self.IDLE_SECONDS:  # the oldest first; conn itself stays
                idle.pop(0).abort()
        else:
            conn.abort()
        self._slots.release()

    def close(self) -> None:
        for conn in self._idle:
            conn.abort()
        self._idle.clear()



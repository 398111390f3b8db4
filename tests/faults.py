"""A loopback TCP proxy that can be cut, to make a real dependency go away and come back."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit, urlunsplit


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to a TCP or Unix-socket target; ``cut()`` behaves like a stopped server."""

    def __init__(self, *, host: str | None = None, port: int | None = None, unix_path: str | None = None) -> None:
        self._target = (host, port, unix_path)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cuts = 0  # a connection accepted before a cut must not outlive it
        # Cleared while silenced: connections stay open and bytes stay where they are (unread, in
        # the kernel's buffers) until restore(), as in a network partition that TCP rides out.
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port, unix_path = self._target
        if unix_path:
            return await asyncio.open_unix_connection(unix_path)
        return await asyncio.open_connection(host, port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cuts = self._cuts
        self._writers.add(writer)
        try:
            up_reader, up_writer = await self._open_target()
        except OSError:
            self._writers.discard(writer)
            writer.close()
            return
        if cuts != self._cuts:  # cut while the target was being reached: close both sides, as cut() would
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while True:
                    await self._flowing.wait()
                    data = await src.read(65536)
                    await self._flowing.wait()  # read just before a silence: hold it until restore
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        assert self._server is not None
        self._cuts += 1
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    def silence(self) -> None:
        """Keep every connection open (and accept new ones) but forward nothing either way, until
        ``restore()``; what was sent meanwhile is delivered then, as TCP retransmits after a partition."""
        self._flowing.clear()

    async def restore(self) -> None:
        """End a silence, or listen again on the same port after a cut."""
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        self._flowing.set()
        if self._server is not None:
            await self.cut()


async def proxy_postgres(dsn: str) -> tuple[CuttableProxy, str]:
    """Start a proxy in front of the server of ``dsn``; return it and the DSN that goes through it."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    if "host" in query:  # Unix socket directory (embedded server)
        proxy = CuttableProxy(unix_path=f"{query['host'][0]}/.s.PGSQL.{parts.port or 5432}")
    else:
        proxy = CuttableProxy(host=parts.hostname, port=parts.port or 5432)
    await proxy.start()
    user = parts.username or "postgres"
    return proxy, urlunsplit(("postgresql", f"{user}@127.0.0.1:{proxy.port}", parts.path, "", ""))


async def proxy_redis(url: str) -> tuple[CuttableProxy, str]:
    """Start a proxy in front of the Redis server of ``url``; return it and the URL through it."""
    parts = urlsplit(url)
    proxy = CuttableProxy(host=parts.hostname, port=parts.port or 6379)
    await proxy.start()
    return proxy, urlunsplit(("redis", f"127.0.0.1:{proxy.port}", parts.path, "", ""))

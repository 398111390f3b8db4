"""ChannelListener: one connection LISTENing on a PostgreSQL channel, reopened when it is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from tentaculo.db import DB_FAILURES


class ChannelListener:
    """Sets ``heard`` on every notification of ``channel``, and when the connection opens or drops.

    Opening (or reopening) sets it too: what changed while nobody listened is unknown, so whoever
    waits on ``heard`` should reread. ``ensure()`` never raises for PostgreSQL trouble: call it
    again later.
    """

    def __init__(self, database_url: str | None, channel: str, heard: asyncio.Event | None = None,
                 on_payload: Callable[[str], None] | None = None) -> None:
        self.database_url = database_url
        self.channel = channel
        self.heard = heard if heard is not None else asyncio.Event()
        self.on_payload = on_payload  # called with each notification's payload, besides ``heard``
        self._conn: asyncpg.Connection | None = None
        self._connecting: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        """Whether a live connection is listening now."""
        return self._conn is not None and not self._conn.is_closed()

    async def ensure(self) -> None:
        """Listen, unless already listening on a live connection.

        The connect runs shielded: an owner cancelled mid-connect (its loop stopping) would
        otherwise leave a half-made connection behind; ``close()`` waits for it and closes it.
        """
        if self.listening:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect(), name=f"listen-{self.channel}")
        await asyncio.shield(self._connecting)

    async def _connect(self) -> None:
        await self._drop()
        try:
            conn = await asyncpg.connect(self.database_url, timeout=2)
        except (*DB_FAILURES, ValueError):
            return
        try:
            await conn.add_listener(self.channel, self._on_notify)
        except DB_FAILURES:
            await conn.close(timeout=2)
            return
        except BaseException:  # never leave the connection open
            conn.terminate()
            raise
        conn.add_termination_listener(lambda _: self.heard.set())
        self._conn = conn
        self.heard.set()

    async def close(self) -> None:
        if self._connecting is not None:
            await asyncio.gather(self._connecting, return_exceptions=True)
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                async with asyncio.timeout(2):
                    await conn.close()
            except (TimeoutError, *DB_FAILURES):
                conn.terminate()

    def _on_notify(self, _conn: object, _pid: object, _channel: object, payload: object) -> None:
        self.heard.set()
        if self.on_payload is not None and isinstance(payload, str):
            self.on_payload(payload)

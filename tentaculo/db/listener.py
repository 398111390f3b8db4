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

    def __init__(self, database_url: str | None, channel: str, heard: asyncio.Event,
                 on_payload: Callable[[str], None] | None = None) -> None:
        self.database_url = database_url
        self.channel = channel
        self.heard = heard
        self.on_payload = on_payload  # called with each notification's payload, besides ``heard``
        self._conn: asyncpg.Connection | None = None

    @property
    def listening(self) -> bool:
        """Whether a live connection is listening now."""
        return self._conn is not None and not self._conn.is_closed()

    async def ensure(self) -> None:
        """Listen, unless already listening on a live connection."""
        if self.listening:
            return
        await self.close()
        try:
            conn = await asyncpg.connect(self.database_url, timeout=2)
        except (*DB_FAILURES, ValueError):
            return
        try:
            await conn.add_listener(self.channel, self._on_notify)
        except DB_FAILURES:
            await conn.close(timeout=2)
            return
        except BaseException:  # cancelled (the owner is stopping): never leave the connection open
            conn.terminate()
            raise
        conn.add_termination_listener(lambda _: self.heard.set())
        self._conn = conn
        self.heard.set()

    async def close(self) -> None:
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

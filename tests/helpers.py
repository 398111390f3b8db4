"""What tests share besides fixtures: the admin token, serving a gateway, waiting, audit rows.

Tests import these from here; ``conftest.py`` holds the fixtures and hooks and uses them too.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiohttp import web
from aiohttp.test_utils import BaseRunner, TestClient, TestServer

from tentaculo import keys
from tentaculo.db import queries
from tentaculo.db.migrate import migrate
from tentaculo.http.server import GatewayRunner
from tentaculo.settings import Settings

ADMIN_TOKEN = "test-admin-" + uuid.uuid4().hex


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at the database ``name`` instead."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def execute(dsn: str, sql: str) -> None:
    """Run one statement on its own connection (CREATE DATABASE cannot run in a pool's transaction)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def migrate_database(dsn: str) -> None:
    """Apply the gateway's migrations to the database at ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()


AppClient = Callable[..., Awaitable[TestClient]]


class GatewayTestServer(TestServer):
    """aiohttp's test server running the gateway's own server (its handler, limits and timeouts)."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs.pop("handler_cancellation", None)  # the gateway's server options set it
        return GatewayRunner(self.app, self._settings, **kwargs)


async def serve(aiohttp_client: AppClient, app: web.Application) -> TestClient:
    """Serve the gateway ``app`` with its own server and return a client for it."""
    server = GatewayTestServer(app, app[keys.SETTINGS])
    await server.start_server()
    return await aiohttp_client(server)


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll a condition that has no event to await (rows written by another task, a counter moving);
    the predicate may be a plain function or return an awaitable."""
    async with asyncio.timeout(timeout):
        while True:
            outcome = predicate()
            if await outcome if inspect.isawaitable(outcome) else outcome:
                return
            await asyncio.sleep(interval)


async def audit_row_of(db: asyncpg.Connection, correlation_id: str) -> asyncpg.Record:
    """The one audit row of a request, once the writer has written it."""

    async def written() -> bool:
        return len(await queries.audit_rows_for(db, correlation_id)) == 1

    await wait_for(written)
    [row] = await queries.audit_rows_for(db, correlation_id)
    return row


def inline_app(*middlewares: Callable[..., object]) -> web.Application:
    """A tiny application with only the given middlewares, for middleware tests."""
    return web.Application(middlewares=list(middlewares))


# Every token the suite creates has this shape (``new_token()``), or is the admin token above.
CREATED_TOKEN = re.compile(r"vx11_[A-Za-z0-9_-]{43}|" + re.escape(ADMIN_TOKEN))


def leaked_tokens(sections: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(section title, the token's first characters) for each captured section holding a token."""
    return [(title, m.group(0)[:9] + "...") for title, text in sections for m in [CREATED_TOKEN.search(text)] if m]

"""Real PostgreSQL and Redis for the suite: from the environment, or embedded ones.

``TENTACULO_TEST_DATABASE_URL`` names a server where the suite may create a database;
``TENTACULO_TEST_REDIS_URL`` a Redis server. Unset, each is started embedded. Every run
creates a fresh database and uses its own Redis key prefix.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from tentaculo.app import SERVER_LIMITS, create_app
from tentaculo.auth import hash_token, new_token
from tentaculo.db import queries
from tentaculo.db.migrate import migrate
from tentaculo.embedded import EmbeddedPostgres, EmbeddedRedis
from tentaculo.settings import Settings
from tests.proxy_upstreams import ModuleApp

ADMIN_TOKEN = "test-admin-" + uuid.uuid4().hex
RUN_ID = uuid.uuid4().hex[:10]


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _migrate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of a PostgreSQL server the suite may create databases on."""
    given = os.environ.get("TENTACULO_TEST_DATABASE_URL")
    if given:
        yield given
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    server.start()
    yield server.admin_dsn
    server.stop()


@pytest.fixture(scope="session")
def database_url(pg_server_dsn: str) -> Iterator[str]:
    """A fresh, migrated database for this run, dropped at the end."""
    name = f"tentaculo_test_{RUN_ID}"
    asyncio.run(_execute(pg_server_dsn, f'CREATE DATABASE "{name}"'))
    dsn = with_database(pg_server_dsn, name)
    asyncio.run(_migrate(dsn))
    yield dsn
    asyncio.run(_execute(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis server (given or embedded)."""
    given = os.environ.get("TENTACULO_TEST_REDIS_URL")
    if given:
        yield given
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str) -> Iterator[str]:
    """This run's key prefix; its keys are deleted at the end."""
    prefix = f"tentaculo-test-{RUN_ID}:"
    yield prefix

    async def clean() -> None:
        client = Redis.from_url(redis_url)
        try:
            async for key in client.scan_iter(match=prefix + "*"):
                await client.delete(key)
        finally:
            await client.aclose()

    asyncio.run(clean())


@pytest.fixture
def settings(database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    """Settings of one test gateway instance (its own instance name)."""
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        admin_token=ADMIN_TOKEN,
        instance=f"test-{uuid.uuid4().hex[:12]}",
        token_cache_seconds=0,
        audit_flush_seconds=0.05,
        log_format="json",
        migrate_on_start=True,
    )


AppClient = Callable[..., Awaitable[TestClient]]


async def serve(aiohttp_client: AppClient, app: web.Application) -> TestClient:
    """Serve ``app`` with the gateway's server limits and return a client for it."""
    server = TestServer(app)
    await server.start_server(**SERVER_LIMITS)
    return await aiohttp_client(server)


@pytest.fixture
async def gateway(aiohttp_client: AppClient, settings: Settings) -> TestClient:
    """A test client on a gateway built from ``settings``."""
    return await serve(aiohttp_client, create_app(settings))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to this run's database, for checking what the gateway wrote."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"X-VX11-Token": ADMIN_TOKEN}


@pytest.fixture
async def make_token(db: asyncpg.Connection) -> Callable[..., Awaitable[str]]:
    """Create a token with the given scopes in the database; returns its secret."""

    async def make(*scopes: str, name: str | None = None) -> str:
        token = new_token()
        await queries.insert_token(db, name or f"t-{uuid.uuid4().hex[:8]}", hash_token(token), list(scopes), "tests")
        return token

    return make


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


@pytest.fixture
async def module() -> AsyncIterator[ModuleApp]:
    """A real upstream module (aiohttp on loopback) for the proxy tests."""
    m = await ModuleApp().start()
    yield m
    await m.close()

"""Real PostgreSQL and Redis for the suite: from the environment, or embedded ones.

``TENTACULO_TEST_DATABASE_URL`` names a server where the suite may create a database;
``TENTACULO_TEST_REDIS_URL`` a Redis server. Unset, each is started embedded. Every run
creates a fresh database and uses its own Redis key prefix.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseRunner, TestClient, TestServer
from redis.asyncio import Redis

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.auth.tokens import hash_token, new_token
from tentaculo.db import queries
from tentaculo.db.migrate import migrate
from tentaculo.embedded import EmbeddedPostgres, EmbeddedRedis
from tentaculo.http.server import GatewayRunner
from tentaculo.settings import Settings
from tests.browser import CHROMIUM_ARGS, HOW_TO_INSTALL, chromium_executable
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
        # Every test calls from 127.0.0.1 and shares one key prefix: the many wrong tokens the suite
        # sends on purpose must not block each other. The limiter's own tests set their limits.
        auth_failure_burst=1000,
    )


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
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium driven by Playwright (``tests/browser.py`` says which one and why)."""
    from playwright.async_api import async_playwright

    executable = chromium_executable()
    if executable is None:
        pytest.fail(HOW_TO_INSTALL)
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        yield launched
        await launched.close()


@pytest.fixture
async def module() -> AsyncIterator[ModuleApp]:
    """A real upstream module (aiohttp on loopback) for the proxy tests."""
    m = await ModuleApp().start()
    yield m
    await m.close()


# Every token the suite creates has this shape (``new_token()``), or is the admin token above.
CREATED_TOKEN = re.compile(r"vx11_[A-Za-z0-9_-]{43}|" + re.escape(ADMIN_TOKEN))


def leaked_tokens(sections: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(section title, the token's first characters) for each captured section holding a token."""
    return [(title, m.group(0)[:9] + "...") for title, text in sections for m in [CREATED_TOKEN.search(text)] if m]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Fail a test whose run wrote a token into a log line or any captured output.

    The teardown report carries everything captured in the test's three phases: stdout, stderr
    (structlog's lines, aiohttp's and asyncpg's) and the standard library's log records.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "teardown":
        return
    leaks = leaked_tokens(report.sections)
    if leaks:
        report.outcome = "failed"
        report.longrepr = f"a token was written to captured output or logs: {leaks}"

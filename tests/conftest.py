"""Real PostgreSQL and Redis for the suite: from the environment, or embedded ones.

``TENTACULO_TEST_DATABASE_URL`` names a server where the suite may create a database;
``TENTACULO_TEST_REDIS_URL`` a Redis server. Unset, each is started embedded. Every run
creates a fresh database and uses its own Redis key prefix.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from tentaculo.app import create_app
from tentaculo.auth.tokens import hash_token, new_token
from tentaculo.db import queries
from tentaculo.embedded import EmbeddedPostgres, EmbeddedRedis
from tentaculo.settings import Settings
from tests.browser import CHROMIUM_ARGS, HOW_TO_INSTALL, chromium_executable

# Tests import these from tests.helpers; they stay importable from here for tests written before
# the helpers moved there.
from tests.helpers import (  # noqa: F401
    ADMIN_TOKEN,
    CREATED_TOKEN,
    AppClient,
    GatewayTestServer,
    audit_row_of,
    execute,
    execute as _execute,
    inline_app,
    leaked_tokens,
    migrate_database,
    migrate_database as _migrate,
    serve,
    wait_for,
    with_database,
)
from tests.proxy_upstreams import ModuleApp

RUN_ID = uuid.uuid4().hex[:10]


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
    asyncio.run(execute(pg_server_dsn, f'CREATE DATABASE "{name}"'))
    dsn = with_database(pg_server_dsn, name)
    asyncio.run(migrate_database(dsn))
    yield dsn
    asyncio.run(execute(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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

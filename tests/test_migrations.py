"""Versioned migrations: fresh apply, idempotence, concurrent starts, edited history, seed data."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import asyncpg
import pytest

from tentaculo.db.migrate import MigrationError, load_migrations, migrate, pending_migrations
from tests.helpers import execute, with_database


@pytest.fixture
async def empty_database(pg_server_dsn: str):
    name = f"tentaculo_mig_{uuid.uuid4().hex[:10]}"
    await execute(pg_server_dsn, f'CREATE DATABASE "{name}"')
    yield with_database(pg_server_dsn, name)
    await execute(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_fresh_database_gets_every_migration_once(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        assert await pending_migrations(conn) == [m.version for m in load_migrations()]
        assert await migrate(conn) == [m.version for m in load_migrations()]
        assert await migrate(conn) == []
        assert await pending_migrations(conn) == []
    finally:
        await conn.close()


async def test_instances_starting_together_apply_each_migration_once(empty_database: str) -> None:
    conns = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = sorted(v for r in results for v in r)
        assert applied == [m.version for m in load_migrations()]
        rows = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert rows == len(load_migrations())
    finally:
        for c in conns:
            await c.close()


async def test_edited_migration_is_refused(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        await migrate(conn)
        edited = [dataclasses.replace(m, sql=m.sql + "\n-- edited") for m in load_migrations()]
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, edited)
    finally:
        await conn.close()


async def test_seed_has_the_ten_modules_and_nine_edges(db: asyncpg.Connection) -> None:
    modules = {r["name"] for r in await db.fetch("SELECT name FROM service_configs")}
    assert modules >= {
        "madre", "redis", "tentaculo_link", "switch", "hermes", "hormiguero",
        "mcp", "spawner", "operator-backend", "operator-frontend",
    }
    edges = await db.fetch("SELECT source, target FROM topology_edges")
    assert len(edges) >= 9
    assert {(e["source"], e["target"]) for e in edges} >= {("operator-frontend", "tentaculo_link")}
    flags = {r["name"] for r in await db.fetch("SELECT name FROM feature_flags")}
    assert flags >= {"chat", "events", "metrics", "file_explorer", "proxy"}
    for table in ("audit_logs", "copilot_actions_log", "performance_logs", "api_tokens"):
        assert await db.fetchval("SELECT to_regclass($1) IS NOT NULL", table), table

"""Versioned schema migrations, applied in order under an advisory lock."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# One lock for every instance of the gateway: those starting together queue here.
ADVISORY_LOCK_KEY = 7_411_290_530_118
MIGRATION_TIMEOUT = 600.0
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """The database's schema history does not match the migration files."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read ``NNNN_name.sql`` files in version order."""
    found = []
    for path in sorted(directory.iterdir()):
        match = _NAME.match(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


@functools.cache
def _packaged() -> tuple[Migration, ...]:
    """The migrations shipped with this package, read once: they cannot change while it runs."""
    return tuple(load_migrations())


_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def applied_versions(conn: asyncpg.Connection) -> dict[int, str]:
    """Version -> checksum of every applied migration (empty when none ran)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def pending_migrations(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Versions present as files but not applied."""
    migrations = list(_packaged()) if migrations is None else migrations
    applied = await applied_versions(conn)
    return [m.version for m in migrations if m.version not in applied]


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply every pending migration; return the versions applied by this call."""
    migrations = list(_packaged()) if migrations is None else migrations
    # Migrations may wait for another instance's lock and run long statements: not bound by the
    # pool's per-query deadline, which is for calls made while serving.
    await conn.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY, timeout=MIGRATION_TIMEOUT)
    try:
        await conn.execute(_CREATE_HISTORY)
        applied = await applied_versions(conn)
        done = []
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} changed after it was applied; "
                        "write a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql, timeout=MIGRATION_TIMEOUT)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)

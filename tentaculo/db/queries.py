"""Every SQL statement of the gateway, as functions taking a connection or pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

Executor = asyncpg.Connection | asyncpg.Pool

AUDIT_COLUMNS = (
    "ts",
    "correlation_id",
    "token_name",
    "method",
    "route",
    "path",
    "status",
    "duration_ms",
    "client",
    "instance",
    "service",
)


async def ping(db: Executor) -> None:
    """Round-trip to the server."""
    await db.fetchval("SELECT 1")


async def copy_audit_rows(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write audit rows with COPY: one round trip per batch."""
    await conn.copy_records_to_table("audit_logs", records=rows, columns=AUDIT_COLUMNS)


async def audit_rows_for(db: Executor, correlation_id: str) -> list[asyncpg.Record]:
    """Audit rows of one correlation id, oldest first."""
    return await db.fetch(
        "SELECT * FROM audit_logs WHERE correlation_id = $1 ORDER BY ts, id", correlation_id
    )


async def insert_token(
    db: Executor, name: str, token_hash: bytes, scopes: Sequence[str], created_by: str | None
) -> int:
    """Store a new token's hash; raises UniqueViolationError if an active token has that name."""
    return await db.fetchval(
        "INSERT INTO api_tokens (name, token_hash, scopes, created_by) VALUES ($1, $2, $3, $4) RETURNING id",
        name,
        token_hash,
        list(scopes),
        created_by,
    )


async def find_active_token(db: Executor, token_hash: bytes) -> asyncpg.Record | None:
    """The active token with this hash, if any."""
    return await db.fetchrow(
        "SELECT name, scopes FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL", token_hash
    )


async def list_tokens(db: Executor) -> list[asyncpg.Record]:
    """Every token, newest first, without hashes."""
    return await db.fetch(
        "SELECT name, scopes, created_at, revoked_at, created_by FROM api_tokens ORDER BY created_at DESC, id DESC"
    )


async def revoke_token(db: Executor, name: str) -> int:
    """Revoke the active token named ``name``; return how many were revoked."""
    status = await db.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
    )
    return int(status.split()[-1])


async def count_active_tokens(db: Executor) -> int:
    """How many tokens are not revoked."""
    return await db.fetchval("SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL")


async def shared_secret(db: Executor, name: str, candidate: bytes) -> bytes:
    """The secret called ``name``, storing ``candidate`` if none exists yet (first writer wins)."""
    stored = await db.fetchval(
        "INSERT INTO gateway_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING value",
        name,
        candidate,
    )
    if stored is None:
        # Another instance won the race; its row is committed and visible to a new statement.
        stored = await db.fetchval("SELECT value FROM gateway_secrets WHERE name = $1", name)
    return bytes(stored)


CHAT_ACTION_COLUMNS = (
    "ts",
    "correlation_id",
    "message_id",
    "session_id",
    "token_name",
    "provider",
    "model",
    "status",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "degraded",
    "streamed",
    "attempts",
    "error",
    "instance",
)


_CHAT_ACTION_TYPES = ("timestamptz", "text", "uuid", "text", "text", "text", "text", "text", "text", "int4",
                      "int4", "float8", "bool", "bool", "text", "text", "text")
# One statement per batch: each column travels as an array and unnest() turns them back into rows.
_CHAT_ACTION_INSERT = "INSERT INTO copilot_actions_log ({}) SELECT {} FROM unnest({}) AS t({})".format(
    ", ".join(CHAT_ACTION_COLUMNS),
    ", ".join(f"{c}::jsonb" if c == "attempts" else c for c in CHAT_ACTION_COLUMNS),
    ", ".join(f"${i}::{t}[]" for i, t in enumerate(_CHAT_ACTION_TYPES, 1)),
    ", ".join(CHAT_ACTION_COLUMNS),
)


async def insert_chat_actions(db: Executor, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write chat action rows (``attempts`` as JSON text) in one statement."""
    await db.execute(_CHAT_ACTION_INSERT, *(list(column) for column in zip(*rows)))


async def chat_actions_for(db: Executor, correlation_id: str) -> list[asyncpg.Record]:
    """Chat action rows of one correlation id, oldest first."""
    return await db.fetch(
        "SELECT * FROM copilot_actions_log WHERE correlation_id = $1 ORDER BY ts, id", correlation_id
    )

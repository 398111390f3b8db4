"""Every SQL statement of the gateway, as functions taking a connection or pool."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool

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
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT * FROM audit_logs WHERE correlation_id = $1 ORDER BY ts, id", correlation_id
    )
    return rows


async def insert_token(
    db: Executor,
    name: str,
    token_hash: bytes,
    scopes: Sequence[str],
    created_by: str | None,
    *,
    expires_at: datetime | None = None,
    requests_per_minute: int | None = None,
) -> int:
    """Store a new token's hash; raises UniqueViolationError if an active token has that name.

    A token of that name that has expired gives the name up: it is marked revoked at its expiry.
    """
    # Its own statement: the unique index would still see the expired row within one statement.
    await db.execute(
        "UPDATE api_tokens SET revoked_at = expires_at WHERE name = $1 AND revoked_at IS NULL AND expires_at <= now()",
        name,
    )
    token_id: int = await db.fetchval(
        "INSERT INTO api_tokens (name, token_hash, scopes, created_by, expires_at, requests_per_minute)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        name,
        token_hash,
        list(scopes),
        created_by,
        expires_at,
        requests_per_minute,
    )
    return token_id


async def find_active_token(db: Executor, token_hash: bytes) -> asyncpg.Record | None:
    """The unrevoked token with this hash, if any, expired or not (the caller tells them apart)."""
    return await db.fetchrow(
        "SELECT id, name, scopes, expires_at, requests_per_minute FROM api_tokens"
        " WHERE token_hash = $1 AND (revoked_at IS NULL OR revoked_at = expires_at)",
        token_hash,
    )


async def token_state(db: Executor, token_id: int) -> str:
    """``active``, ``revoked``, ``expired`` or ``unknown`` (no such row) for the token row ``token_id``."""
    state = await db.fetchval(
        """
        SELECT CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
                    WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired'
                    ELSE 'active' END
          FROM api_tokens WHERE id = $1
        """,
        token_id,
    )
    return str(state) if state is not None else "unknown"


async def list_tokens(db: Executor) -> list[asyncpg.Record]:
    """Every token, newest first, without hashes; ``state`` is active, expired or revoked."""
    rows: list[asyncpg.Record] = await db.fetch(
        """
        SELECT name, scopes, created_at, revoked_at, created_by, expires_at, last_used_at, requests_per_minute,
               CASE WHEN revoked_at IS NOT NULL AND (expires_at IS NULL OR revoked_at < expires_at) THEN 'revoked'
                    WHEN expires_at <= now() THEN 'expired'
                    ELSE 'active' END AS state
        FROM api_tokens ORDER BY created_at DESC, id DESC
        """
    )
    return rows


async def revoke_token(db: Executor, name: str) -> list[int]:
    """Revoke the active token named ``name``; return the ids of the rows revoked (none: no such token)."""
    rows = await db.fetch(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING id", name
    )
    return [row["id"] for row in rows]


async def touch_tokens(db: Executor, token_ids: Sequence[int]) -> None:
    """Set ``last_used_at`` of these token rows to now, in one statement."""
    await db.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = ANY($1::bigint[])", list(token_ids))


async def count_active_tokens(db: Executor) -> int:
    """How many tokens are not revoked."""
    count: int = await db.fetchval("SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL")
    return count


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
# Columns sent as JSON text and stored as jsonb.
CHAT_ACTION_JSON_COLUMNS = ("attempts",)


_CHAT_ACTION_TYPES = ("timestamptz", "text", "uuid", "text", "text", "text", "text", "text", "text", "int4",
                      "int4", "float8", "bool", "bool", "text", "text", "text")
# One statement per batch: each column travels as an array and unnest() turns them back into rows.
_CHAT_ACTION_INSERT = "INSERT INTO copilot_actions_log ({}) SELECT {} FROM unnest({}) AS t({})".format(
    ", ".join(CHAT_ACTION_COLUMNS),
    ", ".join(f"{c}::jsonb" if c in CHAT_ACTION_JSON_COLUMNS else c for c in CHAT_ACTION_COLUMNS),
    ", ".join(f"${i}::{t}[]" for i, t in enumerate(_CHAT_ACTION_TYPES, 1)),
    ", ".join(CHAT_ACTION_COLUMNS),
)


async def insert_chat_actions(db: Executor, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write chat action rows (``attempts`` as JSON text) in one statement."""
    await db.execute(_CHAT_ACTION_INSERT, *(list(column) for column in zip(*rows, strict=False)))


async def audit_trace(db: Executor, correlation_id: str, limit: int) -> list[asyncpg.Record]:
    """The first ``limit`` audit rows of one correlation id, oldest first."""
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT ts, method, route, path, status, duration_ms, token_name, client, instance, service"
        " FROM audit_logs WHERE correlation_id = $1 ORDER BY ts, id LIMIT $2",
        correlation_id,
        limit,
    )
    return rows


async def chat_trace(db: Executor, correlation_id: str, limit: int) -> list[asyncpg.Record]:
    """The first ``limit`` chat action rows of one correlation id, oldest first."""
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT ts, message_id, session_id, token_name, provider, model, status, finish_reason, prompt_tokens,"
        " completion_tokens, latency_ms, degraded, streamed, attempts, error, instance"
        " FROM copilot_actions_log WHERE correlation_id = $1 ORDER BY ts, id LIMIT $2",
        correlation_id,
        limit,
    )
    return rows


PERFORMANCE_COLUMNS = (
    "bucket_start",
    "bucket_seconds",
    "instance",
    "route",
    "method",
    "status_class",
    "provider",
    "count",
    "error_count",
    "latency_sum_ms",
    "latency_max_ms",
    "histogram",
)
# Serialises rollup maintenance across instances (not the migration lock).
PERFORMANCE_MAINTENANCE_LOCK = 7_411_290_530_119


async def copy_performance_rows(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write metric rollup rows (columns of ``PERFORMANCE_COLUMNS``) with COPY."""
    await conn.copy_records_to_table("performance_logs", records=rows, columns=PERFORMANCE_COLUMNS)


async def performance_window(db: Executor, since: Any) -> list[asyncpg.Record]:
    """Every instance's rollups from ``since`` on, summed per (route, method, status class, provider).

    Histograms are added bucket by bucket; ``provider`` is '' for request rows.
    """
    rows: list[asyncpg.Record] = await db.fetch(
        """
        WITH w AS (
            SELECT route, method, status_class, coalesce(provider, '') AS provider, instance, count, error_count,
                   latency_sum_ms, latency_max_ms, histogram
            FROM performance_logs WHERE bucket_start >= $1
        ), h AS (
            SELECT route, method, status_class, provider, array_agg(n ORDER BY i) AS histogram
            FROM (
                SELECT route, method, status_class, provider, u.i, sum(u.n)::bigint AS n
                FROM w, unnest(w.histogram) WITH ORDINALITY AS u(n, i)
                GROUP BY 1, 2, 3, 4, 5
            ) per_bucket
            GROUP BY 1, 2, 3, 4
        )
        SELECT t.*, h.histogram FROM (
            SELECT route, method, status_class, provider, sum(count)::bigint AS count,
                   sum(error_count)::bigint AS errors, sum(latency_sum_ms) AS latency_sum_ms,
                   max(latency_max_ms) AS latency_max_ms, array_agg(DISTINCT instance) AS instances
            FROM w GROUP BY 1, 2, 3, 4
        ) t JOIN h USING (route, method, status_class, provider)
        """,
        since,
    )
    return rows


async def try_performance_maintenance_lock(conn: asyncpg.Connection) -> bool:
    """Take the rollup maintenance lock for the current transaction, if no other instance holds it."""
    taken: bool = await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PERFORMANCE_MAINTENANCE_LOCK)
    return taken


async def compact_performance_logs(conn: asyncpg.Connection, before: Any, bucket_seconds: int) -> int:
    """Merge rollups finer than ``bucket_seconds`` that start before ``before`` into coarser ones.

    Sums are kept exactly (histograms bucket by bucket); returns how many coarser rows were written.
    """
    status = await conn.execute(
        """
        WITH moved AS (
            DELETE FROM performance_logs WHERE bucket_start < $1 AND bucket_seconds < $2
            RETURNING bucket_start, instance, route, method, status_class, coalesce(provider, '') AS provider,
                      count, error_count, latency_sum_ms, latency_max_ms, histogram
        ), keyed AS (
            SELECT to_timestamp(floor(extract(epoch FROM bucket_start) / $2) * $2) AS b, * FROM moved
        ), h AS (
            SELECT b, instance, route, method, status_class, provider, array_agg(n ORDER BY i) AS histogram
            FROM (
                SELECT b, instance, route, method, status_class, provider, u.i, sum(u.n)::bigint AS n
                FROM keyed, unnest(keyed.histogram) WITH ORDINALITY AS u(n, i)
                GROUP BY 1, 2, 3, 4, 5, 6, 7
            ) per_bucket
            GROUP BY 1, 2, 3, 4, 5, 6
        )
        INSERT INTO performance_logs (bucket_start, bucket_seconds, instance, route, method, status_class, provider,
                                      count, error_count, latency_sum_ms, latency_max_ms, histogram)
        SELECT t.b, $2, t.instance, t.route, t.method, t.status_class, nullif(t.provider, ''), t.count, t.errors,
               t.latency_sum_ms, t.latency_max_ms, h.histogram
        FROM (
            SELECT b, instance, route, method, status_class, provider, sum(count) AS count,
                   sum(error_count) AS errors, sum(latency_sum_ms) AS latency_sum_ms,
                   max(latency_max_ms) AS latency_max_ms
            FROM keyed GROUP BY 1, 2, 3, 4, 5, 6
        ) t JOIN h USING (b, instance, route, method, status_class, provider)
        """,
        before,
        bucket_seconds,
    )
    return int(status.split()[-1])


async def delete_performance_logs(conn: asyncpg.Connection, before: Any) -> int:
    """Drop rollups of buckets that start before ``before``; returns how many."""
    status = await conn.execute("DELETE FROM performance_logs WHERE bucket_start < $1", before)
    return int(status.split()[-1])


# Instances LISTEN here: a change of service_configs made elsewhere (the CLI) reloads them at once.
SERVICE_CONFIGS_CHANNEL = "tentaculo_service_configs"


async def list_service_configs(db: Executor) -> list[asyncpg.Record]:
    """Every VX11 module's configuration, by name."""
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT name, display_name, role, base_url, health_path, enabled, description, updated_at"
        " FROM service_configs ORDER BY name"
    )
    return rows


async def list_topology_edges(db: Executor) -> list[asyncpg.Record]:
    """Every edge between modules."""
    rows: list[asyncpg.Record] = await db.fetch("SELECT source, target, kind FROM topology_edges ORDER BY source, target")
    return rows


async def set_service_config(
    conn: asyncpg.Connection,
    name: str,
    *,
    url: str | None = None,
    clear_url: bool = False,
    health_path: str | None = None,
    enabled: bool | None = None,
    role: str | None = None,
    display_name: str | None = None,
    description: str | None = None,
) -> tuple[asyncpg.Record, bool]:
    """Create or change a module (only the fields given) and tell running instances; (row, created)."""
    async with conn.transaction():
        row = await conn.fetchrow(
            """
            INSERT INTO service_configs (name, display_name, role, base_url, health_path, enabled, description)
            VALUES ($1, coalesce($2, $1), coalesce($3, 'module'), $4, coalesce($5, '/health'),
                    coalesce($6, true), coalesce($7, ''))
            ON CONFLICT (name) DO UPDATE SET
                display_name = coalesce($2, service_configs.display_name),
                role = coalesce($3, service_configs.role),
                base_url = CASE WHEN $8 THEN $4 ELSE service_configs.base_url END,
                health_path = coalesce($5, service_configs.health_path),
                enabled = coalesce($6, service_configs.enabled),
                description = coalesce($7, service_configs.description),
                updated_at = now()
            RETURNING name, display_name, role, base_url, health_path, enabled, description, (xmax = 0) AS created
            """,
            name,
            display_name,
            role,
            None if clear_url else url,
            health_path,
            enabled,
            description,
            clear_url or url is not None,
        )
        await conn.execute("SELECT pg_notify($1, $2)", SERVICE_CONFIGS_CHANNEL, name)
    return row, bool(row["created"])


async def add_topology_edge(conn: asyncpg.Connection, source: str, target: str, kind: str) -> bool:
    """Add an edge (or change its kind) and tell running instances; True when it is new.

    Raises ForeignKeyViolationError when either module does not exist.
    """
    async with conn.transaction():
        created = await conn.fetchval(
            """
            INSERT INTO topology_edges (source, target, kind) VALUES ($1, $2, $3)
            ON CONFLICT (source, target) DO UPDATE SET kind = EXCLUDED.kind
            RETURNING (xmax = 0)
            """,
            source, target, kind,
        )
        await conn.execute("SELECT pg_notify($1, $2)", SERVICE_CONFIGS_CHANNEL, source)
    return bool(created)


async def remove_topology_edge(conn: asyncpg.Connection, source: str, target: str) -> bool:
    """Remove an edge and tell running instances; False when there was none."""
    async with conn.transaction():
        status: str = await conn.execute("DELETE FROM topology_edges WHERE source = $1 AND target = $2", source, target)
        removed = status.split()[-1] != "0"
        if removed:
            await conn.execute("SELECT pg_notify($1, $2)", SERVICE_CONFIGS_CHANNEL, source)
    return removed


async def list_feature_flags(db: Executor) -> list[asyncpg.Record]:
    """Every feature flag as stored."""
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT name, status, reason, description, updated_at, updated_by FROM feature_flags ORDER BY name"
    )
    return rows


async def update_feature_flag(
    db: Executor, name: str, status: str, reason: str | None, updated_by: str | None
) -> asyncpg.Record | None:
    """Set a flag's status; the previous status comes back too. None when no flag has that name."""
    return await db.fetchrow(
        """
        UPDATE feature_flags AS f SET status = $2, reason = $3, updated_by = $4, updated_at = now()
        FROM (SELECT name, status FROM feature_flags WHERE name = $1 FOR UPDATE) AS old
        WHERE f.name = old.name
        RETURNING f.name, f.status, f.reason, f.description, f.updated_at, f.updated_by, old.status AS previous_status
        """,
        name,
        status,
        reason,
        updated_by,
    )


_RISK_RULE_COLUMNS = "id, module, method, pattern, risk, reason, locked, created_at, created_by"


async def list_risk_rules(db: Executor) -> list[asyncpg.Record]:
    """Every risk rule, oldest first."""
    rows: list[asyncpg.Record] = await db.fetch(f"SELECT {_RISK_RULE_COLUMNS} FROM risk_rules ORDER BY id")
    return rows


async def upsert_risk_rule(
    db: Executor, module: str, method: str, pattern: str, risk: str, reason: str, created_by: str
) -> tuple[asyncpg.Record, bool]:
    """Add a rule, or change the risk and reason of the one with this module, method and pattern;
    (row, created). A locked rule keeps its risk: it only ever rises."""
    row = await db.fetchrow(
        f"""
        INSERT INTO risk_rules (module, method, pattern, risk, reason, created_by) VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (module, method, pattern) DO UPDATE SET
            risk = CASE WHEN risk_rules.locked THEN risk_rules.risk ELSE EXCLUDED.risk END,
            reason = CASE WHEN risk_rules.locked THEN risk_rules.reason ELSE EXCLUDED.reason END,
            created_by = CASE WHEN risk_rules.locked THEN risk_rules.created_by ELSE EXCLUDED.created_by END,
            created_at = CASE WHEN risk_rules.locked THEN risk_rules.created_at ELSE now() END
        RETURNING {_RISK_RULE_COLUMNS}, (xmax = 0) AS created
        """,
        module, method, pattern, risk, reason, created_by,
    )
    return row, bool(row["created"])


async def delete_risk_rule(db: Executor, rule_id: int) -> asyncpg.Record | None:
    """Remove an unlocked rule; its row, or None when no unlocked rule has this id."""
    return await db.fetchrow(
        f"DELETE FROM risk_rules WHERE id = $1 AND NOT locked RETURNING {_RISK_RULE_COLUMNS}", rule_id
    )


# A risk rule changed outside the gateway (``tentaculo policy``): the payload is a JSON notice.
RISK_RULES_CHANNEL = "tentaculo_risk_rules"


async def notify_risk_rules(db: Executor, notice: str) -> None:
    """Tell every running instance listening on RISK_RULES_CHANNEL that the rules changed."""
    await db.execute("SELECT pg_notify($1, $2)", RISK_RULES_CHANNEL, notice)


async def risk_rule(db: Executor, rule_id: int) -> asyncpg.Record | None:
    """One rule by id."""
    return await db.fetchrow(f"SELECT {_RISK_RULE_COLUMNS} FROM risk_rules WHERE id = $1", rule_id)

"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tentaculo import __version__, keys
from tentaculo.auth.tokens import PUBLIC, requires
from tentaculo.db import queries
from tentaculo.db.migrate import pending_migrations
from tentaculo.health import Status
from tentaculo.http.jsonio import json_response
from tentaculo.status.dependencies import timed_check

CHECK_TIMEOUT = 2.0


@requires(PUBLIC)
async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers. No I/O."""
    return json_response({"status": "on", "service": "tentaculo", "version": __version__})


async def _timed(check: Callable[[], Awaitable[str | None]]) -> dict[str, Any]:
    problem, latency = await timed_check(check, CHECK_TIMEOUT)
    if problem is None:
        return {"status": "on", "latency_ms": latency, "reason": None}
    return {"status": "error", "latency_ms": latency, "reason": problem}


def audit_check(app: web.Application) -> dict[str, Any]:
    """The audit writer's state; informative only: readiness does not wait on it."""
    writer = app[keys.AUDIT]
    audit = writer.snapshot()
    reasons = []
    if audit["last_error"]:
        reasons.append(f"writes failing, {audit['queued']} rows buffered")
    elif writer.stalled():
        # A silent partition raises nothing for a while: the oldest row's age says writes stopped.
        reasons.append(f"writes stalled: the oldest of {audit['queued']} queued rows waits since "
                       f"{audit['oldest_queued_s']:.1f} s")
    if audit["dropped"]:
        reasons.append(f"{audit['dropped']} rows dropped")
    status: Status = "on" if not reasons else ("error" if audit["dropped"] else "degraded")
    return {
        "status": status,
        "reason": "; ".join(reasons) or None,
        # Rows escaped or marked for their content are written, not lost: informative, never a failure.
        **{k: audit[k] for k in ("queued", "written", "dropped", "capacity", "escaped", "marked",
                                 "oldest_queued_s")},
    }


@requires(PUBLIC)
async def ready(request: web.Request) -> web.Response:
    """Readiness: PostgreSQL, Redis and the schema, each with its latency and reason.

    ``audit`` and ``auth_limiter`` are informative: a limiter counting per instance still limits.
    """
    app = request.app
    pool = app[keys.DB_POOL]

    async def postgresql() -> str | None:
        await queries.ping(pool)
        return None

    async def redis() -> str | None:
        await app[keys.REDIS].ping()
        return None

    async def migrations() -> str | None:
        async with pool.acquire() as conn:
            pending = await pending_migrations(conn)
        return f"pending migrations: {pending}" if pending else None

    names = ("postgresql", "redis", "migrations")
    results = await asyncio.gather(_timed(postgresql), _timed(redis), _timed(migrations))
    checks = dict(zip(names, results, strict=False))
    failing = [name for name, check in checks.items() if check["status"] != "on"]
    body: dict[str, Any] = {"status": "on" if not failing else "error", "checks": checks}
    checks["audit"] = audit_check(app)
    if checks["redis"]["status"] != "on":
        app[keys.RATE_COUNTER].redis_unreachable(checks["redis"]["reason"] or "no answer")
    checks["auth_limiter"] = app[keys.AUTH_LIMITER].readiness()
    if app[keys.LIFECYCLE].draining:
        body.update(status="off", reason="draining: the instance is shutting down")
    elif failing:
        body["reason"] = "failing: " + ", ".join(failing)
    return json_response(body, status=200 if body["status"] == "on" else 503)

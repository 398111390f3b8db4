"""Who am I, and token management for admins."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web

from tentaculo import keys
from tentaculo.auth.actions import Action, guard
from tentaculo.auth.risk import REVOKE_TOKEN, Verdict
from tentaculo.auth.tokens import (
    MAX_EXPIRES_IN,
    MAX_REQUESTS_PER_MINUTE,
    hash_token,
    new_token,
    ordered_scopes,
    parse_scopes,
    requires,
)
from tentaculo.db import queries
from tentaculo.http.errors import Problem, ValidationFailed
from tentaculo.http.jsonio import json_response, read_json_object

TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# What TENTACULO_ADMIN_TOKEN is called in audit and trace rows (auth.TokenStore). Only the first-run
# bootstrap (cli._bootstrap_admin) may give a database token this name: it is that token.
BOOTSTRAP_TOKEN_NAME = "admin"


def reserved_name(name: str) -> bool:
    """Whether a token made by hand may not take ``name``: it would pass for the bootstrap token."""
    return name.lower() == BOOTSTRAP_TOKEN_NAME
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})")


@requires("read")
async def whoami(request: web.Request) -> web.Response:
    """The calling token's name and scopes."""
    principal = request[keys.PRINCIPAL]
    return json_response(
        {
            "name": principal.name,
            "scopes": ordered_scopes(principal.scopes),
            "correlation_id": request[keys.CORRELATION_ID],
            "instance": request.app[keys.SETTINGS].instance,
            "expires_at": datetime.fromtimestamp(principal.expires, UTC) if principal.expires is not None else None,
            "requests_per_minute": principal.requests_per_minute,
        }
    )


@requires("admin")
async def list_tokens(request: web.Request) -> web.Response:
    """Every token (never its secret or hash)."""
    rows = await queries.list_tokens(request.app[keys.DB_POOL])
    return json_response({"tokens": [_token_view(r) for r in rows]})


@requires("admin")
async def create_token(request: web.Request) -> web.Response:
    """Create a token; its secret appears in this response only."""
    data = await read_json_object(request)
    errors = []
    name = data.get("name")
    if not isinstance(name, str) or not TOKEN_NAME.fullmatch(name):
        errors.append({"field": "name", "message": "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"})
    raw_scopes = data.get("scopes")
    scopes: frozenset[str] = frozenset()
    if not isinstance(raw_scopes, list) or not all(isinstance(s, str) for s in raw_scopes):
        errors.append({"field": "scopes", "message": "a list of scope names"})
    else:
        try:
            scopes = parse_scopes(",".join(raw_scopes))
        except ValueError as exc:
            errors.append({"field": "scopes", "message": str(exc)})
    expires_at, requests_per_minute = _token_limits(data, errors)
    if errors or not isinstance(name, str):
        raise ValidationFailed(errors)
    if reserved_name(name):
        raise Problem("conflict", f"the name {name!r} is reserved for the bootstrap token", field="name")
    token = new_token()
    try:
        await queries.insert_token(
            request.app[keys.DB_POOL], name, hash_token(token), ordered_scopes(scopes), request[keys.PRINCIPAL].name,
            expires_at=expires_at, requests_per_minute=requests_per_minute,
        )
    except asyncpg.UniqueViolationError:
        # The request is well formed; it clashes with what exists, which a revocation can change.
        raise Problem("conflict", f"an active token is named {name!r}; revoke it first", field="name") from None
    return json_response({"name": name, "scopes": ordered_scopes(scopes), "token": token, "expires_at": expires_at,
                          "requests_per_minute": requests_per_minute}, status=201,
                         headers={"Cache-Control": "no-store"})  # the one answer that holds the secret


@requires("admin")
async def revoke_token(request: web.Request) -> web.Response:
    """Revoke the active token with this name (high risk: confirmed first)."""
    name = request.match_info["name"]
    action = await guard(request, "tentaculo", Verdict("high", REVOKE_TOKEN), scope="admin")
    # Shielded: a client leaving mid-call must not leave the row revoked but the cache and streams not.
    # The outcome is published when the revocation itself ends, whether or not the client waited.
    revoking = asyncio.ensure_future(_revoke(request.app, name))
    if action is not None:
        revoking.add_done_callback(lambda task: _outcome(action, task))
    if not await asyncio.shield(revoking):
        raise Problem("not_found", f"no active token named {name!r}")
    return web.Response(status=204)


def _outcome(action: Action, task: asyncio.Future[bool]) -> None:
    """Publish how a confirmed revocation ended: performed (204), no such token (404) or failed."""
    if task.cancelled():
        action.failed(asyncio.CancelledError())
    elif (error := task.exception()) is not None:
        action.failed(error)
    else:
        action.done(204 if task.result() else 404)


async def _revoke(app: web.Application, name: str) -> bool:
    revoked = await queries.revoke_token(app[keys.DB_POOL], name)
    if revoked:
        app[keys.TOKENS].invalidate()
        # Its open event streams end now here; other instances end theirs within the token cache period.
        app[keys.EVENTS].end_streams_of(revoked)
    return bool(revoked)


def _token_view(row: asyncpg.Record) -> dict[str, object]:
    return {
        "name": row["name"],
        "scopes": ordered_scopes(row["scopes"]),
        "created_at": row["created_at"],
        "revoked_at": row["revoked_at"],
        "created_by": row["created_by"],
        "expires_at": row["expires_at"],
        "last_used_at": row["last_used_at"],
        "requests_per_minute": row["requests_per_minute"],
        "state": row["state"],
    }




def _positive_int(value: object, most: int) -> int | None:
    """``value`` when it is an integer in 1..most (JSON true is not 1), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= most:
        return value
    return None


def _token_limits(data: dict[str, Any], errors: list[dict[str, str]]) -> tuple[datetime | None, int | None]:
    """``expires_in`` or ``expires_at`` (not both) and ``requests_per_minute`` of a new token; errors named."""
    expires_at: datetime | None = None
    if "expires_in" in data and "expires_at" in data:
        errors.append({"field": "expires_at", "message": "give expires_in or expires_at, not both"})
    elif data.get("expires_in") is not None:
        seconds = _positive_int(data["expires_in"], MAX_EXPIRES_IN)
        if seconds is None:
            errors.append({"field": "expires_in", "message": f"seconds: an integer from 1 to {MAX_EXPIRES_IN}"})
        else:
            expires_at = datetime.now(UTC) + timedelta(seconds=seconds)
    elif data.get("expires_at") is not None:
        expires_at = _future_instant(data["expires_at"], errors)
    requests_per_minute = None
    if data.get("requests_per_minute") is not None:
        requests_per_minute = _positive_int(data["requests_per_minute"], MAX_REQUESTS_PER_MINUTE)
        if requests_per_minute is None:
            errors.append({"field": "requests_per_minute",
                           "message": f"an integer from 1 to {MAX_REQUESTS_PER_MINUTE}"})
    return expires_at, requests_per_minute


def _future_instant(value: object, errors: list[dict[str, str]]) -> datetime | None:
    """An RFC 3339 date-time with an offset, in the future and at most MAX_EXPIRES_IN away."""
    when = None
    if isinstance(value, str) and RFC3339.fullmatch(value):
        try:
            when = datetime.fromisoformat(value.upper())
        except ValueError:
            when = None
    if when is None or when.tzinfo is None:
        errors.append({"field": "expires_at", "message": "an RFC 3339 date-time with an offset, e.g. 2030-01-31T12:00:00Z"})
        return None
    now = datetime.now(UTC)
    if when <= now:
        errors.append({"field": "expires_at", "message": "must be in the future"})
        return None
    if when > now + timedelta(seconds=MAX_EXPIRES_IN):
        errors.append({"field": "expires_at", "message": "at most ten years from now"})
        return None
    return when

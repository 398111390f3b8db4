"""Who am I, and token management for admins."""

from __future__ import annotations

import asyncio
import re

import asyncpg
from aiohttp import web

from tentaculo import keys
from tentaculo.auth import hash_token, new_token, ordered_scopes, parse_scopes, requires
from tentaculo.db import queries
from tentaculo.errors import Problem, ValidationFailed
from tentaculo.jsonio import json_response, read_json_object

TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


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
    if errors or not isinstance(name, str):
        raise ValidationFailed(errors)
    token = new_token()
    try:
        await queries.insert_token(
            request.app[keys.DB_POOL], name, hash_token(token), ordered_scopes(scopes), request[keys.PRINCIPAL].name
        )
    except asyncpg.UniqueViolationError:
        raise ValidationFailed([{"field": "name", "message": "an active token has this name"}]) from None
    return json_response({"name": name, "scopes": ordered_scopes(scopes), "token": token}, status=201,
                         headers={"Cache-Control": "no-store"})  # the one answer that holds the secret


@requires("admin")
async def revoke_token(request: web.Request) -> web.Response:
    """Revoke the active token with this name."""
    name = request.match_info["name"]
    # Shielded: a client leaving mid-call must not leave the row revoked but the cache and streams not.
    if not await asyncio.shield(_revoke(request.app, name)):
        raise Problem("not_found", f"no active token named {name!r}")
    return web.Response(status=204)


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
    }

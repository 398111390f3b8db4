"""Scoped tokens on the gateway: missing, wrong, revoked, query-string, scope checks."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tentaculo.auth.tokens import TokenStore, hash_token, new_token
from tests.confirm_helpers import confirmed
from tests.helpers import wait_for


async def test_missing_token_is_401_auth_required(gateway) -> None:
    resp = await gateway.get("/operator/api/whoami")
    assert resp.status == 401
    body = await resp.json()
    assert body["code"] == "auth_required"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_unknown_token_is_401_invalid_token(gateway) -> None:
    resp = await gateway.get("/operator/api/whoami", headers={"X-VX11-Token": new_token()})
    assert resp.status == 401
    assert (await resp.json())["code"] == "invalid_token"


async def test_malformed_token_is_401_invalid_token(gateway) -> None:
    for bad in ("short", "has spaces but is long enough", "ü" * 20):
        resp = await gateway.get("/operator/api/whoami", headers={"Authorization": f"Bearer {bad}"})
        assert resp.status == 401, bad
        assert (await resp.json())["code"] == "invalid_token"


async def test_token_in_query_string_is_refused_even_if_valid(gateway, admin_headers) -> None:
    token = admin_headers["X-VX11-Token"]
    for name in ("token", "access_token", "api_key"):
        resp = await gateway.get(f"/operator/api/whoami?{name}={token}")
        assert resp.status == 401
        body = await resp.json()
        assert body["code"] == "invalid_token"
        assert token not in await resp.text()


async def test_database_token_with_scope_and_bearer(gateway, make_token) -> None:
    token = await make_token("read", name=f"reader-{uuid.uuid4().hex[:6]}")
    resp = await gateway.get("/operator/api/whoami", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    body = await resp.json()
    assert body["scopes"] == ["read"]
    assert token not in await resp.text()


async def test_missing_scope_is_403_forbidden(gateway, make_token) -> None:
    token = await make_token("read")
    resp = await gateway.get("/operator/api/tokens", headers={"X-VX11-Token": token})
    assert resp.status == 403
    body = await resp.json()
    assert body["code"] == "forbidden" and body["required_scope"] == "admin"


async def test_revoked_token_is_refused(gateway, admin_headers) -> None:
    name = f"temp-{uuid.uuid4().hex[:6]}"
    created = await gateway.post("/operator/api/tokens", json={"name": name, "scopes": ["read"]}, headers=admin_headers)
    assert created.status == 201
    token = (await created.json())["token"]
    assert (await gateway.get("/operator/api/whoami", headers={"X-VX11-Token": token})).status == 200

    revoked = await confirmed(gateway, "DELETE", f"/operator/api/tokens/{name}", headers=admin_headers)
    assert revoked.status == 204
    resp = await gateway.get("/operator/api/whoami", headers={"X-VX11-Token": token})
    assert resp.status == 401
    assert (await resp.json())["code"] == "invalid_token"


async def test_tokens_are_stored_hashed_and_listed_without_secrets(gateway, admin_headers, db) -> None:
    name = f"listed-{uuid.uuid4().hex[:6]}"
    created = await gateway.post(
        "/operator/api/tokens", json={"name": name, "scopes": ["read", "chat"]}, headers=admin_headers
    )
    token = (await created.json())["token"]
    stored = await db.fetchrow("SELECT token_hash, scopes FROM api_tokens WHERE name = $1", name)
    assert bytes(stored["token_hash"]) == hash_token(token)
    assert sorted(stored["scopes"]) == ["chat", "read"]
    listing = await gateway.get("/operator/api/tokens", headers=admin_headers)
    text = await listing.text()
    assert name in text and token not in text and "token_hash" not in text


async def test_create_token_validation_errors_name_fields(gateway, admin_headers) -> None:
    resp = await gateway.post("/operator/api/tokens", json={"name": "", "scopes": ["root"]}, headers=admin_headers)
    assert resp.status == 422
    body = await resp.json()
    assert body["code"] == "validation_error"
    assert {e["field"] for e in body["errors"]} == {"name", "scopes"}


async def test_token_store_cache_serves_while_database_is_away(settings) -> None:
    """A token seen a moment ago keeps working when PostgreSQL goes away."""
    import asyncpg

    from tentaculo.db import queries
    from tests.faults import proxy_postgres

    proxy, dsn = await proxy_postgres(settings.database_url)
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
    token = new_token()
    await queries.insert_token(pool, f"cached-{uuid.uuid4().hex[:6]}", hash_token(token), ["read"], "tests")
    now = [0.0]
    store = TokenStore(pool, admin_token=None, cache_seconds=1.0, clock=lambda: now[0])
    assert (await store.authenticate(token)) is not None
    await proxy.cut()
    now[0] = 5.0  # cache entry expired: the database is asked, fails, the stale answer is used
    principal = await store.authenticate(token)
    assert principal is not None and principal.scopes == frozenset({"read"})
    await proxy.restore()
    await pool.close()
    await proxy.close()


async def test_token_name_with_nul_or_odd_characters_is_a_validation_error(gateway, admin_headers) -> None:
    for name in ("a\x00b", "emoji-\U0001F600", " lead", "x" * 65):
        resp = await gateway.post("/operator/api/tokens", json={"name": name, "scopes": ["read"]}, headers=admin_headers)
        assert resp.status == 422, name
        assert (await resp.json())["errors"][0]["field"] == "name"


async def test_the_bootstrap_token_name_is_reserved(gateway, admin_headers, db) -> None:
    """``admin`` is what the environment's bootstrap token is called in audit and trace rows: a database
    token named so (in any case) would pass for it."""
    for name in ("admin", "ADMIN", "Admin"):
        resp = await gateway.post("/operator/api/tokens", json={"name": name, "scopes": ["read"]}, headers=admin_headers)
        assert resp.status == 409, name
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert problem["code"] == "conflict" and problem["correlation_id"] and "reserved" in problem["detail"]
        assert "token" not in problem
    assert await db.fetchval("SELECT count(*) FROM api_tokens WHERE lower(name) = 'admin' AND created_by = 'admin'") == 0


async def test_a_name_an_active_token_has_is_a_conflict(gateway, admin_headers) -> None:
    name = f"twice-{uuid.uuid4().hex[:6]}"
    first = await gateway.post("/operator/api/tokens", json={"name": name, "scopes": ["read"]}, headers=admin_headers)
    assert first.status == 201
    again = await gateway.post("/operator/api/tokens", json={"name": name, "scopes": ["read"]}, headers=admin_headers)
    assert again.status == 409
    problem = await again.json()
    assert problem["code"] == "conflict" and "active token" in problem["detail"]
async def _create(gateway, admin_headers, **fields) -> tuple[str, dict]:
    name = f"lim-{uuid.uuid4().hex[:8]}"
    resp = await gateway.post("/operator/api/tokens", json={"name": name, "scopes": ["read"], **fields},
                              headers=admin_headers)
    body = await resp.json()
    assert resp.status == 201, body
    return name, body


async def test_a_token_created_with_expires_in_stops_working_when_it_expires(gateway, admin_headers) -> None:
    name, created = await _create(gateway, admin_headers, expires_in=1)
    token = created["token"]
    assert created["expires_at"]
    whoami = await gateway.get("/operator/api/whoami", headers={"X-VX11-Token": token})
    body = await whoami.json()
    assert whoami.status == 200 and body["expires_at"] == created["expires_at"]

    async def refused() -> bool:
        return (await gateway.get("/operator/api/whoami", headers={"X-VX11-Token": token})).status == 401

    await wait_for(refused, timeout=5)
    resp = await gateway.get("/operator/api/whoami", headers={"X-VX11-Token": token})
    problem = await resp.json()
    assert problem["code"] == "invalid_token" and "expired" in problem["detail"]
    assert token not in await resp.text()
    listing = await (await gateway.get("/operator/api/tokens", headers=admin_headers)).json()
    [row] = [t for t in listing["tokens"] if t["name"] == name]
    assert row["state"] == "expired" and row["revoked_at"] is None
    # An expired token gives its name up.
    resp = await gateway.post("/operator/api/tokens", json={"name": name, "scopes": ["read"]}, headers=admin_headers)
    assert resp.status == 201, await resp.text()


async def test_expires_at_must_be_a_future_instant_with_an_offset_and_not_with_expires_in(
    gateway, admin_headers
) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    cases = [
        ({"expires_at": past}, "expires_at"),
        ({"expires_at": "2999-01-01T00:00:00"}, "expires_at"),  # no offset
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"expires_in": 0}, "expires_in"),
        ({"expires_in": "60"}, "expires_in"),
        ({"expires_in": True}, "expires_in"),
        ({"expires_in": 60, "expires_at": "2999-01-01T00:00:00Z"}, "expires_at"),
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"requests_per_minute": 1.5}, "requests_per_minute"),
    ]
    for fields, field in cases:
        resp = await gateway.post("/operator/api/tokens", json={"name": f"x-{uuid.uuid4().hex[:6]}",
                                  "scopes": ["read"], **fields}, headers=admin_headers)
        body = await resp.json()
        assert resp.status == 422, (fields, body)
        assert [e["field"] for e in body["errors"]] == [field], fields
    future = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    _, created = await _create(gateway, admin_headers, expires_at=future.isoformat().replace("+00:00", "+02:00"))
    assert datetime.fromisoformat(created["expires_at"]) == future - timedelta(hours=2)


async def test_the_token_cache_does_not_outlive_an_expiry(settings) -> None:
    import asyncpg

    from tentaculo.auth.tokens import TokenExpired
    from tentaculo.db import queries

    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=1)
    token = new_token()
    expires = datetime.now(UTC) + timedelta(seconds=30)
    await queries.insert_token(pool, f"c-{uuid.uuid4().hex[:6]}", hash_token(token), ["read"], "tests",
                               expires_at=expires)
    wall = [time.time()]
    store = TokenStore(pool, admin_token=None, cache_seconds=3600, wall=lambda: wall[0])
    assert (await store.authenticate(token)) is not None
    wall[0] = expires.timestamp() + 0.001  # still cached for an hour, but past its expiry
    with pytest.raises(TokenExpired):
        await store.authenticate(token)
    await pool.close()


async def test_listing_shows_state_expiry_budget_and_a_coarse_last_use(aiohttp_client, settings, admin_headers) -> None:
    import dataclasses

    from tentaculo import keys
    from tentaculo.app import create_app
    from tests.helpers import serve

    # An hour between writes: nothing the requests below do may write last_used_at by itself.
    client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, token_last_used_seconds=3600)))
    name, created = await _create(client, admin_headers, expires_in=3600, requests_per_minute=600)
    revoked_name, _ = await _create(client, admin_headers)
    assert (await confirmed(client, "DELETE", f"/operator/api/tokens/{revoked_name}", headers=admin_headers)).status == 204
    for _ in range(5):
        assert (await client.get("/operator/api/whoami", headers={"X-VX11-Token": created["token"]})).status == 200

    async def row(token_name: str) -> dict:
        listing = await (await client.get("/operator/api/tokens", headers=admin_headers)).json()
        [found] = [t for t in listing["tokens"] if t["name"] == token_name]
        return found

    listed = await row(name)
    assert listed["state"] == "active" and listed["expires_at"] == created["expires_at"]
    assert listed["requests_per_minute"] == 600 and listed["created_at"] and listed["revoked_at"] is None
    assert listed["last_used_at"] is None  # not written on the request path
    assert (await row(revoked_name))["state"] == "revoked"
    assert await client.app[keys.TOKENS].flush_usage() == 1  # one batch for every token used
    assert (await row(name))["last_used_at"] is not None
    me = await (await client.get("/operator/api/whoami", headers={"X-VX11-Token": created["token"]})).json()
    assert me["requests_per_minute"] == 600 and me["expires_at"] == created["expires_at"]


async def test_last_used_at_is_written_in_the_background(aiohttp_client, settings, admin_headers, db) -> None:
    import dataclasses

    from tentaculo.app import create_app
    from tests.helpers import serve

    client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, token_last_used_seconds=0.05)))
    name, created = await _create(client, admin_headers)
    assert (await client.get("/operator/api/whoami", headers={"X-VX11-Token": created["token"]})).status == 200

    async def written() -> bool:
        return await db.fetchval("SELECT last_used_at IS NOT NULL FROM api_tokens WHERE name = $1", name)

    await wait_for(written, timeout=5)


async def test_expiry_ends_the_event_streams_the_token_opened(aiohttp_client, settings, admin_headers) -> None:
    import dataclasses

    from tentaculo.app import create_app
    from tests.helpers import serve
    from tests.test_events import EVENTS, SSE

    client = await serve(aiohttp_client, create_app(dataclasses.replace(
        settings, token_cache_seconds=0.2, redis_prefix=f"{settings.redis_prefix}exp-{uuid.uuid4().hex[:6]}:")))
    _, created = await _create(client, admin_headers, expires_in=1)
    resp = await client.get(EVENTS, headers={"X-VX11-Token": created["token"]})
    assert resp.status == 200
    sse = SSE(resp)
    assert await sse.record() == {"retry": "3000"}
    # The stream carries whatever this instance publishes (a provider's status, say) until it ends.
    async with asyncio.timeout(15):
        while (error := await sse.event(timeout=15))["event"] != "error":
            pass
    problem = error["data"]["data"]
    assert problem["code"] == "invalid_token" and "expired" in problem["detail"]
    await sse.ended()


async def test_scopes_read_in_one_order_everywhere(gateway, admin_headers, make_token) -> None:
    """read, chat, operate, admin: in whoami, the token list and a creation's answer alike."""
    name = f"ordered-{uuid.uuid4().hex[:6]}"
    created = await gateway.post("/operator/api/tokens", json={"name": name, "scopes": ["admin", "chat", "read"]},
                                 headers=admin_headers)
    body = await created.json()
    assert body["scopes"] == ["read", "chat", "admin"]
    whoami = await (await gateway.get("/operator/api/whoami", headers={"X-VX11-Token": body["token"]})).json()
    assert whoami["scopes"] == ["read", "chat", "admin"]
    # Rows stored in another order (as earlier versions wrote them) are listed in the same one.
    old = f"old-{uuid.uuid4().hex[:6]}"
    await make_token("operate", "chat", "admin", "read", name=old)
    listing = (await (await gateway.get("/operator/api/tokens", headers=admin_headers)).json())["tokens"]
    scopes = {t["name"]: t["scopes"] for t in listing if t["revoked_at"] is None}
    assert scopes[name] == ["read", "chat", "admin"]
    assert scopes[old] == ["read", "chat", "operate", "admin"]
    admin = await (await gateway.get("/operator/api/whoami", headers=admin_headers)).json()
    assert admin["scopes"] == ["read", "chat", "operate", "admin"]

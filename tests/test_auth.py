"""Scoped tokens on the gateway: missing, wrong, revoked, query-string, scope checks."""

from __future__ import annotations

import uuid

from tentaculo.auth import TokenStore, hash_token, new_token


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

    revoked = await gateway.delete(f"/operator/api/tokens/{name}", headers=admin_headers)
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

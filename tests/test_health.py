"""Liveness and readiness against real PostgreSQL and Redis."""

from __future__ import annotations

import dataclasses
import json
from urllib.parse import urlsplit

from aiohttp.test_utils import TestClient

from tentaculo import __version__
from tentaculo.app import create_app
from tests.faults import proxy_postgres, proxy_redis
from tests.helpers import serve


async def test_health_needs_no_token_and_reports_version(gateway: TestClient) -> None:
    resp = await gateway.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "on", "service": "tentaculo", "version": __version__}
    assert resp.headers["X-Correlation-ID"]


async def test_ready_checks_each_dependency(gateway: TestClient) -> None:
    resp = await gateway.get("/ready")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["status"] == "on"
    assert set(body["checks"]) == {"postgresql", "redis", "migrations", "audit", "auth_limiter"}
    assert body["checks"]["auth_limiter"]["status"] == "on"
    for name in ("postgresql", "redis", "migrations"):
        assert body["checks"][name]["status"] == "on"
        assert body["checks"][name]["latency_ms"] >= 0
    assert body["checks"]["audit"]["status"] == "on" and body["checks"]["audit"]["dropped"] == 0


async def test_redis_away_ready_says_so_and_the_rest_keeps_serving(
    aiohttp_client, settings, admin_headers
) -> None:
    proxy, url = await proxy_redis(settings.redis_url)
    client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, redis_url=url)))
    assert (await client.get("/ready")).status == 200

    await proxy.cut()
    resp = await client.get("/ready")
    body = await resp.json()
    assert resp.status == 503
    assert body["checks"]["redis"]["status"] == "error"
    assert body["checks"]["redis"]["reason"]
    assert body["checks"]["postgresql"]["status"] == "on"
    assert "redis" in body["reason"]
    whoami = await client.get("/operator/api/whoami", headers=admin_headers)
    assert whoami.status == 200

    await proxy.restore()
    resp = await client.get("/ready")
    assert resp.status == 200, await resp.text()
    await proxy.close()


async def test_dependency_reasons_never_name_an_address(aiohttp_client, settings, admin_headers) -> None:
    """/ready answers without a token: what it says of a failure must not give addresses away."""
    pg, dsn = await proxy_postgres(settings.database_url)
    redis, url = await proxy_redis(settings.redis_url)
    client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, database_url=dsn, redis_url=url)))
    try:
        await pg.cut()
        await redis.cut()
        body = await (await client.get("/ready")).json()
        assert body["checks"]["postgresql"]["status"] == "error" and body["checks"]["redis"]["status"] == "error"
        assert body["checks"]["redis"]["reason"].startswith("ConnectionError")
        events = await client.get("/operator/api/events", headers=admin_headers)
        assert events.status == 503
        texts = [json.dumps(body), await events.text()]
        for port in (urlsplit(dsn).port, urlsplit(url).port):
            assert all(f":{port}" not in t and f", {port})" not in t for t in texts), texts
        assert all("127.0.0.1" not in t for t in texts), texts
    finally:
        await pg.restore()
        await redis.restore()
        await client.close()  # while its servers are reachable again, so shutdown flushes at once
        await pg.close()
        await redis.close()

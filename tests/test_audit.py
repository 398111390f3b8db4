"""Audit rows: one per routed request, off the request path, surviving a PostgreSQL outage."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from datetime import UTC

import asyncpg

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.audit import AuditWriter
from tentaculo.auth import new_token
from tests.chat_helpers import chat_gateway
from tests.conftest import audit_row_of, serve, wait_for
from tests.faults import proxy_postgres


async def _rows(db: asyncpg.Connection, instance: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM audit_logs WHERE instance = $1 ORDER BY id", instance)


async def _count(db: asyncpg.Connection, instance: str) -> int:
    return await db.fetchval("SELECT count(*) FROM audit_logs WHERE instance = $1", instance)


async def test_one_row_per_routed_request_with_its_facts(gateway, settings, db, admin_headers) -> None:
    cid = f"audit-{uuid.uuid4().hex[:8]}"
    await gateway.get("/operator/api/whoami", headers={**admin_headers, "X-Correlation-ID": cid})
    await gateway.get("/operator/api/whoami", headers={"X-Correlation-ID": cid})  # 401
    await gateway.get("/no/such/route")  # not routed: no row
    await wait_for(lambda: _count_is(db, settings.instance, 2))
    ok, denied = await _rows(db, settings.instance)
    assert (ok["correlation_id"], ok["token_name"], ok["method"], ok["status"]) == (cid, "admin", "GET", 200)
    assert ok["route"] == "/operator/api/whoami" and ok["path"] == "/operator/api/whoami"
    assert ok["duration_ms"] >= 0 and ok["client"] == "127.0.0.1"
    assert (denied["correlation_id"], denied["token_name"], denied["status"]) == (cid, None, 401)


async def _count_is(db: asyncpg.Connection, instance: str, n: int) -> bool:
    return await _count(db, instance) == n


async def test_reused_correlation_id_records_both_requests(gateway, settings, db, admin_headers) -> None:
    headers = {**admin_headers, "X-Correlation-ID": "same-id-twice"}
    await gateway.get("/operator/api/whoami", headers=headers)
    await gateway.get("/operator/api/whoami", headers=headers)
    await wait_for(lambda: _count_is(db, settings.instance, 2))


async def test_postgres_outage_requests_served_rows_written_after_return(
    aiohttp_client, settings, db, admin_headers
) -> None:
    proxy, dsn = await proxy_postgres(settings.database_url)
    client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, database_url=dsn)))
    writer = client.app[keys.AUDIT]

    await proxy.cut()
    statuses = [(await client.get("/operator/api/whoami", headers=admin_headers)).status for _ in range(50)]
    assert statuses == [200] * 50
    await wait_for(lambda: writer.last_error is not None)
    assert writer.queued == 50 and writer.dropped == 0
    ready = await client.get("/ready")
    assert ready.status == 503
    body = await ready.json()
    assert body["checks"]["postgresql"]["status"] == "error"
    assert body["checks"]["audit"]["status"] == "degraded" and body["checks"]["audit"]["queued"] == 50

    await proxy.restore()
    # 50 calls plus the /ready call, all buffered during the outage.
    await wait_for(lambda: _count_is(db, settings.instance, 51), timeout=15)
    # The rows are visible once COPY commits; the writer clears its error after the connection is back in the pool.
    await wait_for(lambda: writer.last_error is None)
    assert writer.queued == 0 and writer.dropped == 0
    await client.close()
    await proxy.close()


async def test_a_call_that_needs_postgres_during_an_outage_is_503_and_audited(
    aiohttp_client, settings, db, admin_headers
) -> None:
    proxy, dsn = await proxy_postgres(settings.database_url)
    client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, database_url=dsn)))
    try:
        await proxy.cut()
        calls = (("GET", "/operator/api/tokens", None), ("PUT", "/operator/api/features/chat", {"status": "off"}),
                 ("DELETE", "/operator/api/tokens/someone", None))
        for method, path, body in calls:
            cid = f"pg-away-{method.lower()}-{uuid.uuid4().hex[:6]}"
            resp = await client.request(method, path, json=body, headers={**admin_headers, "X-Correlation-ID": cid})
            assert resp.status == 503, await resp.text()
            assert resp.content_type == "application/problem+json" and resp.headers["Retry-After"]
            problem = await resp.json()
            assert (problem["code"], problem["correlation_id"]) == ("upstream_unavailable", cid)
            assert "PostgreSQL" in problem["detail"] and "Traceback" not in await resp.text()
        # A token only PostgreSQL can vouch for: refused as an outage, not as a bad token.
        unknown = await client.get("/operator/api/whoami", headers={"X-VX11-Token": new_token()})
        assert unknown.status == 503 and unknown.headers["Retry-After"]
        assert (await unknown.json())["code"] == "upstream_unavailable"
        await proxy.restore()
        row = await audit_row_of(db, cid)  # written once PostgreSQL is back, with what the client got
        assert (row["method"], row["status"]) == ("DELETE", 503)
    finally:
        await client.close()
        await proxy.close()



async def test_full_buffer_drops_and_counts(aiohttp_client, settings, db, admin_headers) -> None:
    proxy, dsn = await proxy_postgres(settings.database_url)
    client = await serve(
        aiohttp_client, create_app(dataclasses.replace(settings, database_url=dsn, audit_buffer=5))
    )
    writer = client.app[keys.AUDIT]
    await proxy.cut()
    for _ in range(8):
        assert (await client.get("/operator/api/whoami", headers=admin_headers)).status == 200
    assert writer.dropped == 3
    ready = await (await client.get("/ready")).json()
    assert ready["checks"]["audit"]["dropped"] == 3
    assert "dropped" in ready["checks"]["audit"]["reason"]
    await proxy.restore()
    await wait_for(lambda: _count_is(db, settings.instance, 5), timeout=15)
    await client.close()
    await proxy.close()


async def test_shutdown_flushes_queued_rows(aiohttp_client, settings, db, admin_headers) -> None:
    # A long flush interval: only the shutdown flush can write these rows.
    client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, audit_flush_seconds=60)))
    for _ in range(20):
        await client.get("/operator/api/whoami", headers=admin_headers)
    assert await _count(db, settings.instance) == 0
    await client.close()
    assert await _count(db, settings.instance) == 20


async def test_writer_batches_large_bursts(database_url, db) -> None:
    from datetime import datetime

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    writer = AuditWriter(pool, capacity=10_000, batch_size=500, flush_seconds=0.05)
    writer.start()
    instance = f"burst-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    for i in range(1_234):
        writer.record((now, f"c{i}", None, "GET", "/r", "/r", 200, 0.1, "127.0.0.1", instance, None))
    await wait_for(lambda: _count_is(db, instance, 1_234))
    await writer.close(timeout=5)
    assert writer.written == 1_234 and writer.dropped == 0
    await pool.close()


async def test_a_client_leaving_records_what_it_was_sent(aiohttp_client, settings, db, admin_headers) -> None:
    """A stream the client ends keeps the status it was answered with; 499 only when nothing was sent."""
    gw = await chat_gateway(aiohttp_client, settings)
    streamed = f"left-stream-{uuid.uuid4().hex[:6]}"
    resp = await gw.get("/operator/api/events", headers={**admin_headers, "X-Correlation-ID": streamed})
    assert resp.status == 200
    async with asyncio.timeout(5):
        assert (await resp.content.readline()).startswith(b"retry:")  # the stream is open
    resp.close()
    assert (await audit_row_of(db, streamed))["status"] == 200

    unanswered = f"left-early-{uuid.uuid4().hex[:6]}"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.3):  # the mock stalls: the client gives up before any answer
            await gw.post("/operator/api/chat", json={"message": "hi", "metadata": {"mock": {"fail": "stall"}}},
                          headers={**admin_headers, "X-Correlation-ID": unanswered})
    row = await audit_row_of(db, unanswered)
    assert row["status"] == 499 and row["route"] == "/operator/api/chat"

"""Audit rows: one per routed request, off the request path, surviving a PostgreSQL outage."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from datetime import UTC, datetime

import aiohttp.web_protocol
import asyncpg
from aiohttp.http_parser import HttpRequestParserPy

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.auth.tokens import new_token
from tentaculo.db import queries
from tentaculo.db.audit import AuditWriter
from tests.chat_helpers import chat_gateway
from tests.faults import proxy_postgres
from tests.helpers import audit_row_of, serve, wait_for


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
    """A client that sends one correlation id twice gets two rows, each with its own request's facts."""
    cid = f"twice-{uuid.uuid4().hex[:8]}"
    headers = {**admin_headers, "X-Correlation-ID": cid}
    first = await gateway.get("/operator/api/whoami", headers=headers)
    second = await gateway.get("/operator/api/tokens", headers=headers)
    assert (first.status, second.status) == (200, 200)
    assert first.headers["X-Correlation-ID"] == second.headers["X-Correlation-ID"] == cid

    async def both_written() -> bool:
        return len(await queries.audit_rows_for(db, cid)) == 2

    await wait_for(both_written)
    rows = await queries.audit_rows_for(db, cid)
    assert [(r["method"], r["route"], r["path"], r["status"]) for r in rows] == [
        ("GET", "/operator/api/whoami", "/operator/api/whoami", 200),
        ("GET", "/operator/api/tokens", "/operator/api/tokens", 200),
    ]
    for row in rows:
        assert (row["correlation_id"], row["token_name"], row["instance"]) == (cid, "admin", settings.instance)
        assert (row["client"], row["service"]) == ("127.0.0.1", None) and row["duration_ms"] >= 0
    assert rows[0]["id"] != rows[1]["id"] and rows[0]["ts"] <= rows[1]["ts"]


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
    # Every row once: none lost or written twice across batches.
    assert {r["correlation_id"] for r in await _rows(db, instance)} == {f"c{i}" for i in range(1_234)}
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


async def _refused_raw(host: str, port: int, target: bytes, cid: str) -> bytes:
    """A call with a wrong token whose request line carries ``target`` byte for byte (no client library
    sends invalid UTF-8 in a path); returns the status line."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\nX-VX11-Token: " + new_token().encode()
                 + b"\r\nX-Correlation-ID: " + cid.encode() + b"\r\nConnection: close\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    await reader.read()
    writer.close()
    await writer.wait_closed()
    return status


async def test_a_refused_call_with_an_unstorable_path_is_still_audited(
    aiohttp_client, settings, db, admin_headers, monkeypatch
) -> None:
    """PostgreSQL text holds neither NUL nor invalid UTF-8: such a path is stored escaped, never dropped."""
    # aiohttp's C parser refuses raw bytes above 0x7f in a path with 400 before routing; its pure
    # Python parser (AIOHTTP_NO_EXTENSIONS=1, or no compiled extension) decodes them with
    # surrogateescape, and the lone surrogates reach the audit row.
    monkeypatch.setattr(aiohttp.web_protocol, "HttpRequestParser", HttpRequestParserPy)
    gateway = await serve(aiohttp_client, create_app(settings))
    nul = f"odd-nul-{uuid.uuid4().hex[:6]}"
    resp = await gateway.get("/operator/api/proxy/madre/%00", headers={"X-VX11-Token": new_token(),
                                                                     "X-Correlation-ID": nul})
    assert resp.status == 401
    row = await audit_row_of(db, nul)
    assert (row["status"], row["path"]) == (401, "/operator/api/proxy/madre/\\x00")

    utf8 = f"odd-utf8-{uuid.uuid4().hex[:6]}"
    status = await _refused_raw(gateway.host, gateway.port, b"/operator/api/proxy/madre/a\xffb", utf8)
    assert status.startswith(b"HTTP/1.1 401")
    row = await audit_row_of(db, utf8)
    assert (row["status"], row["path"]) == (401, "/operator/api/proxy/madre/a\\xffb")

    writer = gateway.app[keys.AUDIT]
    assert writer.dropped == 0 and writer.last_error is None
    ready = await (await gateway.get("/ready")).json()
    assert ready["status"] == "on" and ready["checks"]["audit"]["status"] == "on", ready
    assert ready["checks"]["audit"]["escaped"] == 2 and ready["checks"]["audit"]["dropped"] == 0
    status_body = await (await gateway.get("/operator/api/status", headers=admin_headers)).json()
    assert status_body["dependencies"]["audit"]["status"] == "on", status_body["dependencies"]["audit"]


async def test_odd_bytes_in_any_text_field_are_stored_escaped_and_cost_no_other_row(database_url, db) -> None:
    """NUL and lone surrogates in correlation id, token name, path, client or service: every row of
    the batch is written, the odd text escaped visibly, and nothing counts as a PostgreSQL outage."""
    from datetime import datetime

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    writer = AuditWriter(pool, capacity=100, batch_size=100, flush_seconds=60)
    instance = f"odd-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)

    def row(cid: str, name: str | None = "ops", path: str = "/p", client: str | None = "127.0.0.1",
            service: str | None = None) -> tuple:
        return (now, cid, name, "GET", "/r", path, 401, 0.1, client, instance, service)

    odd = [
        (row("c\x00id"), "correlation_id", "c\\x00id"),
        (row("c1", name="ad\udcffmin"), "token_name", "ad\\xffmin"),
        (row("c2", path="/é/\x00/\udced\udca0\udc80"), "path", "/é/\\x00/\\xed\\xa0\\x80"),
        (row("c3", client="\x00\udc80"), "client", "\\x00\\x80"),
        (row("c4", service="mad\ud800re"), "service", "mad\\ud800re"),
    ]
    writer.record(row("first"))
    for r, _, _ in odd:
        writer.record(r)
    writer.record(row("last"))
    assert await writer.flush()
    stored = await _rows(db, instance)
    assert [r["correlation_id"] for r in stored] == ["first", "c\\x00id", "c1", "c2", "c3", "c4", "last"]
    for got, (_, column, expected) in zip(stored[1:], odd, strict=False):
        assert got[column] == expected, column
    assert (writer.written, writer.escaped, writer.dropped, writer.marked) == (7, 5, 0, 0)
    assert writer.failures == 0 and writer.last_error is None
    await pool.close()


async def test_a_row_the_encoder_cannot_send_costs_only_itself(database_url, db) -> None:
    """A value asyncpg cannot encode (here a status that is not a number: a bug, not client input) is
    found by halving the batch and counted as rejected; the rows around it are written and nothing
    counts as a PostgreSQL outage."""
    from datetime import datetime

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    writer = AuditWriter(pool, capacity=100, batch_size=100, flush_seconds=60)
    instance = f"enc-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    rows = [(now, f"c{i}", None, "GET", "/r", "/p", 200, 0.1, None, instance, None) for i in range(5)]
    rows[2] = (now, "c2", None, "GET", "/r", "/p", "two hundred", 0.1, None, instance, None)
    for r in rows:
        writer.record(r)
    assert await writer.flush()
    assert [r["correlation_id"] for r in await _rows(db, instance)] == ["c0", "c1", "c3", "c4"]
    assert (writer.written, writer.rejected, writer.queued) == (4, 1, 0)
    assert writer.failures == 0 and writer.last_error is None
    await pool.close()


async def test_the_writer_drains_promptly_after_postgres_returns_instead_of_dropping(settings, db) -> None:
    """Rows of calls made after PostgreSQL is back are written, not dropped while the writer sleeps its backoff."""
    from tentaculo.db.pool import create_pool

    proxy, dsn = await proxy_postgres(settings.database_url)
    pool = await create_pool(dsn, min_size=0, max_size=2)
    writer = AuditWriter(pool, capacity=30, batch_size=10, flush_seconds=0.05, max_backoff=5.0)
    writer.start()
    instance = f"drain-{uuid.uuid4().hex[:8]}"

    def row() -> tuple[object, ...]:
        return (datetime.now(UTC), "drain", None, "GET", "/r", "/r", 200, 1.0, "127.0.0.1", instance, None)

    try:
        await proxy.cut()
        for _ in range(20):
            writer.record(row())
        await wait_for(lambda: writer.failures >= 6, timeout=15)  # its backoff has grown to seconds
        await proxy.restore()
        for _ in range(30):  # calls keep coming at 20 per second once PostgreSQL is back
            writer.record(row())
            await asyncio.sleep(0.05)
        await wait_for(lambda: _count_is(db, instance, 50), timeout=15)
        assert writer.dropped == 0
    finally:
        await writer.close(timeout=5)
        await pool.close()
        await proxy.close()

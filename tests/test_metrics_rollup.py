"""Metrics: rollups combined across real instances, provider figures, Prometheus, the periodic event."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.settings import Settings
from tentaculo.status.metrics import LATENCY_BOUNDS_MS, RequestMetrics, Series, quantile
from tentaculo.status.rollup import COMPACT_SECONDS, MetricsRollup
from tests.chat_helpers import chat_gateway
from tests.faults import proxy_postgres
from tests.helpers import AppClient, serve, wait_for

METRICS = "/operator/api/metrics"


def _route(body: dict, route: str, method: str = "GET") -> dict:
    for r in body["routes"]:
        if r["route"] == route and r["method"] == method:
            return r
    return {"requests": 0, "errors": 0, "status_classes": {}}


def _provider(body: dict, name: str) -> dict:
    return next((p for p in body["providers"] if p["provider"] == name), {"calls": 0, "errors": 0, "outcomes": {}})


async def _metrics(gw: TestClient, headers: dict, window: str = "5m") -> dict:
    resp = await gw.get(METRICS, params={"window": window}, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def _instance(aiohttp_client: AppClient, settings: Settings, **changes) -> TestClient:
    changes.setdefault("instance", f"test-{uuid.uuid4().hex[:12]}")
    return await serve(aiohttp_client, create_app(dataclasses.replace(settings, **changes)))


# --------------------------------------------------------------------------- pure figures


def test_quantiles_interpolate_in_fixed_buckets_and_never_exceed_the_max() -> None:
    s = Series()
    for ms in (0.5, 0.5, 3, 3, 3, 40, 40, 40, 40, 900):
        s.observe(ms, False)
    assert quantile(s.histogram, 0.5, s.latency_max_ms) == pytest.approx(5.0)  # rank 5 of 10: top of (2, 5]
    assert quantile(s.histogram, 0.3, s.latency_max_ms) == pytest.approx(3.0)  # rank 3: a third into (2, 5]
    assert quantile(s.histogram, 0.99, s.latency_max_ms) == pytest.approx(900.0)  # capped at the max seen
    assert quantile(Series().histogram, 0.5, 0.0) is None
    slow = Series()
    slow.observe(60_000, True)
    assert quantile(slow.histogram, 0.5, slow.latency_max_ms) == pytest.approx(35_000)  # beyond the last bound


def test_seal_hands_over_the_bucket_and_keeps_totals_since_start() -> None:
    m = RequestMetrics()
    m.observe("/a", "GET", 200, 3.0)
    m.observe("/a", "GET", 503, 30.0)
    m.observe_provider("/chat", "POST", "mock", "ok", 12.0)
    bucket = m.seal()
    assert bucket.http[("/a", "GET", "2xx")].count == 1 and bucket.http[("/a", "GET", "5xx")].errors == 1
    assert bucket.providers[("/chat", "POST", "ok", "mock")].count == 1
    assert m.series == {} and m.provider_series == {}
    m.observe("/a", "GET", 200, 1.0)
    http, providers = m.since_start()
    assert http[("/a", "GET", "2xx")].count == 2 and providers[("/chat", "POST", "ok", "mock")].count == 1
    assert m.totals() == {"requests": 3, "errors": 1, "error_rate": pytest.approx(1 / 3)}
    assert len(http[("/a", "GET", "2xx")].histogram) == len(LATENCY_BOUNDS_MS) + 1


# --------------------------------------------------------------------------- across instances


async def test_two_instances_are_combined_and_nothing_is_counted_twice(
    aiohttp_client, settings, admin_headers
) -> None:
    a = await _instance(aiohttp_client, settings)
    b = await _instance(aiohttp_client, settings)
    before = _route(await _metrics(a, admin_headers), "/health")["requests"]
    for _ in range(3):
        assert (await a.get("/health")).status == 200
    for _ in range(2):
        assert (await b.get("/health")).status == 200
    assert (await b.get("/operator/api/whoami")).status == 401  # counted, as a 4xx

    await b.app[keys.ROLLUP].flush()  # b's figures reach the table; a's are still only in memory
    body = await _metrics(a, admin_headers)
    health = _route(body, "/health")
    assert health["requests"] == before + 5
    assert health["status_classes"]["2xx"] >= 5
    assert {a.app[keys.SETTINGS].instance, b.app[keys.SETTINGS].instance} <= set(body["instances"])
    assert _route(body, "/operator/api/whoami")["status_classes"].get("4xx", 0) >= 1
    assert body["window"] == "5m" and body["window_seconds"] == 300 and body["complete"] is True
    assert health["rate_per_s"] == pytest.approx(health["requests"] / 300, abs=1e-6)
    latency = health["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]

    await a.app[keys.ROLLUP].flush()  # a's figures move from memory to the table: same totals
    assert _route(await _metrics(a, admin_headers), "/health")["requests"] == before + 5
    assert _route(await _metrics(b, admin_headers), "/health")["requests"] == before + 5


async def test_a_flush_landing_during_a_read_is_neither_lost_nor_counted_twice(aiohttp_client, settings) -> None:
    gw = await _instance(aiohttp_client, settings)
    rollup = gw.app[keys.ROLLUP]

    def health(figures) -> int:
        return sum(s.count for key, s in figures.series.items() if key[0] == "/health")

    before = health(await rollup.window(300))
    for _ in range(4):
        await gw.get("/health")
    original, queries = rollup._query, 0

    async def query_then_flush(since):
        nonlocal queries
        queries += 1
        rows = await original(since)
        if queries == 1:  # the rows are committed after this query's snapshot, and leave memory
            await rollup.flush()
        return rows

    rollup._query = query_then_flush
    figures = await rollup.window(300)
    assert queries == 2  # the read noticed the flush and asked again
    assert health(figures) == before + 4


async def test_every_window_answers_and_a_bad_window_is_422(gateway, admin_headers) -> None:
    for window in ("1m", "5m", "1h", "24h"):
        body = await _metrics(gateway, admin_headers, window)
        assert body["window"] == window and "totals" in body and "dropped" in body
    resp = await gateway.get(METRICS, params={"window": "2d"}, headers=admin_headers)
    assert resp.status == 422
    problem = await resp.json()
    assert problem["code"] == "validation_error" and problem["errors"][0]["field"] == "window"
    assert problem["correlation_id"] == resp.headers["X-Correlation-ID"]


async def test_provider_figures_come_from_chats(aiohttp_client, settings, admin_headers) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    before = _provider(await _metrics(gw, admin_headers), "mock")
    ok = await gw.post("/operator/api/chat", json={"message": "count me"}, headers=admin_headers)
    assert ok.status == 200
    broken = await gw.post("/operator/api/chat", headers=admin_headers,
                           json={"message": "break", "metadata": {"mock": {"fail": "midstream"}}})
    assert broken.status == 503
    refused = await gw.post("/operator/api/chat", headers=admin_headers,
                            json={"message": "refuse", "metadata": {"mock": {"fail": "before"}}})
    assert refused.status == 503
    attempts = len((await refused.json())["attempts"])
    after = _provider(await _metrics(gw, admin_headers), "mock")
    assert after["calls"] - before["calls"] == 2 + attempts
    assert after["errors"] - before["errors"] == 1 + attempts
    assert after["outcomes"]["ok"] - before["outcomes"].get("ok", 0) == 1
    assert after["latency_ms"]["max"] > 0


async def test_postgres_away_answers_with_this_instances_figures(
    aiohttp_client, settings, database_url, admin_headers
) -> None:
    proxy, dsn = await proxy_postgres(database_url)
    gw = await _instance(aiohttp_client, settings, database_url=dsn)
    try:
        assert (await gw.get("/health")).status == 200
        await proxy.cut()
        body = await _metrics(gw, admin_headers, "1m")
        assert body["complete"] is False and "PostgreSQL" in body["reason"]
        assert _route(body, "/health")["requests"] == 1
        assert body["instances"] == [gw.app[keys.SETTINGS].instance]
        assert await gw.app[keys.ROLLUP].flush() is False  # kept in memory, not lost
        assert _route(await _metrics(gw, admin_headers, "1m"), "/health")["requests"] == 1
        await proxy.restore()
        assert await gw.app[keys.ROLLUP].flush() is True
        assert gw.app[keys.ROLLUP].snapshot()["queued_buckets"] == 0
    finally:
        await gw.close()  # shut down while PostgreSQL is reachable again, so nothing waits for it
        await proxy.close()


async def test_compaction_keeps_sums_and_drops_expired_rows(database_url, db: asyncpg.Connection) -> None:
    route = f"/compaction-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    old = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    hist = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    rows = []
    for i, (count, bucket) in enumerate(((2, 1), (3, 1), (5, 4))):
        h = list(hist)
        h[bucket] = count
        rows.append((old + timedelta(seconds=10 * i), 10, "compaction-test", route, "GET", "2xx", None, count, 0,
                     count * 2.0, 3.0 + i, h))
    rows.append((now - timedelta(hours=30), 10, "compaction-test", route, "GET", "2xx", None, 7, 0, 7.0, 1.0, hist))
    await db.copy_records_to_table("performance_logs", records=rows, columns=[
        "bucket_start", "bucket_seconds", "instance", "route", "method", "status_class", "provider", "count",
        "error_count", "latency_sum_ms", "latency_max_ms", "histogram"])
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await MetricsRollup(RequestMetrics(), pool, instance="compaction-test", bucket_seconds=10, backlog=10).maintain()
    finally:
        await pool.close()
    left = await db.fetch("SELECT * FROM performance_logs WHERE route = $1", route)
    await db.execute("DELETE FROM performance_logs WHERE route = $1", route)
    assert len(left) == 1
    [row] = left
    assert row["bucket_seconds"] == COMPACT_SECONDS and row["bucket_start"] == old
    assert row["count"] == 10 and row["latency_sum_ms"] == 20.0 and row["latency_max_ms"] == 5.0
    assert row["histogram"][1] == 5 and row["histogram"][4] == 5 and sum(row["histogram"]) == 10


# --------------------------------------------------------------------------- Prometheus and the event


async def test_prometheus_exposes_instance_and_cluster_figures(aiohttp_client, settings, admin_headers) -> None:
    gw = await _instance(aiohttp_client, settings)
    for _ in range(2):
        await gw.get("/health")
    assert (await gw.get("/metrics")).status == 401  # needs read unless TENTACULO_METRICS_PUBLIC
    resp = await gw.get("/metrics", headers=admin_headers)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    health = [s for s in families["tentaculo_http_requests"].samples
              if s.labels.get("route") == "/health" and s.name.endswith("_total")]
    assert [s.value for s in health] == [2.0]
    buckets = [s for s in families["tentaculo_http_request_duration_seconds"].samples
               if s.labels.get("route") == "/health" and s.name.endswith("_bucket")]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == 2.0
    cluster = [s for s in families["tentaculo_cluster_requests"].samples if s.labels.get("route") == "/health"]
    assert cluster and all(s.labels["window"] == "5m" for s in cluster)
    assert families["tentaculo_cluster_figures_complete"].samples[0].value == 1.0
    assert (await gw.get("/metrics", params={"window": "1w"}, headers=admin_headers)).status == 422


async def test_prometheus_can_be_public(aiohttp_client, settings) -> None:
    gw = await _instance(aiohttp_client, settings, metrics_public=True)
    resp = await gw.get("/metrics")
    assert resp.status == 200
    assert "tentaculo_info" in await resp.text()


async def test_one_instance_publishes_each_periods_summary_of_every_instance(
    aiohttp_client, settings
) -> None:
    # Hourly events: the instances' own loops stay quiet while the test publishes for them.
    a = await _instance(aiohttp_client, settings, metrics_event_seconds=3600)
    b = await _instance(aiohttp_client, settings, metrics_event_seconds=3600)
    hub = a.app[keys.EVENTS]
    await hub.wait_online()
    await b.get("/health")
    await b.app[keys.ROLLUP].flush()
    await a.get("/health")
    # A period of long ago, which no running loop can claim: all that matters is that both share it.
    published = [await gw.app[keys.ROLLUP].publish_summary(7.0) for gw in (a, b, a)]
    assert published == [True, False, False]  # a claimed the period; nobody publishes it twice

    def mine(event) -> bool:
        data = orjson.loads(event.envelope)["data"]
        return {a.app[keys.SETTINGS].instance, b.app[keys.SETTINGS].instance} <= set(data["instances"])

    async def arrived() -> bool:
        found, _ = await hub.history.recent(limit=20, types=frozenset({"metrics"}))
        return any(mine(e) for e in found)

    await wait_for(arrived)
    found, _ = await hub.history.recent(limit=20, types=frozenset({"metrics"}))
    envelope = orjson.loads(next(e for e in found if mine(e)).envelope)
    data = envelope["data"]
    assert envelope["correlation_id"] is None and envelope["source"] == a.app[keys.SETTINGS].instance
    assert data["window"] == "1h" and data["window_seconds"] == 3600
    health = next(r for r in data["routes"] if r["route"] == "/health")
    assert health["requests"] >= 2 and health["p99_ms"] > 0
    assert set(data) >= {"requests", "errors", "error_rate", "rate_per_s", "latency_ms", "providers"}

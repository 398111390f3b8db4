"""Feature flags against real PostgreSQL and Redis: listing, admin-only changes, the 503 gate on
the features' endpoints, propagation to another instance within a second, and broken vs off."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.health import Health
from tentaculo.status.features import FEATURES, Flag
from tests.confirm_helpers import CONFIRM_HEADER
from tests.helpers import serve, wait_for

FEATURES_URL = "/operator/api/features"
CHAT_BODY = {"message": "hello", "provider": "mock"}


@pytest.fixture(autouse=True)
async def flags_back_on(db: asyncpg.Connection) -> AsyncIterator[None]:
    """Every flag on again after each test: other tests' gateways read the same table."""
    yield
    await db.execute("UPDATE feature_flags SET status = 'on', reason = NULL, updated_by = NULL, updated_at = now()")


async def _put(client: Any, name: str, body: Any, headers: dict[str, str]) -> Any:
    """Set a flag; turning one off is confirmed the way a client must (the second call carries the token)."""
    resp = await client.put(f"{FEATURES_URL}/{name}", data=orjson.dumps(body), headers=headers)
    if resp.status != 428:
        return resp
    token = (await resp.json())["confirmation"]["token"]
    return await client.put(f"{FEATURES_URL}/{name}", data=orjson.dumps(body), headers={**headers, CONFIRM_HEADER: token})


async def test_every_feature_is_listed_with_its_effective_status(gateway, admin_headers) -> None:
    resp = await gateway.get(FEATURES_URL, headers=admin_headers)
    assert resp.status == 200
    features = (await resp.json())["features"]
    assert [f["name"] for f in features] == list(FEATURES)
    for f in features:
        assert f["status"] in {"on", "off", "degraded", "error"} and f["flag"] == "on"
        assert set(f) >= {"reason", "description", "updated_at", "updated_by"}
    assert next(f for f in features if f["name"] == "chat")["status"] == "on"  # the mock provider answers


async def test_turning_chat_off_closes_its_endpoints_and_is_recorded(gateway, admin_headers, db) -> None:
    assert (await gateway.post("/operator/api/chat", json=CHAT_BODY, headers=admin_headers)).status == 200
    hub = gateway.app[keys.EVENTS]
    await hub.wait_online()
    sub = hub.subscribe(frozenset({"feature_toggle"}))
    try:
        resp = await _put(gateway, "chat", {"status": "off", "reason": "provider bill overdue"},
                          {**admin_headers, "X-Correlation-ID": "flag-change-1"})
        assert resp.status == 200
        body = await resp.json()
        assert (body["name"], body["status"], body["flag"], body["previous_status"]) == ("chat", "off", "off", "on")
        assert body["reason"] == "provider bill overdue" and body["updated_by"] == "admin"
        event = orjson.loads((await asyncio.wait_for(sub.get(), 5)).envelope)
    finally:
        hub.unsubscribe(sub)
    assert event["correlation_id"] == "flag-change-1"
    assert event["data"]["feature"] == "chat" and event["data"]["status"] == "off"
    assert event["data"]["previous_status"] == "on" and event["data"]["updated_by"] == "admin"

    for method, path, payload in (("POST", "/operator/api/chat", CHAT_BODY),
                                  ("POST", "/v1/chat/completions", {"model": "mock", "messages": []}),
                                  ("GET", "/v1/models", None)):
        refused = await gateway.request(method, path, json=payload, headers=admin_headers)
        assert refused.status == 503, path
        assert refused.content_type == "application/problem+json"
        problem = await refused.json()
        assert problem["code"] == "feature_disabled" and problem["feature"] == "chat"
        assert "provider bill overdue" in problem["detail"]
        assert problem["correlation_id"] == refused.headers["X-Correlation-ID"]
    # Other features keep working.
    assert (await gateway.get("/operator/api/providers", headers=admin_headers)).status == 200

    row = await db.fetchrow("SELECT status, reason, updated_by FROM feature_flags WHERE name = 'chat'")
    assert dict(row) == {"status": "off", "reason": "provider bill overdue", "updated_by": "admin"}

    async def audited() -> bool:
        return await db.fetchval(
            "SELECT count(*) FROM audit_logs WHERE correlation_id = 'flag-change-1' AND method = 'PUT'"
            " AND route = '/operator/api/features/{name}' AND token_name = 'admin' AND status = 200"
        ) == 1

    await wait_for(audited)

    assert (await _put(gateway, "chat", {"status": "on"}, admin_headers)).status == 200
    assert (await gateway.post("/operator/api/chat", json=CHAT_BODY, headers=admin_headers)).status == 200


async def test_bad_flag_changes_are_refused(gateway, admin_headers, make_token, db) -> None:
    unknown = await _put(gateway, "teleport", {"status": "off"}, admin_headers)
    assert unknown.status == 404
    problem = await unknown.json()
    assert problem["code"] == "not_found" and "chat" in problem["detail"]
    assert unknown.content_type == "application/problem+json"

    for body, field in (({"status": "maybe"}, "status"), ({"status": "error"}, "status"), ({}, "status"),
                        ({"status": "off", "reason": 7}, "reason"), ({"status": "off", "reason": "x" * 501}, "reason"),
                        ({"status": "off", "reason": "nul\x00byte"}, "reason"),
                        ({"status": "off", "colour": "red"}, "colour")):
        resp = await _put(gateway, "chat", body, admin_headers)
        assert resp.status == 422, body
        problem = await resp.json()
        assert problem["code"] == "validation_error" and [e["field"] for e in problem["errors"]] == [field]
    assert (await _put(gateway, "chat", [1], admin_headers)).status == 422
    broken = await gateway.put(f"{FEATURES_URL}/chat", data=b"{not json", headers=admin_headers)
    assert broken.status == 400 and (await broken.json())["code"] == "invalid_json"

    reader = {"X-VX11-Token": await make_token("read", "chat", "operate")}
    refused = await _put(gateway, "chat", {"status": "off"}, reader)
    assert refused.status == 403
    assert (await refused.json())["required_scope"] == "admin"
    anonymous = await _put(gateway, "chat", {"status": "off"}, {})
    assert anonymous.status == 401
    assert await db.fetchval("SELECT status FROM feature_flags WHERE name = 'chat'") == "on"


async def test_turning_events_off_ends_open_streams_and_refuses_new_ones(gateway, admin_headers) -> None:
    hub = gateway.app[keys.EVENTS]
    await hub.wait_online()
    stream = await gateway.get("/operator/api/events", headers=admin_headers)
    assert stream.status == 200
    await wait_for(lambda: hub.clients == 1)
    assert (await _put(gateway, "events", {"status": "off", "reason": "maintenance"}, admin_headers)).status == 200
    text = (await asyncio.wait_for(stream.content.read(), 5)).decode()
    assert "event: error" in text and '"feature_disabled"' in text and '"feature":"events"' in text
    for method, path in (("GET", "/operator/api/events"), ("POST", "/operator/api/events/ticket")):
        refused = await gateway.request(method, path, headers=admin_headers)
        assert refused.status == 503 and (await refused.json())["feature"] == "events"
    listed = await (await gateway.get(FEATURES_URL, headers=admin_headers)).json()
    features = {f["name"]: f for f in listed["features"]}
    assert features["events"]["status"] == "off" and features["events"]["reason"] == "maintenance"



def _changed(app: Any, name: str, status: str) -> asyncio.Future[float]:
    """A future that resolves (with the time) when ``app``'s flags apply ``name`` = ``status``."""
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def seen(flag: Flag, previous: Flag | None) -> None:
        if flag.name == name and flag.status == status and not done.done():
            done.set_result(time.perf_counter())

    app[keys.FEATURES].on_change.append(seen)
    return done


async def test_another_instance_obeys_within_a_second(aiohttp_client, settings, admin_headers) -> None:
    # Re-reading the table is an hour away on b: only the pushed event can explain it obeying.
    a = await serve(aiohttp_client, create_app(dataclasses.replace(settings, instance="gw-a")))
    b = await serve(aiohttp_client, create_app(dataclasses.replace(settings, instance="gw-b",
                                                                   features_reload_seconds=3600)))
    await b.app[keys.EVENTS].wait_online()
    obeyed = _changed(b.app, "chat", "off")
    started = time.perf_counter()
    assert (await _put(a, "chat", {"status": "off", "reason": "drill"}, admin_headers)).status == 200
    applied_at = await asyncio.wait_for(obeyed, 1.0)
    assert applied_at - started < 1.0
    refused = await b.post("/operator/api/chat", json=CHAT_BODY, headers=admin_headers)
    assert refused.status == 503 and (await refused.json())["feature"] == "chat"
    listed = {f["name"]: f for f in (await (await b.get(FEATURES_URL, headers=admin_headers)).json())["features"]}
    assert listed["chat"]["status"] == "off" and listed["chat"]["updated_by"] == "admin"

    obeyed = _changed(b.app, "chat", "on")
    assert (await _put(a, "chat", {"status": "on"}, admin_headers)).status == 200
    await asyncio.wait_for(obeyed, 1.0)
    assert (await b.post("/operator/api/chat", json=CHAT_BODY, headers=admin_headers)).status == 200


async def test_without_the_push_the_periodic_reload_still_obeys_within_a_second(aiohttp_client, settings,
                                                                              admin_headers) -> None:
    a = await serve(aiohttp_client, create_app(dataclasses.replace(settings, instance="gw-a")))
    b = await serve(aiohttp_client, create_app(dataclasses.replace(settings, instance="gw-b")))
    flags_b = b.app[keys.FEATURES]
    b.app[keys.EVENTS].listeners.remove(flags_b.on_event)  # as if b missed the event
    obeyed = _changed(b.app, "proxy", "degraded")
    assert (await _put(a, "proxy", {"status": "degraded", "reason": "one module flaky"}, admin_headers)).status == 200
    await asyncio.wait_for(obeyed, 1.0)  # the table is re-read every 0.5 s
    assert flags_b.effective("proxy") == Health("degraded", "one module flaky")
    b.app[keys.EVENTS].listeners.append(flags_b.on_event)


async def test_no_usable_provider_makes_chat_error_not_off(aiohttp_client, settings, admin_headers) -> None:
    # deepseek without an API key is off: nothing can answer, yet nobody turned chat off.
    client = await serve(aiohttp_client, create_app(dataclasses.replace(settings, providers=("deepseek",),
                                                                        provider_chain=("deepseek",))))
    body = await (await client.get("/operator/api/status", headers=admin_headers)).json()
    chat = body["features"]["chat"]
    assert chat["status"] == "error" and chat["flag"] == "on"
    assert chat["reason"].startswith("no usable chat provider: deepseek off")
    assert body["status"] == "degraded"
    # Broken is not disabled: the endpoint still runs and says why itself.
    resp = await client.post("/operator/api/chat", json={"message": "hi"}, headers=admin_headers)
    assert resp.status == 503 and (await resp.json())["code"] == "provider_unavailable"

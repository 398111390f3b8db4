"""GET /operator/api/trace/{correlation_id}: audit rows, chat actions and events of one id, in time order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tentaculo import keys
from tentaculo.status.trace_views import in_time_order
from tests.chat_helpers import chat_gateway, new_cid
from tests.helpers import wait_for

TRACE = "/operator/api/trace/"


async def test_a_request_and_a_chat_show_their_rows_and_events_in_order(
    aiohttp_client, settings, admin_headers
) -> None:
    gw = await chat_gateway(aiohttp_client, settings)
    await gw.app[keys.EVENTS].wait_online()
    cid = new_cid()
    headers = {**admin_headers, "X-Correlation-ID": cid}
    assert (await gw.get("/operator/api/whoami", headers=headers)).status == 200
    chat = await gw.post("/operator/api/chat", json={"message": "trace me"}, headers=headers)
    assert chat.status == 200
    message_id = (await chat.json())["message_id"]
    body: dict = {}

    async def everything_recorded() -> bool:
        nonlocal body
        resp = await gw.get(TRACE + cid, headers=admin_headers)
        assert resp.status == 200
        body = await resp.json()
        kinds = [i["kind"] for i in body["items"]]
        return kinds.count("audit") == 2 and "chat" in kinds and "event" in kinds

    await wait_for(everything_recorded)
    assert body["correlation_id"] == cid
    items = body["items"]
    # In time order (compared as instants: a time on a whole second is written without a fraction).
    instants = [datetime.fromisoformat(i["ts"].replace("Z", "+00:00")) for i in items]
    assert instants == sorted(instants)
    assert [(i["kind"], i.get("route") or i.get("type")) for i in items] == [
        ("audit", "/operator/api/whoami"),
        ("chat", None),
        ("event", "chat"),
        ("audit", "/operator/api/chat"),
    ]
    chat_item, event = items[1], items[2]
    assert chat_item["message_id"] == message_id and chat_item["provider"] == "mock"
    assert chat_item["status"] == "ok" and chat_item["attempts"][0]["provider"] == "mock"
    assert event["data"]["message_id"] == message_id and event["source"] == settings.instance
    # The id a stream client would resume from: with its history's epoch.
    page = await gw.get(f"/operator/api/events?correlation_id={cid}",
                        headers={**admin_headers, "Accept": "application/json"})
    [published] = (await page.json())["events"]
    assert event["id"] == published["id"] and ":" in event["id"]
    assert items[3]["status"] == 200 and items[3]["method"] == "POST"
    assert all(s["status"] == "on" for s in body["sources"].values())


async def test_an_unknown_id_is_an_empty_trace_and_a_malformed_one_is_422(gateway, admin_headers) -> None:
    resp = await gateway.get(TRACE + new_cid(), headers=admin_headers)
    assert resp.status == 200
    body = await resp.json()
    assert body["items"] == [] and set(body["sources"]) == {"audit", "chat", "events"}
    for bad in ("-starts-with-dash", "has%20space", "x" * 129):
        resp = await gateway.get(TRACE + bad, headers=admin_headers)
        problem = await resp.json()
        assert resp.status == 422 and problem["code"] == "validation_error", bad
        assert problem["errors"][0]["field"] == "correlation_id"
    resp = await gateway.get(TRACE + "ok-id", params={"limit": "0"}, headers=admin_headers)
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "limit"
    assert (await gateway.get(TRACE + "ok-id")).status == 401


async def test_limit_bounds_each_source_and_says_so(gateway, admin_headers) -> None:
    cid = new_cid()
    for _ in range(3):
        await gateway.get("/health", headers={"X-Correlation-ID": cid})
    body: dict = {}

    async def written() -> bool:
        nonlocal body
        body = await (await gateway.get(TRACE + cid, params={"limit": "2"}, headers=admin_headers)).json()
        return body["sources"]["audit"]["truncated"]

    await wait_for(written)
    assert [i["kind"] for i in body["items"]] == ["audit", "audit"]


def test_items_of_one_millisecond_keep_their_causal_order() -> None:
    ms = datetime(2026, 1, 2, 3, 4, 5, 130_000, tzinfo=UTC)
    at = lambda us: ms + timedelta(microseconds=us)  # noqa: E731
    items = [
        {"kind": "audit", "ts": at(900), "route": "/operator/api/chat"},
        {"kind": "event", "ts": ms, "type": "chat", "data": {"message_id": "m-1"}},
        {"kind": "chat", "ts": at(600), "message_id": "m-1"},
        {"kind": "audit", "ts": at(400), "route": "/operator/api/whoami"},
        {"kind": "event", "ts": ms + timedelta(milliseconds=1), "type": "feature_toggle", "data": {}},
    ]
    ordered = in_time_order(items)
    assert [(i["kind"], i.get("route") or i.get("type")) for i in ordered] == [
        ("audit", "/operator/api/whoami"),
        ("chat", None),
        ("event", "chat"),
        ("audit", "/operator/api/chat"),
        ("event", "feature_toggle"),
    ]
    assert [i["ts"] for i in ordered] == [ms, ms, ms, ms, ms + timedelta(milliseconds=1)]

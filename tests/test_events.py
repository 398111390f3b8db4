"""Live events over SSE against real Redis and PostgreSQL: fan-out across instances, filters,
resume without gaps, reset, tickets, slow clients, Redis going away, shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from structlog.testing import capture_logs

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.auth.tickets import EventTickets
from tentaculo.auth.tokens import Principal
from tentaculo.db import queries
from tentaculo.events.envelope import EVENT_TYPES
from tentaculo.events.hub import EventHub
from tentaculo.logging import shared_processors
from tentaculo.settings import Settings, SettingsError
from tests.confirm_helpers import confirmed
from tests.faults import proxy_redis
from tests.helpers import ADMIN_TOKEN, serve, wait_for

EVENTS = "/operator/api/events"
TICKET = "/operator/api/events/ticket"
ENVELOPE = {"id", "type", "ts", "source", "severity", "correlation_id", "data"}


class SSE:
    """Reads SSE records (blank-line separated) from a streamed response."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp

    async def record(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next record: {"id", "event", "data", "retry", "comments"}, only the fields present."""
        record: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            while True:
                line = await self.resp.content.readline()
                if not line:
                    raise EOFError("stream ended")
                text = line.decode().rstrip("\r\n")
                if not text:
                    if record:
                        return record
                    continue
                if text.startswith(":"):
                    record.setdefault("comments", []).append(text[1:].strip())
                    continue
                name, _, value = text.partition(":")
                value = value[1:] if value.startswith(" ") else value
                record[name] = record[name] + "\n" + value if name == "data" and name in record else value

    async def event(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next dispatched event (skipping pings, retry and id-only records), data decoded."""
        while True:
            record = await self.record(timeout)
            if "data" in record:
                record["data"] = json.loads(record["data"])
                return record

    async def ended(self, timeout: float = 5.0) -> None:
        """Wait for the server to end the stream, ignoring what comes before."""
        async with asyncio.timeout(timeout):
            while await self.resp.content.readline():
                pass


@pytest.fixture
def ev_settings(settings: Settings, redis_prefix: str) -> Settings:
    """Gateway settings with a key prefix of their own, so each test sees only its own events."""
    return dataclasses.replace(
        settings, redis_prefix=f"{redis_prefix}ev-{uuid.uuid4().hex[:8]}:", events_reconnect_max_seconds=0.2
    )


@pytest.fixture
async def gw(aiohttp_client, ev_settings: Settings) -> TestClient:
    return await serve(aiohttp_client, create_app(ev_settings))


def hub_of(client: TestClient) -> EventHub:
    return client.app[keys.EVENTS]


async def open_stream(client: TestClient, query: str = "", headers: dict[str, str] | None = None) -> SSE:
    resp = await client.get(EVENTS + query, headers={"X-VX11-Token": ADMIN_TOKEN, **(headers or {})})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Correlation-ID"]
    sse = SSE(resp)
    first = await sse.record()
    assert first == {"retry": "3000"}, first
    return sse


async def test_stream_opens_with_retry_and_delivers_the_envelope(gw, ev_settings) -> None:
    sse = await open_stream(gw)
    hub_of(gw).publish("chat", {"message_id": "m-1", "provider": "mock"}, correlation_id="corr-1")
    event = await sse.event()
    assert event["event"] == "chat"
    data = event["data"]
    assert set(data) == ENVELOPE
    assert data["id"] == event["id"]
    assert data["type"] == "chat" and data["correlation_id"] == "corr-1" and data["severity"] == "info"
    assert data["source"] == ev_settings.instance
    assert data["ts"].endswith("Z")
    assert data["data"] == {"message_id": "m-1", "provider": "mock"}


async def test_a_burst_shares_one_redis_message_yet_each_event_arrives_once_in_order_and_intact(gw) -> None:
    hub = hub_of(gw)
    sse = await open_stream(gw)
    watcher = Redis.from_url(gw.app[keys.SETTINGS].redis_url or "")
    pubsub = watcher.pubsub()
    await pubsub.subscribe(hub.channel)
    texts = [f"line one of {n}\nline two {{\"quoted\"}} \u2028 end" for n in range(40)]
    for n, text in enumerate(texts):  # queued together: the publisher sends them as one batch
        hub.publish("chat", {"n": n, "text": text})
    got = [await sse.event() for _ in texts]
    messages = []
    while (msg := await pubsub.get_message(timeout=0.2)) is not None:
        if msg["type"] == "message":
            messages.append(msg)
    await pubsub.aclose()
    await watcher.aclose()
    assert 1 <= len(messages) < 40
    assert [e["data"]["data"] for e in got] == [{"n": n, "text": t} for n, t in enumerate(texts)]
    ids = [e["id"] for e in got]
    assert len(set(ids)) == len(ids) == 40
    assert hub.snapshot()["received"] == 40
    page = await gw.get(EVENTS + "?limit=40", headers={"X-VX11-Token": ADMIN_TOKEN, "Accept": "application/json"})
    assert [e["data"]["text"] for e in (await page.json())["events"]] == texts[::-1]  # newest first


async def test_ping_comment_keeps_the_stream_alive(aiohttp_client, ev_settings) -> None:
    client = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, events_ping_seconds=0.05)))
    sse = await open_stream(client)
    assert (await sse.record()) == {"comments": ["ping"]}


async def test_event_published_on_either_instance_reaches_clients_of_both(aiohttp_client, ev_settings) -> None:
    a = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, instance="gw-a")))
    b = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, instance="gw-b")))
    on_a, on_b = await open_stream(a), await open_stream(b)
    hub_of(a).publish("provider_status", {"provider": "mock", "status": "on"})
    hub_of(b).publish("provider_status", {"provider": "mock", "status": "error"})
    seen = []
    for sse in (on_a, on_b):
        first, second = await sse.event(), await sse.event()
        # Each instance publishes from its own outbox: either may reach Redis first, but every
        # client sees both, in the one order of the shared history.
        assert {first["data"]["source"], second["data"]["source"]} == {"gw-a", "gw-b"}
        seen.append([first["id"], second["id"]])
    assert seen[0] == seen[1]


async def test_ticket_from_one_instance_opens_a_stream_on_another(aiohttp_client, ev_settings, make_token) -> None:
    a = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, instance="gw-a")))
    b = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, instance="gw-b")))
    token = await make_token("read", name=f"browser-{uuid.uuid4().hex[:6]}")
    resp = await a.post(TICKET, headers={"X-VX11-Token": token})
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == {"ticket", "expires_in"} and 0 < body["expires_in"] <= 60
    stream = await b.get(f"{EVENTS}?ticket={body['ticket']}")  # no header: what EventSource does
    assert stream.status == 200, await stream.text()
    sse = SSE(stream)
    assert (await sse.record()) == {"retry": "3000"}
    hub_of(a).publish("metrics", {"window": "1m"})
    assert (await sse.event())["event"] == "metrics"


async def test_filters_by_type_and_correlation_id(gw) -> None:
    sse = await open_stream(gw, "?types=chat,feature_toggle&correlation_id=wanted-1")
    hub = hub_of(gw)
    hub.publish("provider_status", {"n": 1}, correlation_id="wanted-1")  # wrong type
    hub.publish("chat", {"n": 2}, correlation_id="other")  # wrong correlation id
    hub.publish("chat", {"n": 3}, correlation_id="wanted-1")
    hub.publish("feature_toggle", {"n": 4}, correlation_id="wanted-1")
    # Live order is publish order, so had 1 or 2 passed the filter they would arrive first.
    assert (await sse.event())["data"]["data"] == {"n": 3}
    assert (await sse.event())["data"]["data"] == {"n": 4}


async def test_unknown_types_are_422_listing_the_known_ones(gw, admin_headers) -> None:
    for query in ("?types=chat,bogus", "?types=", "?correlation_id=bad%20id"):
        resp = await gw.get(EVENTS + query, headers=admin_headers)
        assert resp.status == 422, query
        assert resp.content_type == "application/problem+json"
        body = await resp.json()
        assert body["code"] == "validation_error" and body["correlation_id"]
        assert body["known_types"] == list(EVENT_TYPES)
    body = await (await gw.get(EVENTS + "?types=chat,bogus", headers=admin_headers)).json()
    assert body["errors"][0]["field"] == "types"
    assert "bogus" in body["errors"][0]["message"] and "provider_status" in body["errors"][0]["message"]


async def test_garbage_last_event_id_is_422(gw, admin_headers) -> None:
    for headers, query, field in (
        ({"Last-Event-ID": "not-an-id"}, "", "Last-Event-ID"),
        ({"Last-Event-ID": "1-2-3"}, "", "Last-Event-ID"),
        ({}, "?last_event_id=%00abc", "last_event_id"),
        ({}, "?last_event_id=99999999999999999999999", "last_event_id"),
    ):
        resp = await gw.get(EVENTS + query, headers={**admin_headers, **headers})
        assert resp.status == 422, (headers, query)
        body = await resp.json()
        assert body["code"] == "validation_error" and body["errors"][0]["field"] == field


async def test_resume_replays_what_was_missed_then_goes_live_without_gap_or_duplicate(gw) -> None:
    hub = hub_of(gw)
    sse = await open_stream(gw)
    hub.publish("chat", {"n": 0})
    seen = (await sse.event())["id"]
    sse.resp.close()
    for n in range(1, 6):  # missed while away
        hub.publish("chat", {"n": n})
    await hub_of(gw).wait_online()

    async def keep_publishing() -> None:
        # Published while the resuming client is between subscribing and reading history.
        for n in range(6, 60):
            hub.publish("chat", {"n": n})
            await asyncio.sleep(0)

    publisher = asyncio.create_task(keep_publishing())
    resumed = await open_stream(gw, headers={"Last-Event-ID": seen})
    await publisher
    got = [(await resumed.event())["data"]["data"]["n"] for _ in range(59)]
    assert got == list(range(1, 60))
    hub.publish("chat", {"n": "after"})
    assert (await resumed.event())["data"]["data"]["n"] == "after"


async def test_resume_with_query_parameter_and_header_wins(gw) -> None:
    hub = hub_of(gw)
    sse = await open_stream(gw)
    for n in range(3):
        hub.publish("chat", {"n": n})
    ids = [(await sse.event())["id"] for _ in range(3)]
    resumed = await open_stream(gw, f"?last_event_id={ids[0]}")
    assert [(await resumed.event())["id"] for _ in range(2)] == ids[1:]
    both = await open_stream(gw, f"?last_event_id={ids[0]}", headers={"Last-Event-ID": ids[1]})
    assert (await both.event())["id"] == ids[2]


async def test_reset_first_when_the_id_is_older_than_history(gw, ev_settings, redis_url) -> None:
    hub = hub_of(gw)
    sse = await open_stream(gw)
    for n in range(5):
        hub.publish("chat", {"n": n})
    ids = [(await sse.event())["id"] for _ in range(5)]
    redis = Redis.from_url(redis_url)
    try:
        await redis.xtrim(hub.stream_key, maxlen=2, approximate=False)  # history now keeps 3 and 4
    finally:
        await redis.aclose()
    resumed = await open_stream(gw, headers={"Last-Event-ID": ids[0]})
    reset = await resumed.event()
    assert reset["event"] == "reset" and "id" not in reset
    assert set(reset["data"]) == ENVELOPE and reset["data"]["data"]["oldest_retained_id"] == ids[3]
    assert [(await resumed.event())["id"] for _ in range(2)] == ids[3:]
    # An id this history never issued (e.g. Redis was replaced) resets too.
    future = await open_stream(gw, headers={"Last-Event-ID": "99999999999999-0"})
    assert (await future.event())["event"] == "reset"
    # A retained id resumes normally.
    normal = await open_stream(gw, headers={"Last-Event-ID": ids[3]})
    assert (await normal.event())["id"] == ids[4]


async def test_filtered_resume_still_moves_the_client_position(gw) -> None:
    hub = hub_of(gw)
    sse = await open_stream(gw)
    hub.publish("chat", {"n": 0})
    seen = (await sse.event())["id"]
    hub.publish("metrics", {"n": 1})
    skipped = (await sse.event())["id"]
    resumed = await open_stream(gw, "?types=chat", headers={"Last-Event-ID": seen})
    assert await resumed.record() == {"id": skipped}  # id-only: no event dispatched


async def test_json_page_of_recent_history(gw, admin_headers) -> None:
    hub = hub_of(gw)
    sse = await open_stream(gw)
    for n in range(5):
        hub.publish("chat", {"n": n}, correlation_id="page-1")
        hub.publish("metrics", {"n": n})
    for _ in range(10):
        await sse.event()  # all ten are in history now
    headers = {**admin_headers, "Accept": "application/json"}
    resp = await gw.get(f"{EVENTS}?types=chat&limit=2", headers=headers)
    assert resp.status == 200 and resp.content_type == "application/json"
    page = await resp.json()
    assert [e["data"]["n"] for e in page["events"]] == [4, 3]  # newest first
    assert all(set(e) == ENVELOPE for e in page["events"])
    page2 = await (await gw.get(f"{EVENTS}?types=chat&limit=2&before={page['next']}", headers=headers)).json()
    assert [e["data"]["n"] for e in page2["events"]] == [2, 1]
    last_page = f"{EVENTS}?correlation_id=page-1&limit=5&before={page2['next']}"
    page3 = await (await gw.get(last_page, headers=headers)).json()
    assert [e["data"]["n"] for e in page3["events"]] == [0] and page3["next"] is None
    bad = await gw.get(f"{EVENTS}?limit=0", headers=headers)
    assert bad.status == 422 and (await bad.json())["errors"][0]["field"] == "limit"


async def test_bad_expired_and_forged_tickets_are_401_the_client_can_act_on(gw, db) -> None:
    expired = await EventTickets(db, secret=None, ttl_seconds=30, clock=lambda: time.time() - 3600).issue(
        Principal("ops", frozenset({"read"}))
    )
    valid = (await (await gw.post(TICKET, headers={"X-VX11-Token": ADMIN_TOKEN})).json())["ticket"]
    body, _, signature = valid.partition(".")
    forged_claims = orjson.loads(_unb64(body))
    forged_claims["exp"] += 3600
    forged = _b64(orjson.dumps(forged_claims)) + "." + signature
    for ticket, reason in (
        (expired, "expired"),
        (forged, "bad_signature"),
        ("garbage", "malformed"),
        (valid[:-4] + "AAAA", "bad_signature"),
        ("a.%%%", "malformed"),
    ):
        resp = await gw.get(f"{EVENTS}?ticket={ticket}")
        assert resp.status == 401, ticket
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert problem["code"] == "invalid_token" and problem["ticket_error"] == reason, problem
        assert problem["correlation_id"] == resp.headers["X-Correlation-ID"]
        assert "invalid_token" in resp.headers["WWW-Authenticate"]


async def test_a_ticket_only_opens_event_streams(gw) -> None:
    ticket = (await (await gw.post(TICKET, headers={"X-VX11-Token": ADMIN_TOKEN})).json())["ticket"]
    for method, path, headers in (
        ("GET", "/operator/api/whoami", {}),
        ("GET", "/operator/api/tokens", {}),
        ("POST", TICKET, {}),  # no renewing a ticket with a ticket
        ("GET", EVENTS, {"Accept": "application/json"}),  # the JSON page is an API, not a stream
    ):
        resp = await gw.request(method, f"{path}?ticket={ticket}", headers=headers)
        assert resp.status == 401, path
        assert (await resp.json())["code"] == "invalid_token"
        assert ticket not in await resp.text()


async def test_ticket_is_bound_to_the_token_scopes_and_name(gw, db, make_token) -> None:
    chat_only = await make_token("chat")
    assert (await gw.post(TICKET, headers={"X-VX11-Token": chat_only})).status == 403
    tickets = EventTickets(db, secret=None, ttl_seconds=30)
    no_read = await tickets.issue(Principal("chatter", frozenset({"chat"})))
    resp = await gw.get(f"{EVENTS}?ticket={no_read}")
    assert resp.status == 403 and (await resp.json())["code"] == "forbidden"
    # Tokens themselves are still refused in the query string, here too.
    refused = await gw.get(f"{EVENTS}?token={ADMIN_TOKEN}")
    assert refused.status == 401


async def test_revoking_a_token_voids_the_tickets_it_was_given(gw, admin_headers, make_token) -> None:
    name = f"tk-{uuid.uuid4().hex[:6]}"
    token = await make_token("read", name=name)
    ticket = (await (await gw.post(TICKET, headers={"X-VX11-Token": token})).json())["ticket"]
    opened = await gw.get(f"{EVENTS}?ticket={ticket}")
    assert opened.status == 200
    opened.close()
    assert (await confirmed(gw, "DELETE", f"/operator/api/tokens/{name}", headers=admin_headers)).status == 204
    refused = await gw.get(f"{EVENTS}?ticket={ticket}")
    assert refused.status == 401
    problem = await refused.json()
    assert problem["code"] == "invalid_token" and problem["ticket_error"] == "revoked"
    # The bootstrap token has no row to revoke: its tickets keep working.
    admin_ticket = (await (await gw.post(TICKET, headers=admin_headers)).json())["ticket"]
    still = await gw.get(f"{EVENTS}?ticket={admin_ticket}")
    assert still.status == 200
    still.close()


async def test_a_ticket_of_an_expired_token_says_the_token_expired(aiohttp_client, ev_settings, db,
                                                                     make_token) -> None:
    client = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, token_cache_seconds=0)))
    name = f"tk-{uuid.uuid4().hex[:6]}"
    token = await make_token("read", name=name)
    ticket = (await (await client.post(TICKET, headers={"X-VX11-Token": token})).json())["ticket"]
    await db.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = $1", name)
    refused = await client.get(f"{EVENTS}?ticket={ticket}")
    assert refused.status == 401
    problem = await refused.json()
    assert problem["ticket_error"] == "token_expired" and "expired" in problem["detail"], problem
    assert "revoked" not in problem["detail"]


async def _revoked_error(sse: SSE) -> dict[str, Any]:
    """The stream's last event, once it ends because its token was revoked."""
    # The revocation's own operator_action events may reach the stream before it is ended.
    while (error := await sse.event())["event"] == "operator_action":
        pass
    assert error["event"] == "error" and "id" not in error, error
    await sse.ended()
    return error["data"]["data"]


async def test_revoking_a_token_ends_the_streams_it_opened_at_once(
    aiohttp_client, ev_settings, admin_headers, make_token
) -> None:
    # A 30 s cache period: only the revoking call itself can end the streams within the test.
    gw = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, token_cache_seconds=30)))
    name = f"tk-{uuid.uuid4().hex[:6]}"
    token = await make_token("read", name=name)
    by_header = await open_stream(gw, headers={"X-VX11-Token": token})
    ticket = (await (await gw.post(TICKET, headers={"X-VX11-Token": token})).json())["ticket"]
    resp = await gw.get(f"{EVENTS}?ticket={ticket}")
    assert resp.status == 200
    by_ticket = SSE(resp)
    assert await by_ticket.record() == {"retry": "3000"}
    others = await open_stream(gw)  # the bootstrap token's stream is not touched

    assert (await confirmed(gw, "DELETE", f"/operator/api/tokens/{name}", headers=admin_headers)).status == 204
    async with asyncio.timeout(2):  # no waiting for any check period on the revoking instance
        for sse in (by_header, by_ticket):
            problem = await _revoked_error(sse)
            assert problem["code"] == "invalid_token" and problem["status"] == 401
            assert "revoked" in problem["detail"] and problem["correlation_id"]
    hub_of(gw).publish("chat", {"n": "after"})
    while (event := await others.event())["event"] == "operator_action":
        pass  # the revocation's own steps, published before "after"
    assert event["data"]["data"] == {"n": "after"}
    assert hub_of(gw).clients == 1


async def test_a_token_revoked_elsewhere_ends_its_streams_within_the_cache_period(
    aiohttp_client, ev_settings, db, make_token
) -> None:
    name = f"tk-{uuid.uuid4().hex[:6]}"
    token = await make_token("read", name=name)
    client = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, token_cache_seconds=0.2)))
    by_header = await open_stream(client, headers={"X-VX11-Token": token})
    ticket = (await (await client.post(TICKET, headers={"X-VX11-Token": token})).json())["ticket"]
    resp = await client.get(f"{EVENTS}?ticket={ticket}")
    by_ticket = SSE(resp)
    assert await by_ticket.record() == {"retry": "3000"}
    # Revoked as another instance or `tentaculo token revoke` does: in the database only.
    assert await queries.revoke_token(db, name)
    started = time.perf_counter()
    for sse in (by_header, by_ticket):
        assert (await _revoked_error(sse))["code"] == "invalid_token"
    assert time.perf_counter() - started < 3
    assert hub_of(client).clients == 0


async def test_revoking_a_token_stops_a_replay_in_progress(
    aiohttp_client, ev_settings, admin_headers, make_token
) -> None:
    gw = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, token_cache_seconds=30)))
    hub = hub_of(gw)
    name = f"tk-{uuid.uuid4().hex[:6]}"
    token = await make_token("read", name=name)
    first = await open_stream(gw)
    hub.publish("chat", {"n": 0})
    since = (await first.event())["id"]
    # 30 MB of history to replay: far more than socket buffers hold, so the replay is still
    # writing (waiting on the client) when the token is revoked.
    total, blob = 500, "x" * 60_000
    for n in range(1, total + 1):
        hub.publish("chat", {"n": n, "blob": blob})
    await wait_for(lambda: hub.snapshot()["published"] >= total + 1)
    resumed = await open_stream(gw, headers={"X-VX11-Token": token, "Last-Event-ID": since})
    assert (await resumed.event())["data"]["data"]["n"] == 1
    assert (await confirmed(gw, "DELETE", f"/operator/api/tokens/{name}", headers=admin_headers)).status == 204
    received = 1
    async with asyncio.timeout(10):
        while (event := await resumed.event())["event"] in ("chat", "operator_action"):
            received += event["event"] == "chat"
    assert event["data"]["data"]["code"] == "invalid_token"
    assert received < total  # the replay stopped; it did not send the rest of the history first
    await resumed.ended()



async def test_tickets_never_reach_the_logs(aiohttp_client, ev_settings, db) -> None:
    client = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, access_log="on")))
    with capture_logs(processors=shared_processors([ADMIN_TOKEN])) as logs:
        ticket = (await (await client.post(TICKET, headers={"X-VX11-Token": ADMIN_TOKEN})).json())["ticket"]
        await client.get(f"/operator/api/whoami?ticket={ticket}")
        resp = await client.get(f"{EVENTS}?ticket={ticket}")
        await SSE(resp).record()
        resp.close()
    assert any(e["event"] == "request" for e in logs)
    assert ticket not in json.dumps(logs, default=str)


async def test_a_client_that_never_reads_is_disconnected_and_memory_stays_bounded(aiohttp_client, ev_settings) -> None:
    client = await serve(
        aiohttp_client, create_app(dataclasses.replace(ev_settings, events_client_queue=4, events_history_max=50))
    )
    hub = hub_of(client)
    reader = await open_stream(client)  # a healthy client alongside keeps getting everything
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.port))
    request = f"GET {EVENTS} HTTP/1.1\r\nHost: x\r\nX-VX11-Token: {ADMIN_TOKEN}\r\n\r\n".encode()
    await asyncio.get_running_loop().sock_sendall(sock, request)
    try:

        async def both_subscribed() -> bool:
            return hub.clients == 2

        await wait_for(both_subscribed)
        async with asyncio.timeout(10):
            blob = "x" * 48_000
            sent = 0
            while hub.snapshot()["slow_disconnects"] == 0:
                hub.publish("metrics", {"n": sent, "blob": blob})
                sent += 1
                event = await reader.event()  # paced by the healthy reader: the laggard falls behind
                assert event["data"]["data"]["n"] == sent - 1
        assert hub.clients == 1
        assert hub.snapshot()["slow_disconnects"] == 1
        hub.publish("metrics", {"n": "still-live"})
        assert (await reader.event())["data"]["data"]["n"] == "still-live"
    finally:
        sock.close()


async def test_one_token_cannot_take_every_event_stream(aiohttp_client, ev_settings, make_token) -> None:
    """At its cap (default 20, streams opened with its tickets included) a token gets 429 with
    Retry-After; other tokens still open streams, and a closed stream frees its slot."""
    client = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, events_max_clients=30)))
    hub = hub_of(client)
    token = await make_token("read")
    mine = {"X-VX11-Token": token}
    streams = [await open_stream(client, headers=mine) for _ in range(19)]
    ticket = (await (await client.post(TICKET, headers=mine)).json())["ticket"]
    by_ticket = await client.get(f"{EVENTS}?ticket={ticket}")
    assert by_ticket.status == 200
    assert await SSE(by_ticket).record() == {"retry": "3000"}

    second_ticket = (await (await client.post(TICKET, headers=mine)).json())["ticket"]
    for refused in (await client.get(EVENTS, headers=mine), await client.get(f"{EVENTS}?ticket={second_ticket}")):
        assert refused.status == 429
        assert refused.content_type == "application/problem+json" and int(refused.headers["Retry-After"]) >= 1
        problem = await refused.json()
        assert problem["code"] == "rate_limited" and problem["correlation_id"] and "20" in problem["detail"]
        assert token not in await refused.text()

    others = [await open_stream(client), await open_stream(client, headers={"X-VX11-Token": await make_token("read")})]
    hub.publish("chat", {"n": "for all"})
    assert (await others[0].event())["data"]["data"] == {"n": "for all"}
    assert hub.clients == 22

    streams.pop().resp.close()

    async def one_closed() -> bool:
        return hub.clients == 21

    await wait_for(one_closed)
    streams.append(await open_stream(client, headers=mine))
    assert (await client.get(EVENTS, headers=mine)).status == 429


async def test_redis_restarted_mid_stream(aiohttp_client, ev_settings, admin_headers) -> None:
    proxy, url = await proxy_redis(ev_settings.redis_url or "")
    client = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, redis_url=url)))
    hub = hub_of(client)
    sse = await open_stream(client)
    hub.publish("chat", {"n": "before"})
    last = (await sse.event())["id"]

    await proxy.cut()
    error = await sse.event()
    assert error["event"] == "error" and "id" not in error
    assert error["data"]["severity"] == "error"
    assert error["data"]["data"]["code"] == "upstream_unavailable"
    assert "Redis" in error["data"]["data"]["detail"]
    await sse.ended()
    assert hub.snapshot()["status"] == "error" and hub.snapshot()["reason"]

    refused = await client.get(EVENTS, headers=admin_headers)
    assert refused.status == 503
    assert refused.content_type == "application/problem+json"
    problem = await refused.json()
    assert problem["code"] == "upstream_unavailable" and "Redis" in problem["detail"] and problem["correlation_id"]
    assert int(refused.headers["Retry-After"]) >= 1
    page = await client.get(EVENTS, headers={**admin_headers, "Accept": "application/json"})
    assert page.status == 503

    started = time.perf_counter()
    assert hub.publish("chat", {"n": "during"})  # never blocks; waits in the outbox
    assert time.perf_counter() - started < 0.05

    await proxy.restore()
    async with asyncio.timeout(10):
        await hub.wait_online()
    resumed = await open_stream(client, headers={"Last-Event-ID": last})
    assert (await resumed.event())["data"]["data"] == {"n": "during"}
    hub.publish("chat", {"n": "after"})
    assert (await resumed.event())["data"]["data"] == {"n": "after"}
    assert hub.snapshot()["status"] == "on" and hub.snapshot()["reconnects"] == 1
    await proxy.close()


async def test_shutdown_closes_streams_promptly(aiohttp_client, ev_settings) -> None:
    client = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, shutdown_timeout=30)))
    streams = [await open_stream(client) for _ in range(3)]
    started = time.perf_counter()
    async with asyncio.timeout(5):
        await client.server.close()
        for sse in streams:
            await sse.ended()
    assert time.perf_counter() - started < 3


async def test_publish_rejects_unknown_types_and_oversized_events(gw) -> None:
    hub = hub_of(gw)
    with pytest.raises(ValueError):
        hub.publish("gossip", {})
    with pytest.raises(ValueError):
        hub.publish("chat", {"blob": "x" * 70_000})
    with pytest.raises(ValueError):
        hub.publish("chat", {}, severity="fatal")


async def test_publish_takes_the_correlation_id_of_the_current_request(gw) -> None:
    import structlog

    sse = await open_stream(gw)
    with structlog.contextvars.bound_contextvars(correlation_id="from-request"):
        hub_of(gw).publish("chat", {})
    assert (await sse.event())["data"]["correlation_id"] == "from-request"


async def test_full_outbox_drops_and_counts(ev_settings) -> None:
    redis = Redis.from_url("redis://127.0.0.1:1")  # never started: nothing drains the outbox
    hub = EventHub(redis, prefix="unused:", instance="t", publish_buffer=2)
    assert hub.publish("chat", {}) and hub.publish("chat", {})
    assert not hub.publish("chat", {})
    assert hub.snapshot()["publish_dropped"] == 1 and hub.snapshot()["publish_queued"] == 2
    await redis.aclose()


def test_event_settings_are_validated() -> None:
    base = {"TENTACULO_DATABASE_URL": "postgresql://x/y"}
    for var, value in (
        ("TENTACULO_EVENTS_PING_SECONDS", "20"),
        ("TENTACULO_EVENT_TICKET_SECONDS", "120"),
        ("TENTACULO_EVENTS_CLIENT_QUEUE", "0"),
        ("TENTACULO_EVENTS_MAX_STREAMS_PER_TOKEN", "0"),
        ("TENTACULO_EVENTS_SEND_BUFFER_BYTES", "100"),
        ("TENTACULO_EVENT_TICKET_SECRET", "short"),
    ):
        with pytest.raises(SettingsError) as info:
            Settings.from_env({**base, var: value})
        assert info.value.variable == var
    settings = Settings.from_env(
        {**base, "TENTACULO_EVENTS_PING_SECONDS": "2.5", "TENTACULO_EVENT_TICKET_SECRET": "s" * 40}
    )
    assert settings.events_ping_seconds == 2.5
    assert "s" * 40 not in repr(settings)


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def test_chats_and_provider_status_changes_are_published(gw, admin_headers) -> None:
    sse = await open_stream(gw, "?types=chat,provider_status")
    failing = {"message": "hi", "provider": "mock", "metadata": {"mock": {"fail": "before"}}}
    resp = await gw.post("/operator/api/chat", json=failing, headers={**admin_headers, "X-Correlation-ID": "chat-1"})
    assert resp.status == 503, await resp.text()
    status = await sse.event()
    assert status["event"] == "provider_status", status
    assert status["data"]["correlation_id"] == "chat-1"  # the request that caused the change
    assert status["data"]["data"]["provider"] == "mock" and status["data"]["data"]["previous_status"] == "on"
    assert status["data"]["data"]["status"] in ("degraded", "error") and status["data"]["severity"] != "info"
    chat = await sse.event()
    assert chat["event"] == "chat" and chat["data"]["correlation_id"] == "chat-1"
    assert chat["data"]["data"]["status"] == "error" and chat["data"]["severity"] == "error"

    ok = await gw.post("/operator/api/chat", json={"message": "hi", "provider": "mock"}, headers=admin_headers)
    assert ok.status == 200
    answer = await ok.json()
    events = [await sse.event() for _ in range(2)]
    chat = next(e for e in events if e["event"] == "chat")
    assert chat["data"]["correlation_id"] == answer["correlation_id"]
    assert chat["data"]["data"]["message_id"] == answer["message_id"]
    assert chat["data"]["data"]["status"] == "ok" and chat["data"]["data"]["provider"] == "mock"
    assert answer["content"] not in json.dumps(chat)  # metadata only, never the text
    recovered = next(e for e in events if e["event"] == "provider_status")
    assert recovered["data"]["data"]["status"] == "on"


async def _history_ids(redis_url: str, hub: EventHub) -> list[bytes]:
    redis = Redis.from_url(redis_url)
    try:
        return [eid for eid, _fields in await redis.xrange(hub.stream_key)]
    finally:
        await redis.aclose()


async def test_resume_after_redis_came_back_empty_is_reset_not_a_silent_gap(gw, redis_url) -> None:
    """Redis replaced by an empty one (failover, flushed cache): the events published before it were
    lost, and the ids the new one mints are later than the client's, yet they do not continue it."""
    hub = hub_of(gw)
    live = await open_stream(gw)
    hub.publish("chat", {"n": "seen"})
    seen = (await live.event())["id"]
    for n in range(20):  # the client is away for these
        hub.publish("chat", {"n": n})
    for _ in range(20):
        await live.event()
    live.resp.close()
    redis = Redis.from_url(redis_url)
    try:  # this test's keys only: the stream and its epoch, as an empty Redis would have them
        await redis.delete(hub.stream_key, hub.stream_key.removesuffix("history") + "epoch")
    finally:
        await redis.aclose()
    watcher = await open_stream(gw)
    for n in range(3):
        hub.publish("chat", {"n": f"new-{n}"})
    new_ids = [(await watcher.event())["id"] for _ in range(3)]
    assert all(new > seen for new in new_ids)  # ids alone cannot tell: they look like a continuation

    resumed = await open_stream(gw, headers={"Last-Event-ID": seen})
    reset = await resumed.event()
    assert reset["event"] == "reset" and "id" not in reset, reset
    assert reset["data"]["data"]["oldest_retained_id"] == new_ids[0]
    assert [(await resumed.event())["id"] for _ in range(3)] == new_ids
    # The new ids resume normally: no reset, nothing repeated.
    again = await open_stream(gw, headers={"Last-Event-ID": new_ids[0]})
    assert [(await again.event())["id"] for _ in range(2)] == new_ids[1:]


async def test_a_bare_id_without_its_history_is_answered_with_reset(gw) -> None:
    hub = hub_of(gw)
    sse = await open_stream(gw)
    for n in range(2):
        hub.publish("chat", {"n": n})
    ids = [(await sse.event())["id"] for _ in range(2)]
    bare = ids[0].rpartition(":")[2]
    assert bare != ids[0]  # every id names its history
    resumed = await open_stream(gw, f"?last_event_id={bare}")
    assert (await resumed.event())["event"] == "reset"
    assert [(await resumed.event())["id"] for _ in range(2)] == ids


async def test_a_publish_retried_across_a_silent_partition_is_applied_once(
    aiohttp_client, ev_settings, redis_url
) -> None:
    """Redis silenced (connections open, nothing answered) past the client's timeout: the publisher
    retries, the first attempt still reaches Redis when the partition heals, and the event is
    nevertheless in history once and delivered once."""
    proxy, url = await proxy_redis(ev_settings.redis_url or "")
    client = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, redis_url=url)))
    hub = hub_of(client)
    # Only chats: the partition also makes the gateway publish status changes of its own.
    sse = await open_stream(client, "?types=chat")
    hub.publish("chat", {"n": "before"})
    assert (await sse.event())["data"]["data"] == {"n": "before"}

    proxy.silence()
    hub.publish("chat", {"n": "during"})
    await wait_for(lambda: hub.snapshot()["publish_failures"] >= 1, timeout=30)  # timed out; retried later
    await proxy.restore()
    assert (await sse.event(timeout=30))["data"]["data"] == {"n": "during"}
    hub.publish("chat", {"n": "after"})
    assert (await sse.event(timeout=30))["data"]["data"] == {"n": "after"}  # not "during" again
    await wait_for(lambda: hub.snapshot()["publish_queued"] == 0)
    # The abandoned attempts reached Redis on restore too, before "after" was even published.
    assert await _history_chats(redis_url, hub) == ["before", "during", "after"]
    await proxy.close()


async def _history_chats(redis_url: str, hub: EventHub) -> list[object]:
    """The ``n`` of every chat event in the retained history, oldest first."""
    redis = Redis.from_url(redis_url)
    try:
        entries = await redis.xrange(hub.stream_key)
    finally:
        await redis.aclose()
    chats = [orjson.loads(fields[b"e"]) for _eid, fields in entries]
    return [c["data"].get("n") for c in chats if c["type"] == "chat"]


def _send_queue(server_port: int, client_port: int) -> int:
    """Bytes the kernel holds queued to send on the server's side of one loopback connection."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return int(fields[4].split(":")[0], 16)
    raise LookupError("no such connection")


async def _never_reading_stream(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request = f"GET {EVENTS} HTTP/1.1\r\nHost: x\r\nX-VX11-Token: {ADMIN_TOKEN}\r\n\r\n".encode()
    await loop.sock_sendall(sock, request)
    return sock


async def test_a_client_that_stops_reading_costs_a_bounded_kernel_send_buffer(aiohttp_client, ev_settings) -> None:
    """The kernel's send buffer of a stuck stream is bounded by TENTACULO_EVENTS_SEND_BUFFER_BYTES (64 KiB;
    Linux books twice that) instead of growing to megabytes by autotuning while the stream waits to be cut."""
    client = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, events_client_queue=1000)))
    hub = hub_of(client)
    reader = await open_stream(client)
    sock = await _never_reading_stream(client.port)
    try:
        await wait_for(lambda: hub.clients == 2)
        blob = "x" * 48_000
        async with asyncio.timeout(20):
            # Until the stuck stream's writer waits on a full socket: events then pile up in its queue.
            while max(sub.queued for sub in hub.subscribers) < 8:
                hub.publish("metrics", {"blob": blob})
                await reader.event()
        held = _send_queue(client.port, sock.getsockname()[1])
        print(f"kernel send queue of a stuck event stream: {held} bytes")
        assert held <= 192 * 1024, held
    finally:
        sock.close()


async def _read_until_cut(sock: socket.socket, until: bytes | None = None) -> tuple[list[dict[str, Any]], str]:
    """Every complete event a raw HTTP/1.0 stream delivered, and how it ended ("eof", "reset", or
    "open" once ``until`` was read)."""
    loop = asyncio.get_running_loop()
    raw = b""
    how = "eof"
    try:
        async with asyncio.timeout(20):
            while data := await loop.sock_recv(sock, 65536):
                raw += data
                if until is not None and until in raw[-len(data) - len(until):]:
                    how = "open"
                    break
    except ConnectionResetError:
        how = "reset"
    body = raw.partition(b"\r\n\r\n")[2]
    events = []
    for record in body.split(b"\r\n\r\n")[:-1]:  # the last piece is cut short, or empty
        fields = dict(line.split(b": ", 1) for line in record.split(b"\r\n") if b": " in line)
        if b"data" in fields:
            events.append(json.loads(fields[b"data"]))
    return events, how


async def _paused_stream(client: TestClient) -> socket.socket:
    """A stream whose client reads nothing until told to (HTTP/1.0: the body is the bare SSE text)."""
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", client.port))
    await loop.sock_sendall(sock, f"GET {EVENTS} HTTP/1.0\r\nX-VX11-Token: {ADMIN_TOKEN}\r\n\r\n".encode())
    return sock


async def test_a_slow_client_rides_out_a_burst_of_1500_events(gw) -> None:
    """A client that reads nothing while 1,500 events are published in a burst keeps its stream: the
    default queue (TENTACULO_EVENTS_CLIENT_QUEUE) holds more than such a burst, whatever the socket holds."""
    hub = hub_of(gw)
    reader = await open_stream(gw)
    sock = await _paused_stream(gw)
    try:
        await wait_for(lambda: hub.clients == 2)
        for n in range(1500):  # 6 MB: more than the kernel would buffer for it even left to autotune
            hub.publish("chat", {"n": n, "pad": "y" * 4000})
        for _ in range(1500):
            await reader.event()
        assert hub.snapshot()["slow_disconnects"] == 0
        assert hub.clients == 2
        hub.publish("chat", {"n": "last"})
        await reader.event()
        events, how = await _read_until_cut(sock, until=b'"n":"last"}}\r\n\r\n')
        assert how == "open"
        assert [e["data"]["n"] for e in events] == [*range(1500), "last"]
    finally:
        sock.close()


async def test_a_client_further_behind_than_its_queue_is_cut_and_resumes_without_loss(
    aiohttp_client, ev_settings
) -> None:
    """The rule that cuts a slow client: more than TENTACULO_EVENTS_CLIENT_QUEUE events waiting for it
    beyond what its socket holds. Its connection is closed at once, mid-record maybe and with no
    event saying why (its socket is full), and resuming with the last id it received replays the
    rest, without reset, gap or duplicate."""
    client = await serve(aiohttp_client, create_app(dataclasses.replace(ev_settings, events_client_queue=16)))
    hub = hub_of(client)
    reader = await open_stream(client)
    sock = await _paused_stream(client)
    try:
        await wait_for(lambda: hub.clients == 2)
        total = 400  # 800 KB: more than the socket buffers and the queue hold together
        for n in range(total):  # paced by a client that keeps up: only the paused one falls behind
            hub.publish("chat", {"n": n, "pad": "y" * 2000})
            await reader.event()
        assert hub.snapshot()["slow_disconnects"] == 1
        received, how = await _read_until_cut(sock)
    finally:
        sock.close()
    assert 0 < len(received) < total  # ended early: closed mid-stream, and no error event can say why
    assert all(e["type"] == "chat" for e in received), how
    assert [e["data"]["n"] for e in received] == list(range(len(received)))
    resumed = await open_stream(client, headers={"Last-Event-ID": received[-1]["id"]})
    rest = [await resumed.event() for _ in range(total - len(received))]
    assert [e["event"] for e in rest] == ["chat"] * len(rest)  # no reset
    assert [e["data"]["data"]["n"] for e in rest] == list(range(len(received), total))


async def test_a_page_cursor_of_an_emptied_history_is_refused_and_a_resume_into_nothing_is_reset(
    gw, redis_url, admin_headers
) -> None:
    hub = hub_of(gw)
    sse = await open_stream(gw)
    for n in range(3):
        hub.publish("chat", {"n": n})
    ids = [(await sse.event())["id"] for _ in range(3)]
    headers = {**admin_headers, "Accept": "application/json"}
    page = await (await gw.get(f"{EVENTS}?limit=1", headers=headers)).json()
    assert page["next"] == ids[2]
    redis = Redis.from_url(redis_url)
    try:
        await redis.delete(hub.stream_key, hub.epoch_key)
    finally:
        await redis.aclose()
    resumed = await open_stream(gw, headers={"Last-Event-ID": ids[2]})
    reset = await resumed.event()
    assert reset["event"] == "reset" and reset["data"]["data"]["oldest_retained_id"] is None
    hub.publish("chat", {"n": "new"})
    fresh = await resumed.event()
    assert fresh["data"]["data"] == {"n": "new"}
    # The old page's cursor points into a history Redis no longer holds: say so, do not page the new one.
    stale = await gw.get(f"{EVENTS}?limit=1&before={page['next']}", headers=headers)
    assert stale.status == 422
    error = (await stale.json())["errors"][0]
    assert error["field"] == "before" and "no longer holds" in error["message"]
    current = await (await gw.get(f"{EVENTS}?limit=5", headers=headers)).json()
    assert [e["id"] for e in current["events"]] == [fresh["id"]] and current["next"] is None


async def test_a_history_emptied_while_a_resume_is_being_planned_still_resets(gw, redis_url) -> None:
    """Redis emptied between the resume's check of the epoch and its read of the history: the read
    belongs to the new history, so the client is told reset rather than continued into it."""
    hub = hub_of(gw)
    sse = await open_stream(gw)
    hub.publish("chat", {"n": "seen"})
    seen = (await sse.event())["id"]
    hub.publish("chat", {"n": "lost"})
    await sse.event()
    original = hub.history.since

    async def emptied_first(start: str, count: int) -> list[Any]:
        hub.history.since = original  # type: ignore[method-assign]
        redis = Redis.from_url(redis_url)
        try:
            await redis.delete(hub.stream_key, hub.epoch_key)
        finally:
            await redis.aclose()
        hub.publish("chat", {"n": "new"})
        await sse.event()  # in the new history now
        return await original(start, count)

    hub.history.since = emptied_first  # type: ignore[method-assign]
    resumed = await open_stream(gw, headers={"Last-Event-ID": seen})
    assert (await resumed.event())["event"] == "reset"
    assert (await resumed.event())["data"]["data"] == {"n": "new"}


async def test_a_connection_that_carried_an_event_stream_is_not_reused(gw) -> None:
    """Its socket's send buffer stays as small as a stream needs (TENTACULO_EVENTS_SEND_BUFFER_BYTES):
    the gateway closes it when the stream ends rather than serve the next request, maybe a large
    download, through it."""
    hub = hub_of(gw)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", gw.port))
    await loop.sock_sendall(sock, f"GET {EVENTS} HTTP/1.1\r\nHost: x\r\nX-VX11-Token: {ADMIN_TOKEN}\r\n\r\n".encode())
    try:
        await wait_for(lambda: hub.clients == 1)
        hub.end_streams("feature_disabled")  # as turning the events flag off does
        raw = b""
        async with asyncio.timeout(5):
            while data := await loop.sock_recv(sock, 65536):
                raw += data
        assert b"event: error" in raw and raw.endswith(b"0\r\n\r\n")  # ended, then closed
        # Said up front, so a client does not pool the connection only to find it closed.
        assert b"\r\nConnection: close\r\n" in raw.partition(b"\r\n\r\n")[0]
    finally:
        sock.close()

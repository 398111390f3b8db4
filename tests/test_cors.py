"""Pages on other origins calling the gateway (CORS): the aiohttp test client for the headers, and
a real Chromium for what a browser does with them."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.db import queries
from tentaculo.http.cors import cors_headers
from tentaculo.settings import Settings, SettingsError
from tests.chat_helpers import chat_gateway
from tests.helpers import ADMIN_TOKEN, audit_row_of, serve
from tests.proxy_upstreams import ModuleApp

PAGE = "http://127.0.0.1:5173"  # a frontend's dev server, as the browser names its origin
OTHER = "http://127.0.0.1:5174"
API_HEADERS = ("X-VX11-Token", "Authorization", "Content-Type", "Last-Event-ID", "X-Correlation-ID", "X-VX11-Confirm")
EXPOSED = ("X-Correlation-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
Gateway = Callable[..., Awaitable[TestClient]]


def preflight(origin: str, method: str = "GET", headers: str = "x-vx11-token") -> dict[str, str]:
    """What a browser sends before a call that carries a token header."""
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


def cors_headers_of(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith("access-control-")}


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


def assert_granted(headers: CIMultiDictProxy[str], what: str = "", origin: str = PAGE) -> None:
    """The grant of an actual answer: the origin itself (never '*'), Vary, exposed headers, no credentials."""
    assert headers.getall("Access-Control-Allow-Origin", []) == [origin], what
    assert "origin" in listed(headers["Vary"]), what
    assert listed(headers["Access-Control-Expose-Headers"]) >= {h.lower() for h in EXPOSED}, what
    assert "Access-Control-Allow-Credentials" not in headers, what


@pytest.fixture
def start_gateway(aiohttp_client, settings: Settings, module: ModuleApp) -> Gateway:
    """A gateway listing PAGE, whose ``madre`` module is ``module``; ``changes`` go to settings."""

    async def start(**changes: Any) -> TestClient:
        changes.setdefault("cors_origins", (PAGE,))
        changes.setdefault("service_urls", {"madre": module.url + "/base/"})
        return await serve(aiohttp_client, create_app(dataclasses.replace(settings, **changes)))

    return start


# --- the setting ---------------------------------------------------------------------------------


def test_origins_are_written_as_browsers_send_them() -> None:
    env = {"TENTACULO_CORS_ORIGINS": "HTTP://LocalHost:5173, https://ops.example.com:443,http://[::1]:80,"
                                     "http://localhost:5173"}
    assert Settings.from_env(env).cors_origins == ("http://localhost:5173", "https://ops.example.com", "http://[::1]")
    assert Settings.from_env({}).cors_origins == ()


def test_origins_given_in_code_are_checked_too() -> None:
    with pytest.raises(SettingsError, match="TENTACULO_CORS_ORIGINS"):
        Settings(cors_origins=("http://LocalHost:5173",)).validate()
    Settings(cors_origins=("http://localhost:5173",)).validate()


@pytest.mark.parametrize("value", [
    "*", "null", "localhost:5173", "ftp://files.example.com", "http://localhost:5173/", "http://localhost:5173/app",
    "http://localhost:5173?x=1", "http://user@localhost:5173", "http://localhost:99999", "http://local host",
])
def test_anything_but_an_origin_stops_the_start_naming_the_variable(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"TENTACULO_CORS_ORIGINS": f"http://ok.example.com,{value}"})
    assert caught.value.variable == "TENTACULO_CORS_ORIGINS"


# --- preflights ----------------------------------------------------------------------------------


async def test_a_listed_origins_preflight_is_answered_before_auth(start_gateway) -> None:
    gw = await start_gateway()
    for method, path in (("GET", "/operator/api/whoami"), ("POST", "/operator/api/events/ticket"),
                         ("PUT", "/operator/api/features/chat"), ("DELETE", "/operator/api/tokens/x")):
        resp = await gw.options(path, headers=preflight(PAGE, method, "x-vx11-token,content-type"))
        assert resp.status == 204, (path, await resp.text())  # no token was sent: auth never saw it
        assert await resp.read() == b""
        assert resp.headers["Access-Control-Allow-Origin"] == PAGE
        assert method in {m.upper() for m in listed(resp.headers["Access-Control-Allow-Methods"])}
        assert listed(resp.headers["Access-Control-Allow-Headers"]) == {h.lower() for h in API_HEADERS}
        assert int(resp.headers["Access-Control-Max-Age"]) > 0
        assert "origin" in listed(resp.headers["Vary"])
        assert "Access-Control-Allow-Credentials" not in resp.headers
        assert resp.headers["X-Correlation-ID"]


@pytest.mark.parametrize("origin", [
    OTHER,  # another port
    "http://localhost:5173",  # another host name for the same address
    "https://127.0.0.1:5173",  # another scheme
    "null",  # a sandboxed frame or a file:// page
])
async def test_an_unlisted_origins_preflight_is_refused_without_any_cors_header(start_gateway, origin: str) -> None:
    gw = await start_gateway()
    resp = await gw.options("/operator/api/whoami", headers=preflight(origin))
    assert resp.status == 403
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["code"] == "forbidden" and body["correlation_id"] == resp.headers["X-Correlation-ID"]
    assert cors_headers_of(resp.headers) == {}


async def test_with_no_origin_listed_every_preflight_is_refused(gateway) -> None:
    resp = await gateway.options("/operator/api/whoami", headers=preflight(PAGE))
    assert resp.status == 403
    assert cors_headers_of(resp.headers) == {}
    assert "Vary" not in resp.headers  # nothing varies by origin then


async def test_a_preflight_to_the_proxy_is_answered_by_the_gateway_never_by_the_module(
    start_gateway, module, admin_headers
) -> None:
    gw = await start_gateway()
    resp = await gw.options("/operator/api/proxy/madre/echo/x", headers=preflight(PAGE, "PATCH", "content-type"))
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
    assert "PATCH" in {m.upper() for m in listed(resp.headers["Access-Control-Allow-Methods"])}
    resp = await gw.options("/operator/api/proxy/madre/echo/x", headers=preflight(OTHER, "PATCH"))
    assert resp.status == 403 and cors_headers_of(resp.headers) == {}
    assert module.requests_to("/base/") == []
    # An OPTIONS call that is no preflight is still the module's to answer, with a token as ever.
    resp = await gw.options("/operator/api/proxy/madre/echo/x", headers={**admin_headers, "Origin": PAGE})
    assert resp.status == 200 and (await resp.json())["method"] == "OPTIONS"
    assert [s.method for s in module.requests_to("/base/")] == ["OPTIONS"]
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE


async def test_preflights_are_audited_as_the_call_they_announce(start_gateway, db, admin_headers) -> None:
    gw = await start_gateway()
    granted, refused, unrouted, proxied = (f"cors-{n}-{uuid.uuid4().hex[:8]}" for n in range(4))
    await gw.options("/operator/api/events/ticket", headers={**preflight(PAGE, "POST"), "X-Correlation-ID": granted})
    await gw.options("/operator/api/whoami", headers={**preflight(OTHER), "X-Correlation-ID": refused})
    resp = await gw.options("/operator/api/nowhere", headers={**preflight(PAGE), "X-Correlation-ID": unrouted})
    assert resp.status == 204  # the call itself will get its 404, readable by the page
    await gw.options("/operator/api/proxy/madre/x", headers={**preflight(PAGE, "PUT"), "X-Correlation-ID": proxied})
    rows = [await audit_row_of(db, cid) for cid in (granted, refused, proxied)]
    assert [(r["method"], r["route"], r["status"], r["token_name"]) for r in rows] == [
        ("OPTIONS", "/operator/api/events/ticket", 204, None),
        ("OPTIONS", "/operator/api/whoami", 403, None),
        ("OPTIONS", "/operator/api/proxy/{service}/{path}", 204, None),
    ]
    # Rows are written in order: once a later call's row is there, the unrouted preflight's would be.
    later = f"cors-later-{uuid.uuid4().hex[:8]}"
    await gw.get("/operator/api/whoami", headers={**admin_headers, "X-Correlation-ID": later})
    await audit_row_of(db, later)
    assert await queries.audit_rows_for(db, unrouted) == []


# --- actual answers ------------------------------------------------------------------------------


async def test_every_kind_of_answer_to_a_listed_origin_carries_the_grant(start_gateway, make_token, module) -> None:
    gw = await start_gateway()
    token = await make_token("read", "operate")
    page = {"Origin": PAGE, "X-VX11-Token": token}
    answers = {
        "ok": await gw.get("/operator/api/whoami", headers=page),
        "401": await gw.get("/operator/api/whoami", headers={"Origin": PAGE}),
        "401 bad token": await gw.get("/operator/api/whoami", headers={"Origin": PAGE, "X-VX11-Token": "x" * 40}),
        "403": await gw.get("/operator/api/tokens", headers=page),
        "404": await gw.get("/operator/api/nowhere", headers=page),
        "405": await gw.delete("/operator/api/whoami", headers=page),
        "proxied": await gw.get("/operator/api/proxy/madre/echo/x", headers=page),
        "proxied chunked": await gw.get("/operator/api/proxy/madre/chunks?count=3", headers=page),
    }
    assert answers["401"].headers["WWW-Authenticate"].startswith("Bearer")
    for name, resp in answers.items():
        assert_granted(resp.headers, name)
    module.release_sse.set()
    async with gw.get("/operator/api/proxy/madre/sse", headers=page) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert_granted(resp.headers)
        assert b"event: second" in await resp.read()


async def test_an_event_stream_opened_with_a_ticket_carries_the_grant(start_gateway, make_token) -> None:
    gw = await start_gateway()
    token = await make_token("read")
    resp = await gw.post("/operator/api/events/ticket", headers={"Origin": PAGE, "X-VX11-Token": token})
    assert_granted(resp.headers)
    ticket = (await resp.json())["ticket"]
    async with gw.get(f"/operator/api/events?ticket={ticket}", headers={"Origin": PAGE}) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert_granted(stream.headers)
        assert (await stream.content.readline()).startswith(b"retry:")
    # A refused stream (here an unusable ticket) is readable by the page too, with the reason why.
    resp = await gw.get("/operator/api/events?ticket=forged", headers={"Origin": PAGE})
    assert resp.status == 401 and (await resp.json())["code"] == "invalid_token"
    assert_granted(resp.headers)


async def test_unlisted_origins_get_no_cors_header_on_any_answer(start_gateway, admin_headers) -> None:
    gw = await start_gateway()
    for origin in (OTHER, "http://localhost:5173", "null"):
        for resp in (
            await gw.get("/operator/api/whoami", headers={**admin_headers, "Origin": origin}),
            await gw.get("/operator/api/whoami", headers={"Origin": origin}),
        ):
            assert resp.status in (200, 401)
            assert cors_headers_of(resp.headers) == {}, origin
            # The answer still says it depends on Origin, so no cache hands it to a listed page.
            assert "origin" in listed(resp.headers["Vary"])
    resp = await gw.get("/operator/api/whoami", headers=admin_headers)  # no Origin: curl, scripts
    assert cors_headers_of(resp.headers) == {} and "origin" in listed(resp.headers["Vary"])


async def test_a_modules_own_grant_never_reaches_the_browser(aiohttp_client, settings, admin_headers) -> None:
    async def generous(request: web.Request) -> web.Response:
        return web.json_response({"module": True}, headers={
            "Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": "X-Module-Secret", "X-Module-Secret": "s"})

    module_app = web.Application()
    module_app.router.add_get("/{tail:.*}", generous)
    module = await aiohttp_client(module_app)
    for listing in ((PAGE,), ()):
        gw = await serve(aiohttp_client, create_app(dataclasses.replace(
            settings, cors_origins=listing, service_urls={"madre": str(module.make_url("/"))})))
        for origin in (PAGE, OTHER):
            resp = await gw.get("/operator/api/proxy/madre/x", headers={**admin_headers, "Origin": origin})
            assert resp.status == 200 and (await resp.json()) == {"module": True}
            if listing and origin == PAGE:
                assert_granted(resp.headers)
                assert "x-module-secret" not in listed(resp.headers["Access-Control-Expose-Headers"])
            else:
                assert cors_headers_of(resp.headers) == {}, (listing, origin)


async def test_vary_keeps_what_an_answer_already_varies_on(aiohttp_client) -> None:
    async def negotiated(request: web.Request) -> web.Response:
        return web.Response(text="x", headers={"Vary": "Accept-Encoding"})

    async def wildcard(request: web.Request) -> web.Response:
        return web.Response(text="x", headers={"Vary": "*"})

    app = web.Application()
    app.on_response_prepare.append(cors_headers((PAGE,)))
    app.router.add_get("/negotiated", negotiated)
    app.router.add_get("/wildcard", wildcard)
    client = await aiohttp_client(app)
    resp = await client.get("/negotiated", headers={"Origin": PAGE})
    assert resp.headers.getall("Vary") == ["Accept-Encoding, Origin"]
    resp = await client.get("/wildcard", headers={"Origin": PAGE})
    assert resp.headers.getall("Vary") == ["*"]


# --- a real browser ------------------------------------------------------------------------------

# A frontend's whole page: it keeps the token in memory and passes it in headers only; the event
# stream opens with a ticket, the way docs/events.md tells browsers to.
FRONTEND = """<!doctype html>
<meta charset="utf-8">
<title>frontend</title>
<script>
window.received = [];
window.whoami = async (gateway, token) => {
  const answer = await fetch(gateway + "/operator/api/whoami", {headers: {"X-VX11-Token": token}});
  return {status: answer.status, body: await answer.json(), correlationId: answer.headers.get("X-Correlation-ID")};
};
window.follow = async (gateway, token, lastEventId) => {
  const answer = await fetch(gateway + "/operator/api/events/ticket", {method: "POST", headers: {"X-VX11-Token": token}});
  if (answer.status !== 200) throw new Error("ticket refused: " + answer.status);
  const {ticket} = await answer.json();
  const query = new URLSearchParams({ticket, types: "chat"});
  if (lastEventId) query.set("last_event_id", lastEventId);
  const stream = new EventSource(gateway + "/operator/api/events?" + query);
  window.stream = stream;
  stream.addEventListener("chat", (e) => {
    received.push({id: e.lastEventId, correlationId: JSON.parse(e.data).correlation_id});
  });
  await new Promise((resolve, reject) => {
    stream.onopen = resolve;
    stream.onerror = () => reject(new Error("the event stream failed, readyState " + stream.readyState));
  });
};
window.attempt = async (url, headers) => {
  try {
    await fetch(url, {headers});
    return "read the answer";
  } catch (error) {
    return error.name;
  }
};
</script>
"""


@pytest.fixture
async def frontend() -> AsyncIterator[TestServer]:
    """The frontend's own web server: another port, so another origin than the gateway's."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=FRONTEND, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def chat(gw: TestClient, correlation_id: str) -> None:
    resp = await gw.post("/operator/api/chat", json={"message": "hello", "provider": "mock"},
                         headers={"X-VX11-Token": ADMIN_TOKEN, "X-Correlation-ID": correlation_id})
    assert resp.status == 200, await resp.text()


async def test_a_page_on_a_listed_origin_calls_the_api_and_follows_events_with_resume(
    aiohttp_client, settings, redis_prefix, browser, frontend, make_token
) -> None:
    origin = f"http://127.0.0.1:{frontend.port}"
    gw = await chat_gateway(aiohttp_client, settings, cors_origins=(origin,), events_retry_ms=100,
                            redis_prefix=f"{redis_prefix}cors-{uuid.uuid4().hex[:8]}:")
    gateway = str(gw.make_url("")).rstrip("/")
    token = await make_token("read", name=f"frontend-{uuid.uuid4().hex[:6]}")
    context = await browser.new_context()
    page = await context.new_page()
    requests: list[Any] = []
    page.on("request", lambda r: requests.append(r))
    await page.goto(origin + "/")

    who = await page.evaluate("([gateway, token]) => whoami(gateway, token)", [gateway, token])
    assert who["status"] == 200 and who["body"]["name"].startswith("frontend-")
    assert who["correlationId"] == who["body"]["correlation_id"]  # an exposed header the page can read

    await page.evaluate("([gateway, token]) => follow(gateway, token, null)", [gateway, token])
    first = f"cors-browser-{uuid.uuid4().hex[:8]}"
    await chat(gw, first)
    await page.wait_for_function("received.length === 1", timeout=5000)

    # The page closes its stream; what happens meanwhile reaches it when it resumes from its last id.
    await page.evaluate("stream.close()")
    missed = f"cors-browser-{uuid.uuid4().hex[:8]}"
    await chat(gw, missed)
    last_id = await page.evaluate("received[0].id")
    await page.evaluate("([gateway, token, id]) => follow(gateway, token, id)", [gateway, token, last_id])
    await page.wait_for_function("received.length === 2", timeout=5000)

    # The gateway ends the stream; the browser reconnects by itself to the same URL, adding
    # Last-Event-ID. Had the header not been honoured cross-origin, the replay would start from
    # the query's older id and repeat the missed chat.
    hub = gw.app[keys.EVENTS]
    assert hub.end_streams("client_gone") == 1
    after = f"cors-browser-{uuid.uuid4().hex[:8]}"
    await chat(gw, after)
    await page.wait_for_function("received.length >= 3", timeout=5000)
    received = await page.evaluate("received")
    assert [r["correlationId"] for r in received] == [first, missed, after]
    streams = [r for r in requests if r.resource_type == "eventsource"]
    assert len(streams) == 3
    assert (await streams[-1].all_headers()).get("last-event-id") == received[1]["id"]

    urls = [r.url for r in requests]
    assert any("ticket=" in url for url in urls)
    assert [url for url in urls if token in url] == []
    await context.close()


async def test_a_page_on_an_unlisted_origin_is_blocked_by_the_browser(
    aiohttp_client, settings, browser, frontend, make_token
) -> None:
    # The gateway lists 127.0.0.1 on the frontend's port; the page is loaded as localhost, which
    # names the same server but is another origin.
    gw = await serve(aiohttp_client, create_app(dataclasses.replace(
        settings, cors_origins=(f"http://127.0.0.1:{frontend.port}",))))
    gateway = str(gw.make_url("")).rstrip("/")
    token = await make_token("read")
    context = await browser.new_context()
    page = await context.new_page()
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    await page.goto(f"http://localhost:{frontend.port}/")
    with_token = await page.evaluate("([url, token]) => attempt(url, {'X-VX11-Token': token})",
                                     [gateway + "/operator/api/whoami", token])
    assert with_token == "TypeError"  # its preflight was refused
    plain = await page.evaluate("(url) => attempt(url, {})", gateway + "/health")
    assert plain == "TypeError"  # sent without a preflight, but its answer grants nothing
    assert [url for url in urls if token in url] == []
    await context.close()

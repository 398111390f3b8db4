"""The operator console: its routes and headers, and what an operator sees in a real browser.

Browser tests drive Chromium (the ``browser`` fixture) against a gateway with real PostgreSQL and
Redis. With ``TENTACULO_SCREENSHOTS=<dir>`` (``make screenshots``) they also save a PNG of each view.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from tentaculo.app import create_app
from tentaculo.console.views import SECURITY_HEADERS, bundle
from tentaculo.embedded import free_port
from tentaculo.settings import Settings
from tests.confirm_helpers import confirmed
from tests.helpers import ADMIN_TOKEN, AppClient, serve
from tests.proxy_upstreams import ModuleApp

CSP = SECURITY_HEADERS["Content-Security-Policy"]
SCREENSHOTS = os.environ.get("TENTACULO_SCREENSHOTS")
MODULES = ("hermes", "hormiguero", "madre", "mcp", "operator-backend", "operator-frontend", "redis", "spawner",
           "switch", "tentaculo_link")


# ---- routes and headers -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/operator/", "/operator/modules", "/operator/trace/abc-123",
                                  "/operator/files/logs/2024/a.log"])
async def test_every_view_address_answers_the_page_with_strict_headers(gateway: TestClient, path: str) -> None:
    resp = await gateway.get(path)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"] == CSP
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Cache-Control"] == "no-cache"
    page = await resp.text()
    assert f'src="/operator/static/{bundle().version}/app.js"' in page
    assert "<style" not in page and "style=" not in page
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None, "no inline script"


async def test_assets_are_versioned_and_cached_for_a_year(gateway: TestClient) -> None:
    version = bundle().version
    resp = await gateway.get(f"/operator/static/{version}/app.js")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert resp.headers["Content-Type"].startswith("text/javascript")
    assert resp.headers["Content-Encoding"] == "gzip"  # the client asked for it
    assert "export" in await resp.text() or "import" in await resp.text()
    assert resp.headers["Content-Security-Policy"] == CSP
    again = await gateway.get(f"/operator/static/{version}/app.js", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304
    stale = await gateway.get("/operator/static/0000000000000000/app.js")
    assert stale.status == 200 and stale.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path", ["/operator/static/v/..%2F..%2Fapp.py", "/operator/static/v/nothing.js",
                                  "/operator/static/v/%2e%2e/views.py", "/operator/static/v/views/../views.py"])
async def test_only_packaged_assets_are_served(gateway: TestClient, path: str) -> None:
    resp = await gateway.get(URL(path, encoded=True))
    assert resp.status == 404
    assert (await resp.json())["code"] == "not_found"


async def test_the_console_shadows_no_api_route(gateway: TestClient, admin_headers: dict[str, str]) -> None:
    for method, path in [("GET", "/operator/api/nothing-here"), ("POST", "/operator/api/nothing/here"),
                         ("GET", "/operator/api")]:
        resp = await gateway.request(method, path, headers=admin_headers)
        assert resp.status == 404, path
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "not_found"
        assert "Content-Security-Policy" not in resp.headers
    resp = await gateway.get("/operator/api/whoami", headers=admin_headers)
    assert resp.status == 200 and (await resp.json())["name"] == "admin"


async def test_the_short_address_redirects_to_the_console(gateway: TestClient) -> None:
    resp = await gateway.get("/operator", allow_redirects=False)
    assert resp.status == 308
    assert resp.headers["Location"] == "/operator/"


# ---- in a browser -----------------------------------------------------------------------------


async def console_gateway(aiohttp_client: AppClient, settings: Settings, **changes: Any) -> TestClient:
    """A gateway whose chat provider is the mock, with an event history of its own (other tests' events
    would fill the views), as an operator's would be in tests."""
    changes = {"providers": ("mock",), "provider_chain": ("mock",),
               "redis_prefix": f"{settings.redis_prefix}console-{uuid.uuid4().hex[:8]}:", **changes}
    return await serve(aiohttp_client, create_app(dataclasses.replace(settings, **changes)))


@dataclasses.dataclass
class Visit:
    """A browser page on the console, with everything it requested and reported."""

    page: Any
    client: TestClient
    urls: list[str] = dataclasses.field(default_factory=list)
    messages: list[str] = dataclasses.field(default_factory=list)

    def url(self, path: str) -> str:
        return str(self.client.make_url(path))

    async def goto(self, path: str) -> None:
        await self.page.goto(self.url(path))

    async def sign_in(self, token: str) -> None:
        await self.page.get_by_test_id("login-token").fill(token)
        await self.page.get_by_test_id("login-submit").click()

    def assert_clean(self, *secrets: str) -> None:
        """No token in any URL the console asked for; nothing blocked or thrown."""
        for secret in secrets:
            leaked = [u.split("?")[0] for u in self.urls if secret in u]
            assert not leaked, f"a token was sent in a URL: {leaked}"
        blocked = [m for m in self.messages if "Content Security Policy" in m or "Refused to" in m]
        assert not blocked, blocked
        thrown = [m for m in self.messages if m.startswith("pageerror:")]
        assert not thrown, thrown

    async def screenshot(self, name: str) -> None:
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))


async def visit(browser: Any, client: TestClient, path: str = "/operator/", width: int = 1280,
                height: int = 800) -> Visit:
    page = await browser.new_page(viewport={"width": width, "height": height})
    seen = Visit(page, client)
    page.on("request", lambda request: seen.urls.append(request.url))
    page.on("console", lambda message: seen.messages.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: seen.messages.append(f"pageerror: {error}"))
    await seen.goto(path)
    return seen


async def test_sign_in_with_the_admin_token(aiohttp_client: AppClient, settings: Settings, browser: Any) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    v = await visit(browser, client)
    await v.screenshot("sign-in")
    started = time.perf_counter()
    await v.sign_in(ADMIN_TOKEN)
    await expect(v.page.get_by_test_id("nav-overview")).to_have_attribute("aria-current", "page")
    await expect(v.page.get_by_test_id("stream-state")).to_have_attribute("data-state", "open")
    assert time.perf_counter() - started < 5
    for name in ("overview", "modules", "events", "metrics", "chat", "trace", "files", "admin"):
        await expect(v.page.get_by_test_id(f"nav-{name}")).not_to_have_attribute("aria-disabled", "true")
    await expect(v.page.locator(".who")).to_contain_text("admin")
    assert await v.page.evaluate("t => sessionStorage.getItem('vx11.token') === t", ADMIN_TOKEN)
    assert await v.page.evaluate("t => localStorage.length === 0 && !document.cookie.includes(t)", ADMIN_TOKEN)
    await v.page.get_by_test_id("logout").click()
    await expect(v.page.get_by_test_id("login-token")).to_be_visible()
    assert await v.page.evaluate("() => sessionStorage.getItem('vx11.token')") is None
    v.assert_clean(ADMIN_TOKEN)


async def test_a_wrong_token_shows_the_reason_and_stays_on_sign_in(aiohttp_client: AppClient, settings: Settings,
                                                                   browser: Any) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    v = await visit(browser, client, "/operator/modules")
    await v.sign_in("not-a-token-of-this-gateway")
    await expect(v.page.get_by_test_id("login-error")).to_contain_text("unknown, revoked or malformed")
    await expect(v.page.get_by_test_id("login-token")).to_be_visible()
    await expect(v.page.get_by_test_id("nav-overview")).to_have_count(0)
    assert await v.page.evaluate("() => sessionStorage.getItem('vx11.token')") is None
    v.assert_clean("not-a-token-of-this-gateway")


async def signed_in(browser: Any, client: TestClient, token: str = ADMIN_TOKEN, path: str = "/operator/",
                    **size: int) -> Visit:
    from playwright.async_api import expect

    v = await visit(browser, client, path, **size)
    await v.sign_in(token)
    await expect(v.page.get_by_test_id("stream-state")).to_have_attribute("data-state", "open")
    return v


async def test_overview_shows_every_part_with_its_reason_and_follows_feature_toggles(
        aiohttp_client: AppClient, settings: Settings, browser: Any, admin_headers: dict[str, str]) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    v = await signed_in(browser, client)
    page = v.page
    await expect(page.get_by_test_id("overview-gateway")).to_be_visible()
    features = page.get_by_test_id("overview-features")
    explorer = features.locator('[data-name="file_explorer"]')
    await expect(explorer).to_have_attribute("data-status", "off")
    await expect(explorer).to_contain_text("no roots configured")
    await expect(page.get_by_test_id("overview-providers").locator('[data-name="mock"]')).to_have_attribute(
        "data-status", "on")
    await expect(page.get_by_test_id("overview-modules").get_by_test_id("overview-item")).to_have_count(len(MODULES))
    for name in ("postgresql", "redis", "events", "audit"):
        await expect(page.get_by_test_id("overview-dependencies").locator(f'[data-name="{name}"]')).to_be_visible()
    await v.screenshot("overview")

    # A feature turned off elsewhere shows here at once, with the admin's reason: no reload, no polling.
    metrics = features.locator('[data-name="metrics"]')
    await expect(metrics).to_have_attribute("data-status", "on")
    resp = await confirmed(client, "PUT", "/operator/api/features/metrics", json={"status": "off", "reason": "console test"},
                            headers=admin_headers)
    assert resp.status == 200
    try:
        await expect(metrics).to_have_attribute("data-status", "off", timeout=2000)
        await expect(metrics).to_contain_text("console test")
    finally:
        await client.put("/operator/api/features/metrics", json={"status": "on", "reason": "restored"},
                         headers=admin_headers)
    await expect(metrics).to_have_attribute("data-status", "on", timeout=2000)
    v.assert_clean(ADMIN_TOKEN)


async def test_every_module_is_listed_and_drawn_and_a_node_shows_its_details(
        aiohttp_client: AppClient, settings: Settings, browser: Any, module: ModuleApp) -> None:
    from playwright.async_api import expect

    # madre answers its health checks; switch's address refuses connections.
    client = await console_gateway(aiohttp_client, settings, probe_interval_seconds=0.5,
                                   service_urls={"madre": module.url, "switch": f"http://127.0.0.1:{free_port()}"})
    v = await signed_in(browser, client)
    page = v.page
    await page.get_by_test_id("nav-modules").click()
    await expect(page).to_have_url(re.compile(r"/operator/modules$"))
    rows = page.get_by_test_id("module-row")
    await expect(rows).to_have_count(len(MODULES))
    assert sorted(await rows.evaluate_all("rs => rs.map(r => r.dataset.name)")) == sorted(MODULES)
    statuses = await rows.evaluate_all("rs => rs.map(r => r.dataset.status)")
    assert set(statuses) <= {"on", "off", "degraded", "error"}
    madre = page.locator('[data-testid="module-row"][data-name="madre"]')
    await expect(madre).to_have_attribute("data-status", "on")
    switch = page.locator('[data-testid="module-row"][data-name="switch"]')
    await expect(switch).to_have_attribute("data-status", "error")
    await expect(switch).to_contain_text("refused")
    hermes = page.locator('[data-testid="module-row"][data-name="hermes"]')
    await expect(hermes).to_have_attribute("data-status", "off")
    await expect(hermes).to_contain_text("not configured")
    await expect(page.locator('[data-testid="module-row"][data-name="tentaculo_link"]')).to_have_attribute(
        "data-status", "on")

    nodes = page.get_by_test_id("topology-node")
    await expect(nodes).to_have_count(len(MODULES))
    assert sorted(await nodes.evaluate_all("ns => ns.map(n => n.dataset.name)")) == sorted(MODULES)
    await expect(page.locator(".topology-graph line.edge")).to_have_count(9)
    # The entrypoint is in the middle of the drawing.
    entry = await page.locator('[data-testid="topology-node"][data-name="tentaculo_link"]').bounding_box()
    graph = await page.locator(".topology-graph").bounding_box()
    assert entry and graph
    assert abs(entry["x"] + entry["width"] / 2 - (graph["x"] + graph["width"] / 2)) < graph["width"] * 0.05

    await expect(page.locator('[data-testid="topology-node"][data-name="switch"]')).to_have_attribute(
        "data-status", "error")
    details = page.get_by_test_id("node-details")
    await page.locator('[data-testid="topology-node"][data-name="switch"] .dot').click()
    await expect(details).to_contain_text("Switch")
    await expect(details).to_contain_text("refused")
    await expect(details).to_contain_text("last check")
    await expect(details).not_to_contain_text("127.0.0.1")
    await v.screenshot("modules")

    # madre goes away: its row, node and details follow the service_status event, with no reload.
    madre_node = page.locator('[data-testid="topology-node"][data-name="madre"]')
    await expect(madre_node).to_have_attribute("data-status", "on")
    await madre_node.locator(".dot").click()
    await expect(details).to_contain_text("Madre")
    await module.close()
    await expect(madre_node).to_have_attribute("data-status", "error", timeout=5000)
    await expect(madre).to_have_attribute("data-status", "error")
    await expect(details.get_by_test_id("node-reason")).to_be_visible()
    # By keyboard: focus a node and press Enter.
    await page.locator('[data-testid="topology-node"][data-name="tentaculo_link"]').focus()
    await page.keyboard.press("Enter")
    await expect(details).to_contain_text("entrypoint")
    await expect(details).not_to_contain_text("http://")
    v.assert_clean(ADMIN_TOKEN)


async def test_a_reload_keeps_the_view(aiohttp_client: AppClient, settings: Settings, browser: Any) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    v = await signed_in(browser, client, path="/operator/modules")
    await expect(v.page.get_by_test_id("module-row")).to_have_count(len(MODULES))
    await v.page.reload()
    await expect(v.page.get_by_test_id("nav-modules")).to_have_attribute("aria-current", "page")
    await expect(v.page.get_by_test_id("module-row")).to_have_count(len(MODULES))
    await expect(v.page.get_by_test_id("login-token")).to_have_count(0)
    await v.page.go_back()  # the address before was the same view's: nothing to lose
    v.assert_clean(ADMIN_TOKEN)


async def test_a_chat_appears_in_the_live_events_linked_to_its_trace(
        aiohttp_client: AppClient, settings: Settings, browser: Any, admin_headers: dict[str, str]) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    v = await signed_in(browser, client, path="/operator/events")
    page = v.page
    await expect(page.get_by_test_id("nav-events")).to_have_attribute("aria-current", "page")
    chats = page.locator('[data-testid="event-item"][data-type="chat"]')
    before = await chats.count()
    resp = await client.post("/operator/api/chat", json={"message": "hello console", "provider": "mock"},
                             headers=admin_headers)
    assert resp.status == 200
    cid = (await resp.json())["correlation_id"]
    await expect(chats).to_have_count(before + 1, timeout=2000)
    newest = page.get_by_test_id("event-item").first
    await expect(newest).to_have_attribute("data-type", "chat")
    await expect(newest).to_contain_text("mock")
    await expect(newest.get_by_test_id("event-trace")).to_have_attribute("href", f"/operator/trace/{cid}")

    # The filter hides other types; pausing holds new events until resumed.
    await page.get_by_label("Type").select_option("service_status")
    await expect(chats.first).to_be_hidden()
    await page.get_by_label("Type").select_option("")
    await page.get_by_test_id("event-pause").click()
    resp = await client.post("/operator/api/chat", json={"message": "while paused", "provider": "mock"},
                             headers=admin_headers)
    assert resp.status == 200
    await expect(page.get_by_test_id("event-held")).to_have_text("1 new while paused", timeout=2000)
    await expect(chats).to_have_count(before + 1)
    await page.get_by_test_id("event-pause").click()
    await expect(chats).to_have_count(before + 2)
    await v.screenshot("events")

    await page.locator(f'[data-testid="event-trace"][href="/operator/trace/{cid}"]').click()
    await expect(page).to_have_url(re.compile(rf"/operator/trace/{re.escape(cid)}$"))
    await expect(page.get_by_test_id("nav-trace")).to_have_attribute("aria-current", "page")
    v.assert_clean(ADMIN_TOKEN)


async def test_a_revoked_token_returns_to_sign_in_with_the_reason(
        aiohttp_client: AppClient, settings: Settings, browser: Any, admin_headers: dict[str, str],
        make_token: Any) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    name = f"console-{uuid.uuid4().hex[:8]}"
    token = await make_token("read", name=name)
    v = await signed_in(browser, client, token)
    await expect(v.page.locator(".who")).to_contain_text(name)
    resp = await confirmed(client, "DELETE", f"/operator/api/tokens/{name}", headers=admin_headers)
    assert resp.status in (200, 204)
    # Open another view's address: the stream may already have signed the operator out (the gateway
    # ends a revoked token's streams); if not, the first call does. Either way the reason is shown.
    await v.goto("/operator/modules")
    await expect(v.page.get_by_test_id("login-error")).to_contain_text("revoked", timeout=5000)
    await expect(v.page.get_by_test_id("login-token")).to_be_visible()
    await expect(v.page.get_by_test_id("nav-modules")).to_have_count(0)
    assert await v.page.evaluate("() => sessionStorage.getItem('vx11.token')") is None
    v.assert_clean(token, ADMIN_TOKEN)


async def test_a_read_token_sees_admin_disabled_with_the_reason(
        aiohttp_client: AppClient, settings: Settings, browser: Any, make_token: Any) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    token = await make_token("read")
    v = await signed_in(browser, client, token)
    admin = v.page.get_by_test_id("nav-admin")
    await expect(admin).to_have_attribute("aria-disabled", "true")
    await expect(admin).to_contain_text("needs the admin scope")
    # Chat opens (to show what a read token cannot do there); events stay for reading.
    await expect(v.page.get_by_test_id("nav-chat")).not_to_have_attribute("aria-disabled", "true")
    await expect(v.page.get_by_test_id("nav-modules")).not_to_have_attribute("aria-disabled", "true")
    await v.screenshot("read-token")
    await expect(admin).to_be_disabled()
    await admin.click(force=True)
    await expect(v.page).to_have_url(re.compile(r"/operator/$"))
    # Typed or shared, the address still opens what a read token may see, and says why it is read-only.
    await v.goto("/operator/admin")
    await expect(v.page.get_by_test_id("scope-note")).to_contain_text("needs the admin scope")
    await expect(v.page.get_by_test_id("nav-admin")).to_have_attribute("aria-disabled", "true")
    v.assert_clean(token, ADMIN_TOKEN)


async def test_console_page_is_under_a_strict_csp_and_nothing_is_blocked(
        aiohttp_client: AppClient, settings: Settings, browser: Any) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    page = await browser.new_page(viewport={"width": 390, "height": 844})
    v = Visit(page, client)
    page.on("request", lambda request: v.urls.append(request.url))
    page.on("console", lambda message: v.messages.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: v.messages.append(f"pageerror: {error}"))
    answer = await page.goto(v.url("/operator/"))
    assert answer is not None
    assert answer.headers["content-security-policy"] == CSP
    await v.sign_in(ADMIN_TOKEN)
    await expect(page.get_by_test_id("stream-state")).to_have_attribute("data-state", "open")
    for view in ("modules", "events", "overview"):
        await page.get_by_test_id(f"nav-{view}").click()
        await expect(page.get_by_test_id(f"nav-{view}")).to_have_attribute("aria-current", "page")
        if view == "modules":
            await expect(page.get_by_test_id("topology-node")).to_have_count(len(MODULES))
            assert await page.evaluate("() => document.documentElement.scrollWidth") <= 390
            await v.screenshot("modules-390")
    await expect(page.get_by_test_id("overview-gateway")).to_be_visible()
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, "the page scrolls sideways at 390 px"
    await v.screenshot("overview-390")
    assert any("/operator/api/events?ticket=" in u for u in v.urls)
    v.assert_clean(ADMIN_TOKEN)


async def test_a_dropped_stream_shows_lost_then_resumes_with_a_fresh_ticket(
        aiohttp_client: AppClient, settings: Settings, browser: Any, admin_headers: dict[str, str]) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    v = await signed_in(browser, client, path="/operator/events")
    page, state = v.page, v.page.get_by_test_id("stream-state")
    resp = await client.post("/operator/api/chat", json={"message": "before the drop", "provider": "mock"},
                             headers=admin_headers)
    assert resp.status == 200
    cid = (await resp.json())["correlation_id"]
    await expect(page.locator(f'[data-testid="event-trace"][href="/operator/trace/{cid}"]')).to_have_count(1)
    # Turning live events off ends every stream: the console says so and keeps trying.
    resp = await confirmed(client, "PUT", "/operator/api/features/events", json={"status": "off", "reason": "console test"},
                            headers=admin_headers)
    assert resp.status == 200
    try:
        await expect(state).to_have_attribute("data-state", "lost")
        await expect(state).to_contain_text("lost")
        await expect(page.locator('[data-testid="event-item"][data-type="stream_lost"]')).to_have_count(1)
    finally:
        resp = await client.put("/operator/api/features/events", json={"status": "on", "reason": "restored"},
                                headers=admin_headers)
        assert resp.status == 200
    await expect(state).to_have_attribute("data-state", "open", timeout=10000)
    streams = [u for u in v.urls if "/operator/api/events?ticket=" in u]
    tickets = {re.search(r"ticket=([^&]+)", u).group(1) for u in streams}  # type: ignore[union-attr]
    assert len(streams) >= 2 and len(tickets) == len(streams), "each connection uses a fresh ticket"
    assert "last_event_id=" in streams[-1], "the new stream resumes after the last event received"
    v.assert_clean(ADMIN_TOKEN)


async def test_the_first_view_is_usable_within_a_second(aiohttp_client: AppClient, settings: Settings,
                                                       browser: Any) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    v = await signed_in(browser, client)
    await expect(v.page.get_by_test_id("overview-gateway")).to_be_visible()
    for _ in range(2):  # a cold load (no cache) and a warm one
        await v.page.reload()
        await v.page.get_by_test_id("overview-gateway").wait_for()
        shown_ms = await v.page.evaluate("() => performance.now()")
        assert shown_ms < 1000, f"the overview took {shown_ms:.0f} ms to show"
    v.assert_clean(ADMIN_TOKEN)


async def test_lost_history_is_marked_with_a_reset_line(
        aiohttp_client: AppClient, settings: Settings, browser: Any, admin_headers: dict[str, str]) -> None:
    from playwright.async_api import expect
    from redis.asyncio import Redis

    # A history of its own (under this run's prefix, so it is cleaned up with it), trimmed below.
    prefix = f"{settings.redis_prefix}console-{uuid.uuid4().hex[:6]}:"
    client = await console_gateway(aiohttp_client, settings, redis_prefix=prefix)
    v = await signed_in(browser, client, path="/operator/events")
    page, state = v.page, v.page.get_by_test_id("stream-state")

    async def chat(text: str) -> str:
        resp = await client.post("/operator/api/chat", json={"message": text, "provider": "mock"},
                                 headers=admin_headers)
        assert resp.status == 200
        return str((await resp.json())["correlation_id"])

    seen = await chat("seen before the drop")
    await expect(page.locator(f'[data-testid="event-trace"][href="/operator/trace/{seen}"]')).to_have_count(1)
    resp = await confirmed(client, "PUT", "/operator/api/features/events", json={"status": "off", "reason": "console test"},
                            headers=admin_headers)
    assert resp.status == 200
    try:
        await expect(state).to_have_attribute("data-state", "lost")
        await chat("missed while away")
        await chat("missed too")
        # The history moves past what the console saw: only the newest event is retained.
        redis = Redis.from_url(settings.redis_url or "")
        try:
            await redis.xtrim(f"{prefix}events:history", maxlen=1, approximate=False)
        finally:
            await redis.aclose()
    finally:
        resp = await client.put("/operator/api/features/events", json={"status": "on", "reason": "restored"},
                                headers=admin_headers)
        assert resp.status == 200
    await expect(state).to_have_attribute("data-state", "open", timeout=15000)
    marker = page.locator('[data-testid="event-item"][data-type="reset"]')
    await expect(marker).to_have_count(1)
    await expect(marker).to_contain_text("History lost")
    await v.screenshot("events-reset")
    v.assert_clean(ADMIN_TOKEN)


async def test_a_token_without_the_read_scope_is_told_why_it_cannot_sign_in(
        aiohttp_client: AppClient, settings: Settings, browser: Any, make_token: Any) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    token = await make_token("chat")
    v = await visit(browser, client)
    await v.sign_in(token)
    await expect(v.page.get_by_test_id("login-error")).to_contain_text("needs the 'read' scope")
    await expect(v.page.get_by_test_id("nav-overview")).to_have_count(0)
    v.assert_clean(token, ADMIN_TOKEN)


async def test_the_console_works_from_the_keyboard(aiohttp_client: AppClient, settings: Settings,
                                                    browser: Any) -> None:
    from playwright.async_api import expect

    client = await console_gateway(aiohttp_client, settings)
    v = await visit(browser, client)
    page = v.page
    await expect(page.get_by_test_id("login-token")).to_be_focused()  # ready to paste into
    await page.keyboard.type(ADMIN_TOKEN)
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("stream-state")).to_have_attribute("data-state", "open")
    # Tab from the top of the page reaches the skip link, then the navigation.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    nav = page.get_by_test_id("nav-modules")
    await nav.focus()
    await page.keyboard.press("Enter")
    await expect(nav).to_have_attribute("aria-current", "page")
    node = page.locator('[data-testid="topology-node"][data-name="madre"]')
    await node.focus()
    await page.keyboard.press(" ")
    await expect(node).to_have_attribute("aria-pressed", "true")
    await expect(page.get_by_test_id("node-details")).to_contain_text("Madre")
    # Every form control has a name a screen reader announces.
    await page.get_by_test_id("nav-events").focus()
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("Type")).to_be_visible()
    unnamed = await page.evaluate("""() => [...document.querySelectorAll('input, select, button, textarea')]
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
        .map(el => el.outerHTML)""")
    assert unnamed == []
    v.assert_clean(ADMIN_TOKEN)

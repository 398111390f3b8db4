"""The operator console: its routes and headers, and what an operator sees in a real browser.

Browser tests drive Chromium (the ``browser`` fixture) against a gateway with real PostgreSQL and
Redis. With ``TENTACULO_SCREENSHOTS=<dir>`` (``make screenshots``) they also save a PNG of each view.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from tentaculo.app import create_app
from tentaculo.console.views import SECURITY_HEADERS, bundle
from tentaculo.settings import Settings
from tests.conftest import ADMIN_TOKEN, AppClient, serve

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
    """A gateway whose chat provider is the mock, as an operator's would be in tests."""
    changes = {"providers": ("mock",), "provider_chain": ("mock",), **changes}
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

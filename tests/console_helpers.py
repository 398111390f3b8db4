"""Open the console's views in a browser, through the real shell or, before it exists, a harness.

The shell (``tentaculo/console/static/app.js`` with its server route) serves ``/operator/`` with a
sign-in form and a nav. Until it is merged, ``tests/console_harness/`` stands in for it: a page
with the same test hooks (``login-token``, ``login-submit``, ``nav-<view>``) implementing the ctx
interface the views are written against, served by test-only routes added to the gateway app.
Tests written with ``console_gateway`` and ``open_view`` run unchanged against either; the routes
are only added when the shell is absent (``SHELL`` is False).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from tentaculo.app import create_app
from tentaculo.auth.tokens import PUBLIC, requires
from tentaculo.settings import Settings
from tests.helpers import AppClient, serve

STATIC = Path(__file__).resolve().parent.parent / "tentaculo" / "console" / "static"
HARNESS = Path(__file__).resolve().parent / "console_harness"
SHELL = (STATIC / "app.js").exists()
VIEWPORT = {"width": 1280, "height": 800}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'")
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".png": "image/png"}


@requires(PUBLIC)
async def _harness_page(request: web.Request) -> web.Response:
    return web.Response(body=(HARNESS / "index.html").read_bytes(), content_type="text/html",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


@requires(PUBLIC)
async def _harness_asset(request: web.Request) -> web.Response:
    rel = request.match_info["path"]
    base, rest = (HARNESS, rel.removeprefix("harness/")) if rel.startswith("harness/") else (STATIC, rel)
    path = (base / rest).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise web.HTTPNotFound()
    return web.Response(body=path.read_bytes(), content_type=TYPES.get(path.suffix, "application/octet-stream"),
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


def add_harness(app: web.Application) -> None:
    """Serve the harness page at ``/operator/<view>...`` and the static files under a versioned-like path."""
    app.router.add_get("/operator/static/test/{path:.+}", _harness_asset)
    app.router.add_get("/operator/", _harness_page)
    app.router.add_get("/operator/{view:(metrics|chat|trace|files|admin)}{tail:(/.*)?}", _harness_page)


async def console_gateway(aiohttp_client: AppClient, settings: Settings, **changes: Any) -> TestClient:
    """A gateway serving the console (the shell's route, or the harness before it exists)."""
    app = create_app(dataclasses.replace(settings, **changes) if changes else settings)
    if not SHELL:
        add_harness(app)
    return await serve(aiohttp_client, app)


def base_url(client: TestClient) -> str:
    return str(client.make_url("/")).rstrip("/")


async def open_view(page: Any, client: TestClient, token: str, view: str) -> None:
    """Sign in at ``/operator/`` with ``token`` and open ``view`` from the nav (by address when the nav
    item is disabled for the token), as an operator would."""
    from playwright.async_api import expect

    await page.goto(base_url(client) + "/operator/")
    await page.get_by_test_id("login-token").fill(token)
    await page.get_by_test_id("login-submit").click()
    nav = page.get_by_test_id(f"nav-{view}")
    await expect(nav).to_be_visible()
    if await nav.get_attribute("aria-disabled") == "true":
        # Shown disabled for this token's scopes: the operator can still type the view's address,
        # which opens it read-only.
        await page.goto(base_url(client) + f"/operator/{view}")
    else:
        await nav.click()
    await expect(page).to_have_url(re.compile(re.escape(base_url(client) + f"/operator/{view}") + r"(/|\?|$)"))


async def screenshot(page: Any, view: str) -> None:
    """Save ``<view>.png`` under ``TENTACULO_SCREENSHOTS`` when it is set."""
    target = os.environ.get("TENTACULO_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(target) / f"{view}.png"), full_page=True)

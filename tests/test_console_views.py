"""The console's metrics, chat, trace, files and admin views, driven in Chromium.

Each test signs in at ``/operator/`` and opens its view from the nav (``open_view``): through the
real console shell once it is part of the package, through ``tests/console_harness`` before
(``tests/console_helpers.py`` says how it picks). Pages are served with the console's CSP, so a
view or library that needs inline script or style fails here too.

With ``TENTACULO_SCREENSHOTS=<dir>`` the tests save one PNG per view, ``<dir>/<view>.png``
(docs/img holds the ones docs/console.md shows).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
import pytest
from playwright.async_api import expect

from tentaculo.settings import Settings
from tests.confirm_helpers import confirmed
from tests.console_helpers import VIEWPORT, console_gateway, open_view, screenshot
from tests.helpers import ADMIN_TOKEN, AppClient, wait_for

pytestmark = pytest.mark.slow

# The mock streams one word per chunk; this delay makes its dozen words take over two seconds,
# ample time to see the answer grow and to stop it part way even on a busy machine.
SLOW_MOCK = {"providers": ("mock",), "provider_chain": ("mock",), "provider_options": {"mock": {"delay_ms": "200"}}}


async def new_page(browser: Any, width: int = VIEWPORT["width"], height: int = VIEWPORT["height"]) -> Any:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    PAGE_ERRORS[id(page)] = errors
    return page


PAGE_ERRORS: dict[int, list[str]] = {}


def no_js_errors(page: Any) -> None:
    """Nothing the view ran threw, and nothing it (or uPlot) did was refused by the CSP."""
    assert PAGE_ERRORS.get(id(page)) == []


async def text_length(locator: Any) -> int:
    return len(await locator.text_content() or "")


async def test_chat_streams_progressively_and_stop_ends_it(
    aiohttp_client: AppClient, settings: Settings, browser: Any, db: asyncpg.Connection
) -> None:
    client = await console_gateway(aiohttp_client, settings, **SLOW_MOCK)
    page = await new_page(browser)
    await open_view(page, client, ADMIN_TOKEN, "chat")
    await page.get_by_test_id("chat-provider").select_option("mock")
    output = page.get_by_test_id("chat-output")

    # A whole answer: it grows chunk by chunk, then the done state and the trace link show.
    await page.get_by_test_id("chat-input").fill("hello there")
    await page.get_by_test_id("chat-input").press("Enter")
    await expect(output).to_contain_text("Mock answer")
    first = await text_length(output)
    await expect(output).not_to_have_text(await output.text_content() or "")
    assert await text_length(output) > first
    await expect(page.get_by_test_id("chat-state")).to_contain_text("Done (stop)")
    await expect(output).to_have_text(re.compile(r"\.$"))
    await expect(page.get_by_test_id("chat-correlation")).to_be_visible()

    # A second one, stopped part way: the stream ends, the output stops growing, the stop state shows.
    await page.get_by_test_id("chat-input").fill("tell me more")
    await page.get_by_test_id("chat-send").click()
    await expect(page.get_by_test_id("chat-stop")).to_be_enabled()
    await expect(output).to_contain_text("Mock answer")
    await page.get_by_test_id("chat-stop").click()
    await expect(page.get_by_test_id("chat-state")).to_contain_text("Stopped")
    await expect(page.get_by_test_id("chat-stop")).to_be_disabled()
    stopped = await output.text_content()
    cid = await page.get_by_test_id("chat-correlation").text_content()

    async def cancelled() -> bool:
        status = await db.fetchval("SELECT status FROM copilot_actions_log WHERE correlation_id = $1", cid)
        return bool(status == "cancelled")

    await wait_for(cancelled)  # the gateway saw the client leave: nothing more can arrive
    assert await output.text_content() == stopped
    assert not (stopped or "").endswith(".")
    no_js_errors(page)


async def test_chat_shows_a_provider_failure_plainly(
    aiohttp_client: AppClient, settings: Settings, browser: Any
) -> None:
    client = await console_gateway(aiohttp_client, settings, providers=("mock", "deepseek"),
                                   provider_chain=("mock",))
    async with client.get("/operator/api/providers", headers={"X-VX11-Token": ADMIN_TOKEN}) as resp:
        [deepseek] = [p for p in (await resp.json())["providers"] if p["name"] == "deepseek"]
    assert deepseek["status"] == "off" and deepseek["reason"]
    page = await new_page(browser)
    await open_view(page, client, ADMIN_TOKEN, "chat")
    # The picker says before sending that deepseek is off, and why.
    await page.get_by_test_id("chat-provider").select_option("deepseek")
    await expect(page.get_by_test_id("chat-provider-status")).to_contain_text(deepseek["reason"])
    await page.get_by_test_id("chat-input").fill("hello")
    await page.get_by_test_id("chat-send").click()
    error = page.get_by_test_id("chat-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("deepseek")
    await expect(error).to_contain_text(deepseek["reason"])
    await expect(page.get_by_test_id("chat-output")).to_have_text("")
    await expect(page.get_by_test_id("chat-send")).to_be_enabled()
    no_js_errors(page)


async def test_chat_says_when_the_chat_feature_is_turned_off(
    aiohttp_client: AppClient, settings: Settings, browser: Any
) -> None:
    client = await console_gateway(aiohttp_client, settings, providers=("mock",), provider_chain=("mock",))
    headers = {"X-VX11-Token": ADMIN_TOKEN}
    page = await new_page(browser)
    async with page.expect_response(lambda r: "/operator/api/events?" in r.url and r.status == 200):
        await open_view(page, client, ADMIN_TOKEN, "chat")
    note = page.get_by_test_id("chat-feature")
    await expect(note).to_be_hidden()
    try:
        resp = await confirmed(client, "PUT", "/operator/api/features/chat",
                               json={"status": "off", "reason": "provider bill overdue"}, headers=headers)
        assert resp.status == 200
        await expect(note).to_contain_text("Chat is turned off by admin: provider bill overdue")
        await page.get_by_test_id("chat-input").fill("hello")
        await page.get_by_test_id("chat-send").click()
        await expect(page.get_by_test_id("chat-error")).to_contain_text("feature_disabled")
    finally:
        async with client.put("/operator/api/features/chat", json={"status": "on"}, headers=headers) as resp:
            assert resp.status == 200
    await expect(note).to_be_hidden()
    no_js_errors(page)


async def test_chat_is_disabled_with_the_reason_without_the_chat_scope(
    aiohttp_client: AppClient, settings: Settings, browser: Any, make_token: Any
) -> None:
    client = await console_gateway(aiohttp_client, settings, providers=("mock",), provider_chain=("mock",))
    page = await new_page(browser)
    await open_view(page, client, await make_token("read"), "chat")
    await expect(page.get_by_test_id("chat-send")).to_be_disabled()
    await expect(page.get_by_test_id("chat-input")).to_be_disabled()
    await expect(page.get_by_test_id("chat-scope")).to_contain_text("needs the chat scope")


async def test_metrics_draws_charts_after_traffic_and_follows_the_metrics_event(
    aiohttp_client: AppClient, settings: Settings, browser: Any
) -> None:
    client = await console_gateway(aiohttp_client, settings, providers=("mock",), provider_chain=("mock",),
                                   metrics_flush_seconds=1, metrics_event_seconds=1)
    headers = {"X-VX11-Token": ADMIN_TOKEN}
    for _ in range(3):
        async with client.post("/operator/api/chat", json={"message": "hi", "provider": "mock"}, headers=headers) as r:
            assert r.status == 200
    async with client.get("/operator/api/trace/not-a-real-id", headers=headers) as r:
        assert r.status == 200
    page = await new_page(browser)
    await open_view(page, client, ADMIN_TOKEN, "metrics")
    charts = page.get_by_test_id("metrics-chart")
    await expect(charts.first.locator("canvas")).to_be_visible()
    await expect(page.locator("[data-testid=metrics-chart][data-chart=route-latency] canvas")).to_be_visible()
    await expect(page.locator("[data-testid=metrics-chart][data-chart=provider-rate] canvas")).to_be_visible()
    routes = page.get_by_test_id("metrics-routes")
    await expect(routes).to_contain_text("/operator/api/chat")
    await expect(page.get_by_test_id("metrics-providers")).to_contain_text("mock")

    # A route first used after the page opened shows up with the next metrics event, no reload.
    await expect(routes).not_to_contain_text("/operator/api/fs/list")
    async with client.get("/operator/api/fs/list", headers=headers) as r:
        assert r.status == 200
    await expect(routes).to_contain_text("/operator/api/fs/list", timeout=15_000)

    # The window picker asks again for the chosen window.
    async with page.expect_response(lambda r: "/operator/api/metrics?window=1h" in r.url):
        await page.get_by_test_id("metrics-window").select_option("1h")
    await expect(charts.first.locator("canvas")).to_be_visible()
    await screenshot(page, "metrics")
    no_js_errors(page)


async def test_feature_turned_off_shows_at_once_on_another_open_console(
    aiohttp_client: AppClient, settings: Settings, browser: Any, make_token: Any
) -> None:
    client = await console_gateway(aiohttp_client, settings)
    headers = {"X-VX11-Token": ADMIN_TOKEN}
    admin = await new_page(browser)
    other = await new_page(browser)  # another browser context: its own session, its own event stream
    async with admin.expect_response(lambda r: "/operator/api/events?" in r.url and r.status == 200):
        await open_view(admin, client, ADMIN_TOKEN, "admin")
    async with other.expect_response(lambda r: "/operator/api/events?" in r.url and r.status == 200):
        await open_view(other, client, await make_token("read"), "admin")
    mine = admin.locator("[data-testid=feature-toggle][data-name=metrics]")
    theirs = other.locator("[data-testid=feature-toggle][data-name=metrics]")
    await expect(mine).to_be_checked()
    await expect(theirs).to_be_checked()
    await expect(theirs).to_be_disabled()  # a read token sees the flags, and why it cannot change them
    await expect(other.get_by_test_id("feature-scope")).to_contain_text("needs the admin scope")
    await expect(other.get_by_test_id("token-create")).to_be_disabled()
    try:
        # Turning off without a reason is refused in the page; with one, it goes through.
        await mine.click()
        await expect(admin.get_by_test_id("feature-error")).to_contain_text("Say why metrics")
        await expect(mine).to_be_checked()
        await admin.locator("[data-testid=feature-reason][data-name=metrics]").fill("disk maintenance")
        await mine.uncheck()
        # Turning a feature off is high risk: a dialog names the action and its risk before anything is done.
        dialog = admin.get_by_test_id("confirm-dialog")
        await expect(dialog).to_be_visible()
        await expect(dialog.get_by_test_id("confirm-dialog-action")).to_have_text("PUT /operator/api/features/metrics")
        await expect(dialog.get_by_test_id("confirm-dialog-risk")).to_have_text("high risk")
        await expect(theirs).to_be_checked()  # nothing done yet
        await dialog.get_by_test_id("confirm-dialog-confirm").click()
        await expect(dialog).to_have_count(0)
        await expect(mine).not_to_be_checked()
        row = other.locator("[data-testid=feature-row][data-name=metrics]")
        await expect(theirs).not_to_be_checked()
        await expect(row).to_contain_text("disk maintenance")
        await expect(row.locator(".badge")).to_have_text("off")
        async with client.get("/operator/api/metrics", headers=headers) as resp:
            assert resp.status == 503
        # A change made elsewhere shows here too, and leaves a reason being typed alone.
        await admin.locator("[data-testid=feature-reason][data-name=chat]").fill("half-written")
        resp = await confirmed(client, "PUT", "/operator/api/features/proxy",
                               json={"status": "off", "reason": "elsewhere"}, headers=headers)
        assert resp.status == 200
        await expect(admin.locator("[data-testid=feature-toggle][data-name=proxy]")).not_to_be_checked()
        await expect(admin.locator("[data-testid=feature-row][data-name=proxy]")).to_contain_text("elsewhere")
        await expect(admin.locator("[data-testid=feature-reason][data-name=chat]")).to_have_value("half-written")
        # And back on, seen the same way.
        # And back on from the keyboard, seen the same way; the focus stays on the switch.
        await admin.locator("[data-testid=feature-reason][data-name=metrics]").fill("done")
        await mine.focus()
        await admin.keyboard.press("Space")
        await expect(mine).to_be_checked()
        await expect(mine).to_be_focused()
        await expect(theirs).to_be_checked()
        await expect(row.locator(".badge")).to_have_text("on")
    finally:
        for name in ("metrics", "proxy"):
            async with client.put(f"/operator/api/features/{name}", json={"status": "on"}, headers=headers) as resp:
                assert resp.status == 200
    no_js_errors(admin)
    no_js_errors(other)


async def test_token_secret_is_shown_once_and_revoke_removes_the_token(
    aiohttp_client: AppClient, settings: Settings, browser: Any
) -> None:
    client = await console_gateway(aiohttp_client, settings)
    page = await new_page(browser)
    await open_view(page, client, ADMIN_TOKEN, "admin")
    name = f"ops-{uuid.uuid4().hex[:6]}"
    await page.get_by_test_id("token-name").fill(name)
    await page.get_by_test_id("token-scope-chat").check()
    async with page.expect_request(lambda r: r.url.endswith("/operator/api/tokens") and r.method == "POST") as sent:
        await page.get_by_test_id("token-create").click()
    assert (await sent.value).post_data_json == {"name": name, "scopes": ["read", "chat"]}  # no expiry: none sent
    secret_box = page.get_by_test_id("token-secret")
    await expect(secret_box).to_be_visible()
    await expect(page.get_by_test_id("token-warning")).to_contain_text("shown only this once")
    secret = await secret_box.input_value()
    assert secret.startswith("vx11_")
    row = page.locator(f"[data-testid=token-row][data-name='{name}']")
    await expect(row).to_contain_text("read, chat")
    async with client.get("/operator/api/whoami", headers={"X-VX11-Token": secret}) as resp:
        assert resp.status == 200 and (await resp.json())["scopes"] == ["read", "chat"]

    # Gone once the operator leaves the view: the list never holds secrets.
    await page.get_by_test_id("nav-chat").click()
    await page.get_by_test_id("nav-admin").click()
    await expect(row).to_be_visible()
    assert secret not in await page.content()
    await expect(page.get_by_test_id("token-secret")).to_have_count(0)
    await screenshot(page, "admin")  # after the secret is gone: no token in the repository's pictures

    # Revoke asks first; cancelling keeps it, confirming removes it and the secret stops working.
    await row.get_by_test_id("token-revoke").click()
    await row.get_by_role("button", name="Cancel").click()
    await expect(row.get_by_test_id("token-revoke")).to_be_visible()
    await row.get_by_test_id("token-revoke").click()
    await row.get_by_test_id("token-revoke-confirm").click()
    # Revoking is high risk: the gateway asks, and the console's dialog names the action and its risk.
    dialog = page.get_by_test_id("confirm-dialog")
    await expect(dialog.get_by_test_id("confirm-dialog-action")).to_have_text(f"DELETE /operator/api/tokens/{name}")
    await expect(dialog.get_by_test_id("confirm-dialog-risk")).to_have_text("high risk")
    await expect(dialog).to_contain_text("revoking a token locks its holder out")
    await dialog.get_by_test_id("confirm-dialog-cancel").click()  # cancelled: nothing done
    await expect(page.get_by_test_id("token-error")).to_contain_text("not confirmed")
    async with client.get("/operator/api/whoami", headers={"X-VX11-Token": secret}) as resp:
        assert resp.status == 200
    await row.get_by_test_id("token-revoke").click()
    async with page.expect_request(lambda r: r.method == "DELETE" and "X-VX11-Confirm".lower() in r.headers) as sent:
        await row.get_by_test_id("token-revoke-confirm").click()
        await dialog.get_by_test_id("confirm-dialog-confirm").click()
    confirmation = (await sent.value).headers["x-vx11-confirm"]
    await expect(row).to_have_count(0)
    assert confirmation not in await page.content()
    stored = await page.evaluate("() => JSON.stringify(sessionStorage) + JSON.stringify(localStorage)")
    assert confirmation not in stored  # the console never keeps a confirmation token
    async with client.get("/operator/api/whoami", headers={"X-VX11-Token": secret}) as resp:
        assert resp.status == 401

    # An expiry, when given, is sent in seconds.
    await page.get_by_test_id("token-name").fill(name + "-x")
    await page.get_by_test_id("token-expiry").fill("2")
    async with page.expect_request(lambda r: r.url.endswith("/operator/api/tokens") and r.method == "POST") as sent:
        await page.get_by_test_id("token-create").click()
    assert (await sent.value).post_data_json["expires_in"] == 2 * 86400
    await expect(page.get_by_test_id("token-secret")).to_be_visible()
    no_js_errors(page)


async def test_files_lists_a_root_with_breadcrumbs_and_says_when_truncated(
    aiohttp_client: AppClient, settings: Settings, browser: Any, tmp_path: Any
) -> None:
    (tmp_path / "2024").mkdir()
    (tmp_path / "2024" / "gateway.log").write_text("x" * 2048)
    (tmp_path / "README.txt").write_text("hello")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(5):
        (many / f"part-{i}.log").write_text("")
    client = await console_gateway(aiohttp_client, settings, fs_roots={"logs": tmp_path}, fs_list_max=3)
    page = await new_page(browser)
    await open_view(page, client, ADMIN_TOKEN, "files")
    entries = page.get_by_test_id("file-entry")
    await expect(entries).to_have_count(1)
    await page.get_by_role("link", name="logs/").click()

    await expect(page).to_have_url(re.compile(r"/operator/files/logs$"))
    await expect(entries).to_have_count(3)
    readme = page.locator("[data-testid=file-entry][data-name='README.txt']")
    await expect(readme).to_contain_text("file")
    await expect(readme).to_contain_text("5 B")
    await expect(page.get_by_test_id("files-truncated")).to_be_hidden()
    await screenshot(page, "files")
    await page.get_by_role("link", name="2024/").click()

    await expect(page).to_have_url(re.compile(r"/operator/files/logs/2024$"))
    await expect(page.get_by_test_id("files-crumb")).to_have_text(["Roots", "logs", "2024"])
    await expect(page.locator("[data-testid=file-entry][data-name='gateway.log']")).to_contain_text("2.0 KiB")
    await page.go_back()  # the browser's Back button returns to the parent listing
    await expect(page).to_have_url(re.compile(r"/operator/files/logs$"))
    await expect(entries).to_have_count(3)
    await page.go_forward()
    await expect(page.get_by_test_id("files-crumb")).to_have_text(["Roots", "logs", "2024"])
    await page.get_by_test_id("files-crumb").filter(has_text="logs").click()
    await expect(page).to_have_url(re.compile(r"/operator/files/logs$"))
    await page.get_by_role("link", name="many/").click()
    await expect(entries).to_have_count(3)
    await expect(page.get_by_test_id("files-truncated")).to_contain_text("Only the first 3 entries")
    no_js_errors(page)


async def test_files_says_plainly_when_no_roots_are_configured(
    aiohttp_client: AppClient, settings: Settings, browser: Any
) -> None:
    client = await console_gateway(aiohttp_client, settings)
    page = await new_page(browser)
    await open_view(page, client, ADMIN_TOKEN, "files")
    await expect(page.get_by_test_id("files-empty")).to_contain_text("No roots are configured")
    await expect(page.get_by_test_id("file-entry")).to_have_count(0)


async def test_trace_shows_the_audit_row_and_chat_action_of_a_chat(
    aiohttp_client: AppClient, settings: Settings, browser: Any
) -> None:
    client = await console_gateway(aiohttp_client, settings, providers=("mock",), provider_chain=("mock",))
    page = await new_page(browser)
    await open_view(page, client, ADMIN_TOKEN, "chat")
    await page.get_by_test_id("chat-provider").select_option("mock")
    await page.get_by_test_id("chat-model").select_option("mock-reasoner")
    await page.get_by_test_id("chat-input").fill("why is the sky blue")
    await page.get_by_test_id("chat-send").click()
    await expect(page.get_by_test_id("chat-state")).to_contain_text("Done")
    # The reasoning model's thoughts are kept apart from the answer, folded.
    reasoning = page.get_by_test_id("chat-reasoning")
    await expect(reasoning).to_contain_text("Considering 5 words of input.")
    await expect(page.get_by_test_id("chat-output")).not_to_contain_text("Considering")
    await expect(reasoning.get_by_text("Considering")).to_be_hidden()
    await reasoning.get_by_text("Reasoning").click()
    await expect(reasoning.get_by_text("Considering")).to_be_visible()
    await screenshot(page, "chat")
    link = page.get_by_test_id("chat-correlation")
    cid = await link.text_content()
    await link.click()

    await expect(page).to_have_url(re.compile(rf"/operator/trace/{re.escape(cid or '')}$"))
    await expect(page.get_by_test_id("trace-input")).to_have_value(cid or "")
    audit = page.locator("[data-testid=trace-item][data-kind=audit]")
    chat = page.locator("[data-testid=trace-item][data-kind=chat]")
    await expect(audit).to_contain_text("POST /operator/api/chat")
    await expect(audit).to_contain_text("200")
    await expect(chat).to_contain_text("mock / mock-reasoner")
    await expect(chat).to_contain_text("ok")
    await expect(page.locator("[data-testid=trace-item][data-kind=event]")).to_contain_text("chat")
    await screenshot(page, "trace")

    # Looking up another id: an unknown one is said to have nothing; a malformed one is refused.
    await page.get_by_test_id("trace-input").fill("nothing-here-123")
    await page.get_by_test_id("trace-lookup").click()
    await expect(page).to_have_url(re.compile(r"/operator/trace/nothing-here-123$"))
    await expect(page.get_by_test_id("trace-empty")).to_contain_text("Nothing is recorded for nothing-here-123")
    await expect(page.get_by_test_id("trace-item")).to_have_count(0)
    await page.get_by_test_id("trace-input").fill("../etc")
    await page.get_by_test_id("trace-lookup").click()
    await expect(page.get_by_test_id("trace-error")).to_contain_text("A correlation id is")
    no_js_errors(page)


@pytest.mark.parametrize("view", ["metrics", "chat", "trace", "files", "admin"])
async def test_view_fits_a_phone_width_and_labels_its_controls(
    aiohttp_client: AppClient, settings: Settings, browser: Any, tmp_path: Any, view: str
) -> None:
    (tmp_path / "a-rather-long-directory-name-for-a-narrow-screen").mkdir()
    client = await console_gateway(aiohttp_client, settings, providers=("mock",), provider_chain=("mock",),
                                   fs_roots={"logs": tmp_path})
    headers = {"X-VX11-Token": ADMIN_TOKEN}
    async with client.post("/operator/api/chat", json={"message": "hi", "provider": "mock"}, headers=headers) as r:
        assert r.status == 200
        cid = r.headers["X-Correlation-ID"]
    page = await new_page(browser, width=390, height=844)
    await open_view(page, client, ADMIN_TOKEN, view)
    if view == "metrics":
        await expect(page.get_by_test_id("metrics-chart").first.locator("canvas")).to_be_visible()
    elif view == "files":
        await page.get_by_role("link", name="logs/").click()
        await expect(page.get_by_test_id("file-entry")).to_have_count(1)
    elif view == "admin":
        await expect(page.get_by_test_id("feature-toggle")).to_have_count(5)
    elif view == "trace":
        await page.get_by_test_id("trace-input").fill(cid)
        await page.get_by_test_id("trace-input").press("Enter")
        await expect(page.get_by_test_id("trace-item").first).to_be_visible()
    else:
        await expect(page.get_by_test_id("chat-provider")).to_contain_text("mock")
    # Nothing makes the page scroll sideways (wide tables scroll inside their own box).
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    # Every form control of the view has a label a screen reader can announce.
    unlabelled = await page.evaluate("""() => [...document.querySelectorAll('main input, main select, main textarea')]
        .filter((c) => c.type !== 'hidden' && !c.labels?.length && !c.getAttribute('aria-label'))
        .map((c) => c.outerHTML)""")
    assert unlabelled == []
    no_js_errors(page)

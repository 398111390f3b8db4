"""The deepseek provider through the gateway, against a real loopback server speaking DeepSeek's API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from tentaculo.settings import Settings
from tests.chat_helpers import chat_gateway, chat_rows, new_cid, parse_sse
from tests.openai_server import Answer, Drop, Hang, OpenAIWireServer, Stall, Status

CHAT = "/operator/api/chat"
KEY = "sk-test-deepseek-0123456789abcdef"


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIWireServer]:
    server = OpenAIWireServer(api_key=KEY)
    await server.start()
    yield server
    await server.close()


async def deepseek_gateway(aiohttp_client, settings, upstream, key: str | None = KEY, **changes):
    options = {"base_url": upstream.base_url, **({"api_key": key} if key else {})}
    base = {"providers": ("deepseek",), "provider_chain": ("deepseek",), "provider_options": {"deepseek": options}}
    return await chat_gateway(aiohttp_client, settings, **{**base, **changes})


async def test_no_key_means_off_and_never_called(aiohttp_client, settings, admin_headers, upstream) -> None:
    gw = await deepseek_gateway(aiohttp_client, settings, upstream, key=None)
    listing = await (await gw.get("/operator/api/providers", headers=admin_headers)).json()
    [deepseek] = listing["providers"]
    assert deepseek["status"] == "off" and deepseek["reason"] == "no API key"
    resp = await gw.post(CHAT, json={"message": "hi", "provider": "deepseek"}, headers=admin_headers)
    assert resp.status == 503
    assert (await resp.json())["attempts"] == [
        {"provider": "deepseek", "status": "skipped", "error": "off: no API key", "latency_ms": 0.0}]
    assert upstream.requests == []


async def test_the_contracts_variable_names_still_configure_it(aiohttp_client, settings, admin_headers,
                                                              upstream) -> None:
    named = Settings.from_env({"DEEPSEEK_API_KEY": KEY, "DEEPSEEK_BASE_URL": upstream.base_url})
    gw = await chat_gateway(aiohttp_client, settings, providers=("deepseek",), provider_chain=("deepseek",),
                            provider_options=named.provider_options,
                            provider_option_sources=named.provider_option_sources)
    body = await (await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)).json()
    assert body["provider"] == "deepseek" and body["content"]
    [sent] = upstream.requests
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"


async def test_streams_reasoning_then_content(aiohttp_client, settings, admin_headers, upstream, db) -> None:
    upstream.default = Answer(reasoning=("The user ", "wants rivers."), content=("Nile", " and ", "Amazon."),
                              usage=(21, 9))
    gw = await deepseek_gateway(aiohttp_client, settings, upstream)
    cid = new_cid()
    resp = await gw.post(CHAT, json={"message": "Two rivers?", "model": "deepseek-reasoner", "stream": True,
                                     "max_tokens": 64, "temperature": 0.2},
                         headers={**admin_headers, "X-Correlation-ID": cid})
    events = parse_sse(await resp.text())
    assert [n for n, _ in events] == ["start"] + ["delta"] * 5 + ["done"]
    assert events[0][1]["provider"] == "deepseek" and events[0][1]["model"] == "deepseek-reasoner"
    assert [d for n, d in events if n == "delta"] == [
        {"reasoning": "The user "}, {"reasoning": "wants rivers."},
        {"content": "Nile"}, {"content": " and "}, {"content": "Amazon."}]
    assert events[-1][1]["usage"] == {"prompt_tokens": 21, "completion_tokens": 9}
    [sent] = upstream.requests
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent["headers"]["X-Correlation-ID"] == cid
    assert "X-VX11-Token" not in sent["headers"]
    assert sent["body"]["model"] == "deepseek-reasoner" and sent["body"]["stream"] is True
    assert sent["body"]["messages"] == [{"role": "user", "content": "Two rivers?"}]
    assert sent["body"]["max_tokens"] == 64 and sent["body"]["temperature"] == 0.2
    [row] = await chat_rows(db, cid)
    assert row["provider"] == "deepseek" and row["model"] == "deepseek-reasoner" and row["completion_tokens"] == 9


async def test_json_answer_uses_the_default_model(aiohttp_client, settings, admin_headers, upstream) -> None:
    gw = await deepseek_gateway(aiohttp_client, settings, upstream)
    body = await (await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)).json()
    assert body["provider"] == "deepseek" and body["model"] == "deepseek-chat"
    assert body["content"] == "The Nile, the Amazon, the Yangtze." and body["reasoning"] is None
    assert upstream.requests[0]["body"]["model"] == "deepseek-chat"


@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [
        (401, "auth", "rejected the API key (HTTP 401)"),
        (402, "quota", "insufficient balance (HTTP 402)"),
        (400, "rejected", "refused the request (HTTP 400)"),
    ],
)
async def test_http_errors_map_to_clear_attempts(aiohttp_client, settings, admin_headers, upstream,
                                                 status, kind, words) -> None:
    upstream.then(Status(status, f"echoing {KEY} back"))
    gw = await deepseek_gateway(aiohttp_client, settings, upstream)
    with capture_logs() as logs:  # no scrubber here: the key must not reach a log line at all
        resp = await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)
    assert resp.status == 503
    text = await resp.text()
    [attempt] = (await resp.json())["attempts"]  # not retried: retrying cannot help
    assert attempt["status"] == "error" and attempt["error"].startswith(f"{kind}: ") and words in attempt["error"]
    assert KEY not in text and KEY not in json.dumps(logs, default=str)
    assert len(upstream.requests) == 1


async def test_rejected_key_makes_the_provider_error(aiohttp_client, settings, admin_headers, upstream) -> None:
    gw = await deepseek_gateway(aiohttp_client, settings, upstream, key="sk-wrong-key-000000")
    assert (await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)).status == 503
    [deepseek] = (await (await gw.get("/operator/api/providers", headers=admin_headers)).json())["providers"]
    assert deepseek["status"] == "error" and "rejected" in deepseek["reason"]
    assert "sk-wrong-key" not in json.dumps(deepseek)


@pytest.mark.parametrize("first", [Status(500, "internal"), Status(503, "Server overloaded"),
                                   Status(429, "Rate limit reached", {"Retry-After": "0"}), Drop(after=0)])
async def test_retried_before_the_first_delta(aiohttp_client, settings, admin_headers, upstream, first) -> None:
    upstream.then(first)
    gw = await deepseek_gateway(aiohttp_client, settings, upstream, provider_retries=1)
    resp = await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)
    assert resp.status == 200
    body = await resp.json()
    assert [a["status"] for a in body["attempts"]] == ["error", "ok"]
    assert body["degraded"] is False  # the same provider answered: a retry, not a fallback
    assert len(upstream.requests) == 2


async def test_persistent_5xx_is_503_after_retries(aiohttp_client, settings, admin_headers, upstream) -> None:
    upstream.default = Status(503, "Server overloaded, please try again later")
    gw = await deepseek_gateway(aiohttp_client, settings, upstream, provider_retries=2)
    resp = await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)
    assert resp.status == 503
    attempts = (await resp.json())["attempts"]
    assert len(attempts) == 3 and all("HTTP 503" in a["error"] for a in attempts)
    assert "Server overloaded" in attempts[0]["error"]


async def test_silent_upstream_times_out(aiohttp_client, settings, admin_headers, upstream) -> None:
    upstream.default = Hang()
    gw = await deepseek_gateway(aiohttp_client, settings, upstream, provider_read_timeout=0.3, provider_retries=0)
    resp = await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)
    assert resp.status == 503
    [attempt] = (await resp.json())["attempts"]
    assert attempt["error"].startswith("timeout: ")
    await upstream.released.wait()  # the hung request was abandoned, not left open


async def test_timeout_mid_stream_is_a_terminal_error_event(aiohttp_client, settings, admin_headers, upstream) -> None:
    upstream.default = Stall(after=2)
    gw = await deepseek_gateway(aiohttp_client, settings, upstream, provider_read_timeout=0.3)
    resp = await gw.post(CHAT, json={"message": "hi", "stream": True}, headers=admin_headers)
    events = parse_sse(await resp.text())
    assert [n for n, _ in events] == ["start", "delta", "delta", "error"]
    assert events[-1][1]["code"] == "upstream_timeout"
    await upstream.released.wait()


async def test_connection_cut_mid_stream_is_a_terminal_error_event(aiohttp_client, settings, admin_headers,
                                                                   upstream, db) -> None:
    upstream.default = Drop(after=2)
    gw = await deepseek_gateway(aiohttp_client, settings, upstream)
    cid = new_cid()
    resp = await gw.post(CHAT, json={"message": "hi", "stream": True}, headers={**admin_headers, "X-Correlation-ID": cid})
    events = parse_sse(await resp.text())
    assert [n for n, _ in events][-1] == "error" and "done" not in [n for n, _ in events]
    assert events[-1][1]["code"] == "provider_unavailable"
    [row] = await chat_rows(db, cid)
    assert row["status"] == "error" and row["error"].startswith("unavailable: ")


async def test_client_disconnect_cancels_the_upstream_call(aiohttp_client, settings, admin_headers, upstream,
                                                           db) -> None:
    upstream.default = Stall(after=1)
    gw = await deepseek_gateway(aiohttp_client, settings, upstream)
    cid = new_cid()
    resp = await gw.post(CHAT, json={"message": "hi", "stream": True}, headers={**admin_headers, "X-Correlation-ID": cid})
    await resp.content.readuntil(b"event: delta")
    resp.close()
    await upstream.released.wait()
    [row] = await chat_rows(db, cid)
    assert row["status"] == "cancelled" and row["provider"] == "deepseek"


async def test_circuit_opens_after_repeated_failures(aiohttp_client, settings, admin_headers, upstream) -> None:
    upstream.default = Status(500, "down")
    gw = await deepseek_gateway(aiohttp_client, settings, upstream, provider_retries=0, breaker_failures=2,
                                breaker_reset_seconds=600)
    for _ in range(2):
        assert (await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)).status == 503
    resp = await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)
    assert (await resp.json())["attempts"] == [
        {"provider": "deepseek", "status": "skipped", "error": "circuit open", "latency_ms": 0.0}]
    assert len(upstream.requests) == 2  # the open circuit spared the failing backend
    [deepseek] = (await (await gw.get("/operator/api/providers", headers=admin_headers)).json())["providers"]
    assert deepseek["status"] == "error" and deepseek["circuit"]["state"] == "open"
    assert deepseek["circuit"]["failures"] == 2 and 0 < deepseek["circuit"]["retry_in_s"] <= 600
    assert "circuit open after 2 consecutive failures" in deepseek["reason"]

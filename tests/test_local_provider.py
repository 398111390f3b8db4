"""The local provider through the gateway, against a real loopback OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.chat_helpers import chat_gateway, parse_sse
from tests.openai_server import Answer, OpenAIWireServer, WholeJSON

CHAT = "/operator/api/chat"


@pytest.fixture
async def server() -> AsyncIterator[OpenAIWireServer]:
    server = OpenAIWireServer(dialect="openai", models=("llama3.2:1b", "qwen2.5:0.5b"), prefix="/v1")
    await server.start()
    yield server
    await server.close()


async def local_gateway(aiohttp_client, settings, base_url, model: str | None = None, deepseek: dict | None = None,
                        **changes):
    options = {"local": {"base_url": base_url, **({"model": model} if model else {})}, "deepseek": deepseek or {}}
    base = {"providers": ("local",), "provider_chain": ("local",), "provider_options": options}
    return await chat_gateway(aiohttp_client, settings, **{**base, **changes})


async def providers_of(gw, headers) -> dict[str, dict]:
    listing = await (await gw.get("/operator/api/providers", headers=headers)).json()
    return {p["name"]: p for p in listing["providers"]}


async def test_discovers_models_and_answers_with_the_first(aiohttp_client, settings, admin_headers, server) -> None:
    server.default = Answer(content=("Hello", " from", " local."), usage=(5, 3))
    gw = await local_gateway(aiohttp_client, settings, server.base_url)
    local = (await providers_of(gw, admin_headers))["local"]
    assert local["status"] == "on" and local["models"] == ["llama3.2:1b", "qwen2.5:0.5b"]
    assert local["default_model"] == "llama3.2:1b"
    resp = await gw.post(CHAT, json={"message": "hi", "stream": True}, headers=admin_headers)
    events = parse_sse(await resp.text())
    assert "".join(d["content"] for n, d in events if n == "delta") == "Hello from local."
    assert events[-1] == ("done", {**events[-1][1], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
    assert server.requests[0]["body"]["model"] == "llama3.2:1b"
    assert server.requests[0]["headers"].get("Authorization") is None  # no key is ever sent to a local server


async def test_configured_model_is_used(aiohttp_client, settings, admin_headers, server) -> None:
    gw = await local_gateway(aiohttp_client, settings, server.base_url, model="qwen2.5:0.5b")
    body = await (await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)).json()
    assert body["provider"] == "local" and body["model"] == "qwen2.5:0.5b"
    assert server.requests[0]["body"]["model"] == "qwen2.5:0.5b"


async def test_server_that_ignores_streaming_still_answers(aiohttp_client, settings, admin_headers, server) -> None:
    server.default = WholeJSON("All at once.")
    gw = await local_gateway(aiohttp_client, settings, server.base_url)
    resp = await gw.post(CHAT, json={"message": "hi", "stream": True}, headers=admin_headers)
    events = parse_sse(await resp.text())
    assert [n for n, _ in events] == ["start", "delta", "done"]
    assert events[1][1] == {"content": "All at once."}


async def test_unreachable_is_error_and_the_chain_moves_on(aiohttp_client, settings, admin_headers,
                                                           unused_tcp_port) -> None:
    deepseek = OpenAIWireServer(api_key="sk-local-test-fallback-000")
    await deepseek.start()
    try:
        gw = await local_gateway(
            aiohttp_client, settings, f"http://127.0.0.1:{unused_tcp_port}/v1", model="llama3.2:1b",
            providers=("local", "deepseek"), provider_chain=("local", "deepseek"),
            deepseek={"api_key": deepseek.api_key, "base_url": deepseek.base_url}, provider_retries=0)
        local = (await providers_of(gw, admin_headers))["local"]
        assert local["status"] == "error" and "cannot connect" in local["reason"]
        body = await (await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)).json()
        assert body["provider"] == "deepseek" and body["degraded"] is True
        assert [(a["provider"], a["status"]) for a in body["attempts"]] == [("local", "error"), ("deepseek", "ok")]
    finally:
        await deepseek.close()


async def test_comes_back_when_the_server_does(aiohttp_client, settings, admin_headers, unused_tcp_port) -> None:
    gw = await local_gateway(aiohttp_client, settings, f"http://127.0.0.1:{unused_tcp_port}/v1",
                             model="llama3.2:1b", provider_retries=0)
    assert (await providers_of(gw, admin_headers))["local"]["status"] == "error"
    assert (await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)).status == 503
    server = OpenAIWireServer(dialect="openai", models=("llama3.2:1b",), prefix="/v1")
    await server.start(port=unused_tcp_port)
    try:
        resp = await gw.post(CHAT, json={"message": "hi"}, headers=admin_headers)
        assert resp.status == 200 and (await resp.json())["provider"] == "local"
        local = (await providers_of(gw, admin_headers))["local"]
        assert local["status"] == "on" and local["circuit"]["state"] == "closed"
    finally:
        await server.close()

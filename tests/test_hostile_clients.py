"""What a hostile client sends over a raw socket: malformed heads, odd bytes, slow trickles, many sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import pytest
import structlog
from aiohttp.test_utils import TestClient

from tentaculo.app import create_app
from tentaculo.auth.tokens import new_token
from tentaculo.settings import Settings
from tests.helpers import ADMIN_TOKEN, AppClient, leaked_tokens, serve, wait_for

UUID_LEN = 36


async def exchange(client: TestClient, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the gateway and read until it closes the connection."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


# Header blocks aiohttp's parser refuses, each carrying the admin token on the broken line.
MALFORMED = {
    "cr before crlf": b"X-VX11-Token: %s\r\r\n",
    "bare lf in value": b"X-VX11-Token: %s\nX-Other: 1\r\n",
    "nul in value": b"X-VX11-Token: %s\x00\r\n",
    "folded line": b"X-Other: 1\r\n X-VX11-Token: %s\r\n",
    "space before colon": b"X-VX11-Token : %s\r\n",
    "bare cr": b"X-VX11-Token: %s\rX-Other: 1\r\n",
}


@pytest.mark.parametrize("shape", MALFORMED, ids=list(MALFORMED))
async def test_malformed_header_block_is_problem_json_and_never_logs_the_token(
    gateway: TestClient, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    line = MALFORMED[shape] % ADMIN_TOKEN.encode()
    request = b"GET /operator/api/whoami HTTP/1.1\r\nHost: gw\r\n" + line + b"\r\n"
    with structlog.testing.capture_logs() as logs, caplog.at_level(logging.DEBUG):
        raw = await exchange(gateway, request)
    status, headers, body = parse(raw)
    assert status == 400, raw[:200]
    assert headers["content-type"].startswith("application/problem+json")
    assert headers["server"] == "tentaculo"
    assert headers["x-content-type-options"] == "nosniff"
    problem = json.loads(body)
    assert problem["code"] == "bad_request"
    assert len(problem["correlation_id"]) == UUID_LEN == len(headers["x-correlation-id"])
    assert ADMIN_TOKEN.encode() not in raw
    logged = repr(logs) + caplog.text
    assert ADMIN_TOKEN not in logged
    assert "Traceback" not in logged


async def test_token_with_invalid_utf8_is_401_not_500(gateway: TestClient) -> None:
    request = (b"GET /operator/api/whoami HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
               b"X-VX11-Token: \xff\xfe" + b"a" * 20 + b"\r\n\r\n")
    status, headers, body = parse(await exchange(gateway, request))
    assert status == 401
    assert json.loads(body)["code"] == "invalid_token"
    assert headers["www-authenticate"].startswith("Bearer")


async def test_every_answer_says_nosniff_and_every_401_names_the_scheme(gateway: TestClient) -> None:
    ok = await gateway.get("/health")
    missing = await gateway.get("/nowhere")
    no_token = await gateway.get("/operator/api/status")
    bad_token = await gateway.get("/operator/api/status", headers={"X-VX11-Token": "x" * 32})
    for resp in (ok, missing, no_token, bad_token):
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Server"] == "tentaculo"
    assert no_token.headers["WWW-Authenticate"] == 'Bearer realm="tentaculo"'
    assert bad_token.headers["WWW-Authenticate"] == 'Bearer realm="tentaculo", error="invalid_token"'


async def test_answers_holding_a_secret_are_not_stored(gateway: TestClient) -> None:
    headers = {"X-VX11-Token": ADMIN_TOKEN}
    created = await gateway.post("/operator/api/tokens", json={"name": "no-store", "scopes": ["read"]},
                                 headers=headers)
    ticket = await gateway.post("/operator/api/events/ticket", headers=headers)
    assert created.status == 201 and ticket.status == 200
    assert created.headers["Cache-Control"] == "no-store"
    assert ticket.headers["Cache-Control"] == "no-store"


async def limited(aiohttp_client: AppClient, settings: Settings, **changes: object) -> TestClient:
    return await serve(aiohttp_client, create_app(dataclasses.replace(settings, **changes)))


async def test_a_head_sent_a_line_at_a_time_is_cut(aiohttp_client: AppClient, settings: Settings) -> None:
    client = await limited(aiohttp_client, settings, header_timeout=0.5)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"GET /health HTTP/1.1\r\n")
    closed_after = None
    try:
        for i in range(40):  # a slowloris: one header line every 0.1 s, never the blank line
            writer.write(b"X-Filler-%d: 1\r\n" % i)
            await writer.drain()
            if await _closed_within(reader, 0.1):
                closed_after = loop.time() - started
                break
    except ConnectionError:
        closed_after = loop.time() - started
    finally:
        writer.close()
    assert closed_after is not None, "the gateway kept a 4 s trickle of header lines open"


async def test_an_idle_connection_is_closed(aiohttp_client: AppClient, settings: Settings) -> None:
    client = await limited(aiohttp_client, settings, header_timeout=0.3)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        assert await _closed_within(reader, 5.0)
    finally:
        writer.close()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            return await reader.read(65536) == b""
    except TimeoutError:
        return False


async def test_a_trickled_body_gets_408(aiohttp_client: AppClient, settings: Settings) -> None:
    client = await limited(aiohttp_client, settings, body_timeout=0.5, body_min_rate=1000)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"POST /operator/api/chat HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                     b"X-VX11-Token: " + ADMIN_TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    status, headers, body = parse(raw)
    assert status == 408
    assert json.loads(body)["code"] == "request_timeout"
    assert headers["connection"].lower() == "close"


async def test_a_body_at_a_sane_rate_is_not_cut(aiohttp_client: AppClient, settings: Settings) -> None:
    client = await limited(aiohttp_client, settings, body_timeout=0.3, body_min_rate=100, providers=("mock",),
                           provider_chain=("mock",))

    async def body():  # 60 bytes over ~0.6 s: past the bare timeout, within the rate allowance
        payload = json.dumps({"message": "x" * 40, "provider": "mock"}).encode()
        for i in range(0, len(payload), 10):
            yield payload[i:i + 10]
            await asyncio.sleep(0.1)

    resp = await client.post("/operator/api/chat", data=body(), headers={
        "X-VX11-Token": ADMIN_TOKEN, "Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()


async def test_connections_per_address_are_bounded(aiohttp_client: AppClient, settings: Settings) -> None:
    client = await limited(aiohttp_client, settings, max_connections_per_client=3)
    held = [await asyncio.open_connection(client.host, client.port) for _ in range(3)]
    try:
        status, headers, body = parse(await exchange(client, b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"))
        assert status == 429
        assert headers["retry-after"] == "1"
        assert json.loads(body)["code"] == "rate_limited"
        limits = client.server.runner.server.connection_limits  # type: ignore[union-attr]
        held.pop()[1].close()
        await wait_for(lambda: limits.open_connections("127.0.0.1") == 2)
        raw = await exchange(client, b"GET /health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        assert parse(raw)[0] == 200
    finally:
        for _, writer in held:
            writer.close()


def test_the_suite_fails_a_test_that_logs_a_token() -> None:
    """The check every test's captured output goes through (conftest) finds created and admin tokens."""
    token = new_token()
    found = leaked_tokens([("Captured log call", f"ERROR aiohttp.server: bad header X-VX11-Token: {token}"),
                           ("Captured stderr call", f"auth={ADMIN_TOKEN}"), ("Captured stdout call", "clean")])
    assert [title for title, _ in found] == ["Captured log call", "Captured stderr call"]
    assert all(token not in shown for _, shown in found)


async def test_a_trickled_body_through_the_proxy_gets_408(aiohttp_client: AppClient, settings: Settings,
                                                         module) -> None:
    client = await limited(aiohttp_client, settings, body_timeout=0.5, body_min_rate=1000,
                           service_urls={"madre": module.url + "/base"})
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"POST /operator/api/proxy/madre/upload HTTP/1.1\r\nHost: gw\r\n"
                     b"X-VX11-Token: " + ADMIN_TOKEN.encode() + b"\r\nContent-Length: 100\r\n\r\nx")
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    status, _, body = parse(raw)
    assert status == 408, raw[:300]
    assert json.loads(body)["code"] == "request_timeout"

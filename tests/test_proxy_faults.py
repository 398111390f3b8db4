"""The reverse proxy when modules and clients misbehave: broken bodies, garbage, timeouts, retries,
the circuit breaker, clients that leave, and a thousand slow calls at once."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.settings import ModuleTimeouts, Settings
from tests.helpers import audit_row_of, serve, wait_for
from tests.proxy_upstreams import RawModule, break_off, close_unanswered, drop_first, early_hints, garbage, hang

Gateway = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def start_gateway(aiohttp_client, settings: Settings) -> Gateway:
    async def start(madre: str, **changes: object) -> TestClient:
        s = dataclasses.replace(settings, service_urls={"madre": madre}, **changes)  # type: ignore[arg-type]
        return await serve(aiohttp_client, create_app(s))

    return start


def url(path: str) -> str:
    return "/operator/api/proxy/madre/" + path



def assert_problem(problem: dict, code: str, cid: str) -> None:
    assert problem["code"] == code
    assert problem["correlation_id"] == cid
    text = orjson.dumps(problem).decode()
    for leak in ("127.0.0.1", "10.1.2.3", "Traceback", "localhost"):
        assert leak not in text, leak


async def test_module_breaking_off_its_body_truncates_the_response_and_counts_on_the_circuit(
    start_gateway, module, admin_headers, db
) -> None:
    gw = await start_gateway(module.url + "/base")
    resp = await gw.get(url("broken"), headers={**admin_headers, "X-Correlation-ID": "broken-1"})
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "100000"
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    entry = gw.app[keys.SERVICES].get("madre")
    assert entry is not None and entry.breaker.failures == 1
    assert entry.last_proxy_error == "module 'madre' broke off its response"
    # Audited as answered (the head said 200); the failure shows on the module's circuit and logs.
    row = await audit_row_of(db, "broken-1")
    assert (row["status"], row["service"]) == (200, "madre")


async def test_module_sending_garbage_is_upstream_unavailable(start_gateway, admin_headers) -> None:
    raw = await RawModule(garbage).start()
    try:
        gw = await start_gateway(raw.url)
        resp = await gw.get(url("x"), headers={**admin_headers, "X-Correlation-ID": "garbage-1"})
        assert resp.status == 502
        assert resp.content_type == "application/problem+json"
        assert resp.headers["X-Correlation-ID"] == "garbage-1"
        problem = await resp.json()
        assert_problem(problem, "upstream_unavailable", "garbage-1")
        assert problem["detail"] == "module 'madre' sent an invalid HTTP response"
        assert raw.proxied() == ["GET /x HTTP/1.1"]  # a broken answer is not retried
    finally:
        await raw.close()


async def test_an_interim_answer_is_skipped_and_the_real_one_forwarded(start_gateway, admin_headers) -> None:
    raw = await RawModule(early_hints).start()
    try:
        gw = await start_gateway(raw.url)
        for n in (1, 2):  # the second call reuses the kept-alive connection
            resp = await gw.get(url("x"), headers=admin_headers)
            assert resp.status == 200
            assert await resp.json() == {"n": n}
            assert "Link" not in resp.headers  # the interim answer's headers are not the real one's
        assert raw.proxied() == ["GET /x HTTP/1.1"]  # one connection (one request head read) served both
    finally:
        await raw.close()


@pytest.mark.parametrize(("respond", "status", "code", "reason"), [
    (None, 502, "upstream_unavailable", "is unreachable: connection refused"),
    (close_unanswered, 502, "upstream_unavailable", "closed the connection before answering"),
    (garbage, 502, "upstream_unavailable", "sent an invalid HTTP response"),
    (hang, 504, "upstream_timeout", "did not answer within 0.3 s"),
    (break_off, 502, "upstream_unavailable", "broke off its response"),
], ids=["refuses", "closes", "garbage", "hangs", "breaks-off"])
@pytest.mark.parametrize("method", ["GET", "POST"])  # the lean GET path and aiohttp's client
async def test_each_transports_failures_answer_the_same_problem_without_the_modules_address(
    start_gateway, admin_headers, respond, status, code, reason, method
) -> None:
    raw = await RawModule(respond or garbage).start()
    try:
        # The gateway's own test server binds while the module still holds its port, so it can
        # never be given that port once the module lets it go.
        gw = await start_gateway(raw.url, service_timeouts={"madre": ModuleTimeouts(read=0.3)})
        if respond is None:
            await raw.close()  # nothing listens on that port any more
        cid = f"{code}-{method}"
        resp = await gw.request(method, url("x"), data=b"x" if method == "POST" else None,
                                headers={**admin_headers, "X-Correlation-ID": cid})
        assert resp.status == status
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        assert_problem(problem, code, cid)
        assert problem["detail"] == f"module 'madre' {reason}"
    finally:
        await raw.close()


async def test_module_that_never_accepts_is_upstream_timeout_after_its_connect_timeout(
    start_gateway, admin_headers
) -> None:
    # A listener whose accept queue is full: the kernel drops new SYNs, so connecting hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        gw = await start_gateway(f"http://127.0.0.1:{port}", service_timeouts={"madre": ModuleTimeouts(connect=0.3)})
        loop = asyncio.get_running_loop()
        for method, body in (("GET", None), ("POST", b"x")):  # the lean GET path and aiohttp's client
            started = loop.time()
            resp = await gw.request(method, url("x"), data=body,
                                    headers={**admin_headers, "X-Correlation-ID": f"connect-{method}"})
            assert resp.status == 504, method
            assert loop.time() - started < 2, method
            problem = await resp.json()
            assert_problem(problem, "upstream_timeout", f"connect-{method}")
            assert problem["detail"].startswith("module 'madre' could not be connected to within 0.3 s"), problem
    finally:
        for sock in (*fillers, listener):
            sock.close()


async def test_idempotent_calls_without_body_are_retried_once_and_others_are_not(start_gateway, admin_headers) -> None:
    raw = await RawModule(drop_first).start()
    try:
        gw = await start_gateway(raw.url)
        resp = await gw.get(url("x"), headers=admin_headers)
        assert resp.status == 200
        assert await resp.json() == {"second": True}
        assert raw.proxied() == ["GET /x HTTP/1.1"] * 2

        resp = await gw.post(url("x"), data=b"once", headers=admin_headers)
        assert resp.status == 502
        assert (await resp.json())["detail"] == "module 'madre' closed the connection before answering"
        assert raw.proxied()[2:] == ["POST /x HTTP/1.1"]
    finally:
        await raw.close()


async def test_slow_module_is_upstream_timeout_after_its_own_read_timeout(start_gateway, module, admin_headers) -> None:
    gw = await start_gateway(module.url + "/base", service_timeouts={"madre": ModuleTimeouts(read=0.2)})
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await gw.get(url("slow?delay=5"), headers={**admin_headers, "X-Correlation-ID": "slow-1"})
    assert resp.status == 504
    assert loop.time() - started < 2
    problem = await resp.json()
    assert_problem(problem, "upstream_timeout", "slow-1")
    assert problem["detail"] == "module 'madre' did not answer within 0.2 s"


async def test_failing_module_opens_its_circuit_shows_error_and_publishes_it(
    start_gateway, module, admin_headers
) -> None:
    gw = await start_gateway(module.url + "/base", breaker_failures=2, breaker_reset_seconds=60)
    seen: list[dict] = []

    def on_event(event) -> None:
        if event.type == "service_status":
            envelope = orjson.loads(event.envelope)
            if envelope["data"]["service"] == "madre":
                seen.append({**envelope["data"], "correlation_id": envelope["correlation_id"]})

    gw.app[keys.EVENTS].listeners.append(on_event)
    for i in range(2):
        resp = await gw.get(url("status/503"), headers={**admin_headers, "X-Correlation-ID": f"failing-{i}"})
        assert resp.status == 503  # the module's own answer is relayed
    refused = await gw.get(url("status/503"), headers={**admin_headers, "X-Correlation-ID": "open-1"})
    assert refused.status == 502
    assert int(refused.headers["Retry-After"]) >= 1
    assert_problem(await refused.json(), "upstream_unavailable", "open-1")
    assert len(module.requests_to("/base/status")) == 2
    registry = gw.app[keys.SERVICES]
    health = registry.status_of("madre")
    assert health.status == "error" and "circuit open" in (health.reason or "")
    opened = {"circuit": "open", "status": "error", "correlation_id": "failing-1"}
    await wait_for(lambda: any(opened.items() <= e.items() for e in seen))


async def test_client_leaving_mid_stream_cancels_the_module_call(start_gateway, module, admin_headers) -> None:
    gw = await start_gateway(module.url + "/base")
    async with aiohttp.ClientSession() as session:
        resp = await session.get(gw.make_url(url("endless")), headers=admin_headers)
        assert resp.status == 200
        assert await resp.content.readuntil(b"\n\n") == b"data: tick\n\n"
        resp.close()  # drop the connection mid-stream
    async with asyncio.timeout(5):
        await module.cancelled.wait()


async def test_client_leaving_mid_upload_cancels_the_module_call(start_gateway, module, admin_headers) -> None:
    gw = await start_gateway(module.url + "/base")
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    head = (f"POST {url('upload')} HTTP/1.1\r\nHost: gateway\r\nContent-Length: 10000000\r\n"
            f"X-VX11-Token: {admin_headers['X-VX11-Token']}\r\n\r\n")
    writer.write(head.encode() + b"u" * 200_000)
    await writer.drain()
    async with asyncio.timeout(5):
        await module.upload_started.wait()
    writer.transport.abort()  # gone with 9.8 MB still to send
    async with asyncio.timeout(5):
        await module.upload_broken.wait()
    assert module.requests_to("/base/upload") == []  # the module never saw a complete request


async def test_a_thousand_concurrent_slow_calls_share_a_bounded_pool_and_leak_no_descriptor(
    start_gateway, module, admin_headers
) -> None:
    per_module = 50
    # A thousand clients on one address: past the per-address connection cap, which is not under test.
    gw = await start_gateway(module.url + "/base", proxy_pool_per_module=per_module, proxy_pool_size=100,
                             max_connections_per_client=0)
    assert (await gw.get(url("slow?delay=0"), headers=admin_headers)).status == 200
    before = _open_fds()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:

        async def call() -> int:
            async with session.get(gw.make_url(url("slow?delay=0.05")), headers=admin_headers) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(call() for _ in range(1000)))
        assert statuses == [200] * 1000
        assert 2 <= module.max_in_flight <= per_module
        during = _open_fds()
    assert during > before + 1000  # the client's connections were all open at once
    # Idle kept-alive connections to the module (both ends live in this process) may remain.
    await wait_for(lambda: _open_fds() <= before + 2 * per_module + 10)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))

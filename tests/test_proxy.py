"""The reverse proxy against real aiohttp modules on loopback: hygiene, policy, streaming, WebSocket."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.db import queries
from tentaculo.proxy.lean_transport import ModulePool
from tentaculo.settings import AllowRule, ModuleTimeouts, Settings
from tests.helpers import ADMIN_TOKEN, audit_row_of, serve, wait_for
from tests.proxy_upstreams import GZIPPED, HOSTILE_HEADERS, ModuleApp, problem_of, raw_request

MODULE_TOKEN = "module-own-credential-1234"
Gateway = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def start_gateway(aiohttp_client, settings: Settings, module: ModuleApp) -> Gateway:
    """A gateway whose ``madre`` module is ``module`` under the base path ``/base``; ``changes`` go to settings."""

    async def start(**changes: object) -> TestClient:
        changes.setdefault("service_urls", {"madre": module.url + "/base/"})
        return await serve(aiohttp_client, create_app(dataclasses.replace(settings, **changes)))  # type: ignore[arg-type]

    return start


def url(path: str) -> str:
    return "/operator/api/proxy/" + path


async def test_forwards_method_path_query_and_body_under_the_base_path(start_gateway, module, admin_headers) -> None:
    gw = await start_gateway()
    resp = await gw.post(url("madre/echo/a/b%20c;v=1?x=1&y=%26z"), data=b"hello", headers=admin_headers)
    assert resp.status == 200
    body = await resp.json()
    assert body == {"method": "POST", "raw_path": "/base/echo/a/b%20c;v=1?x=1&y=%26z", "size": 5}


async def test_the_operator_token_never_reaches_the_module_and_its_own_credential_does(
    start_gateway, module, admin_headers
) -> None:
    gw = await start_gateway(service_tokens={"madre": MODULE_TOKEN})
    resp = await gw.get(url("madre/echo/x"), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status == 200
    resp = await gw.get(url("madre/echo/y"), headers=admin_headers)
    assert resp.status == 200
    for seen in module.requests_to("/base/echo"):
        assert "x-vx11-token" not in seen.headers
        assert seen.headers["authorization"] == [f"Bearer {MODULE_TOKEN}"]
        assert not any(ADMIN_TOKEN in v for values in seen.headers.values() for v in values)


async def test_a_module_without_its_own_credential_gets_no_authorization(start_gateway, module) -> None:
    gw = await start_gateway()
    resp = await gw.get(url("madre/echo/x"), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert resp.status == 200
    assert "authorization" not in module.requests_to("/base/echo")[0].headers


async def test_hop_by_hop_headers_are_stripped_both_ways(start_gateway, module, admin_headers) -> None:
    gw = await start_gateway()
    resp = await gw.get(
        url("madre/echo/hop"),
        headers={
            **admin_headers,
            "Connection": "keep-alive, X-Client-Hop",
            "X-Client-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-End-To-End": "kept",
        },
    )
    assert resp.status == 200
    seen = module.requests_to("/base/echo/hop")[0].headers
    for name in ("x-client-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen, name
    assert "X-Client-Hop" not in seen.get("connection", [""])[0]
    assert seen["x-end-to-end"] == ["kept"]
    for name in ("X-Module-Hop", "Keep-Alive", "Proxy-Agent"):
        assert name not in resp.headers, name
    assert resp.headers["X-Module-Header"] == "kept"
    assert resp.headers["Server"] == "tentaculo"


async def test_forwarded_headers_replace_untrusted_ones_and_extend_trusted_ones(
    start_gateway, module, admin_headers
) -> None:
    spoofed = {**admin_headers, "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example",
               "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6"}
    gw = await start_gateway()
    assert (await gw.get(url("madre/echo/untrusted"), headers=spoofed)).status == 200
    seen = module.requests_to("/base/echo/untrusted")[0].headers
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert "x-forwarded-host" not in seen
    assert "forwarded" not in seen

    trusting = await start_gateway(trusted_proxies=("127.0.0.0/8",))
    assert (await trusting.get(url("madre/echo/trusted"), headers=spoofed)).status == 200
    seen = module.requests_to("/base/echo/trusted")[0].headers
    assert seen["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]
    assert seen["x-forwarded-host"] == ["evil.example"]
    assert seen["x-forwarded-proto"] == ["https"]


@pytest.mark.parametrize("method", ["GET", "PUT"])  # the lean pool and aiohttp's client
async def test_a_clients_host_never_becomes_the_forwarded_host(start_gateway, module, admin_headers,
                                                               method) -> None:
    spoofed = {**admin_headers, "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
               "X-Forwarded-Port": "443", "X-Forwarded-Prefix": "/evil", "X-Original-Host": "evil.example"}

    def seen_by_module(path: str) -> dict[str, list[str]]:
        [seen] = module.requests_to(path)
        assert not any("evil" in v for values in seen.headers.values() for v in values), seen.headers
        return seen.headers

    gw = await start_gateway()
    status, _, _ = await raw_request(gw.port, url("madre/echo/plain"), spoofed, method=method, host="evil.example")
    assert status == 200
    seen = seen_by_module("/base/echo/plain")
    assert "x-forwarded-host" not in seen
    assert seen["x-forwarded-proto"] == ["http"]

    public = await start_gateway(public_url="https://ops.example.com")
    status, _, _ = await raw_request(public.port, url("madre/echo/public"), spoofed, method=method,
                                     host="evil.example")
    assert status == 200
    seen = seen_by_module("/base/echo/public")
    assert (seen["x-forwarded-host"], seen["x-forwarded-proto"]) == (["ops.example.com"], ["https"])

    trusting = await start_gateway(trusted_proxies=("127.0.0.0/8",))
    status, _, _ = await raw_request(trusting.port, url("madre/echo/behind"), admin_headers, method=method,
                                     host="evil.example")
    assert status == 200
    seen = seen_by_module("/base/echo/behind")  # the proxy in front said nothing: nothing is made up
    assert "x-forwarded-host" not in seen
    status, _, _ = await raw_request(trusting.port, url("madre/echo/told"),
                                     {**admin_headers, "X-Forwarded-Host": "ops.example.com"}, method=method)
    assert status == 200
    assert module.requests_to("/base/echo/told")[0].headers["x-forwarded-host"] == ["ops.example.com"]


async def test_correlation_id_goes_upstream_and_comes_back(start_gateway, module, admin_headers) -> None:
    gw = await start_gateway()
    resp = await gw.get(url("madre/echo/cid"), headers={**admin_headers, "X-Correlation-ID": "proxy-cid-42"})
    assert resp.headers["X-Correlation-ID"] == "proxy-cid-42"
    assert module.requests_to("/base/echo/cid")[0].headers["x-correlation-id"] == ["proxy-cid-42"]


async def test_get_needs_read_and_other_methods_need_operate(start_gateway, module, make_token) -> None:
    gw = await start_gateway()
    reader = {"X-VX11-Token": await make_token("read")}
    operator = {"X-VX11-Token": await make_token("operate")}
    assert (await gw.get(url("madre/echo/r"), headers=reader)).status == 200
    assert (await gw.head(url("madre/echo/r"), headers=reader)).status == 200
    refused = await gw.post(url("madre/echo/w"), data=b"{}", headers=reader)
    assert refused.status == 403
    assert (await refused.json())["code"] == "forbidden"
    assert (await gw.put(url("madre/echo/w"), headers=operator)).status == 200
    assert (await gw.post(url("madre/echo/w"), data=b"{}", headers=operator)).status == 200
    assert (await gw.get(url("madre/echo/r"), headers=operator)).status == 403
    assert [s.method for s in module.requests_to("/base/echo/w")] == ["PUT", "POST"]


async def test_a_websocket_needs_operate_except_where_the_module_allows_read_upgrades(
    start_gateway, module, make_token
) -> None:
    reader = {"X-VX11-Token": await make_token("read")}
    operator = {"X-VX11-Token": await make_token("operate")}
    gw = await start_gateway()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.session.ws_connect(gw.make_url(url("madre/ws")), headers=reader)
    assert refused.value.status == 403
    status, _, body = await raw_request(gw.port, url("madre/ws"), {
        **reader, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    problem = problem_of(body)
    assert (status, problem["code"], problem["required_scope"]) == (403, "forbidden", "operate")
    assert module.requests_to("/base/ws") == []
    async with gw.session.ws_connect(gw.make_url(url("madre/ws")), headers=operator) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"

    feeds = await start_gateway(service_read_upgrades={"madre": ("/ws",)})
    async with feeds.session.ws_connect(feeds.make_url(url("madre/ws")), headers=reader) as ws:
        await ws.send_str("feed")
        assert (await ws.receive(timeout=5)).data == "echo:feed"
    with pytest.raises(aiohttp.WSServerHandshakeError) as outside:
        await feeds.session.ws_connect(feeds.make_url(url("madre/echo/ws")), headers=reader)
    assert outside.value.status == 403
    assert [s.raw_path for s in module.seen] == ["/base/ws", "/base/ws"]


async def test_method_overrides_are_never_forwarded(start_gateway, module, make_token) -> None:
    reader = {"X-VX11-Token": await make_token("read")}
    gw = await start_gateway()
    overrides = {"X-HTTP-Method-Override": "DELETE", "X-Method-Override": "DELETE", "X-HTTP-Method": "DELETE",
                 "X-Original-URL": "/admin/wipe", "X-Rewrite-URL": "/admin/wipe"}
    resp = await gw.get(url("madre/echo/o?_method=DELETE&x=1&_METHOD=PUT&y=2"), headers={**reader, **overrides})
    assert resp.status == 200
    [seen] = module.requests_to("/base/echo/o")
    assert (seen.method, seen.raw_path) == ("GET", "/base/echo/o?x=1&y=2")
    assert not set(seen.headers) & {name.lower() for name in overrides}


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("framing", ["Content-Length: 5", "Transfer-Encoding: chunked"])
async def test_a_get_or_head_with_a_body_is_refused(start_gateway, module, make_token, method, framing) -> None:
    gw = await start_gateway()
    name, _, value = framing.partition(": ")
    body = b"hello" if name == "Content-Length" else b"5\r\nhello\r\n0\r\n\r\n"
    status, headers, answer = await raw_request(gw.port, url("madre/echo/body"),
                                                {"X-VX11-Token": await make_token("read"), name: value},
                                                method=method, body=body)
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    if method == "GET":
        assert problem_of(answer)["code"] == "validation_error"
    assert module.requests_to("/base/echo/body") == []
    empty = await gw.get(url("madre/echo/empty"), headers={"X-VX11-Token": await make_token("read"),
                                                            "Content-Length": "0"})
    assert empty.status == 200


async def test_every_proxied_call_is_audited_with_the_module(start_gateway, module, admin_headers, db) -> None:
    gw = await start_gateway()
    resp = await gw.get(url("madre/echo/audited"), headers={**admin_headers, "X-Correlation-ID": "proxy-audit-1"})
    assert resp.status == 200

    async def row():
        return await db.fetchrow("SELECT * FROM audit_logs WHERE correlation_id = 'proxy-audit-1'")

    await wait_for(lambda: _truthy(row()))
    found = await row()
    assert found["service"] == "madre"
    assert found["route"] == "/operator/api/proxy/{service}/{path}"
    assert found["status"] == 200


async def _truthy(awaitable: Awaitable[object]) -> bool:
    return bool(await awaitable)


async def test_unknown_module_is_not_found(start_gateway, admin_headers) -> None:
    gw = await start_gateway()
    resp = await gw.get(url("no-such-module/x"), headers={**admin_headers, "X-Correlation-ID": "proxy-404"})
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["code"] == "not_found"
    assert problem["correlation_id"] == "proxy-404"


async def test_module_without_address_is_module_unconfigured(start_gateway, admin_headers) -> None:
    gw = await start_gateway(service_urls={})
    registry = gw.app[keys.SERVICES]
    assert any(e.name == "madre" and e.enabled and e.address is None for e in registry.entries()), \
        "the seed has madre with no address"
    resp = await gw.get(url("madre/api/status"), headers={**admin_headers, "X-Correlation-ID": "proxy-unset"})
    assert resp.status == 503
    problem = await resp.json()
    assert (problem["code"], problem["service"], problem["correlation_id"]) == ("module_unconfigured", "madre",
                                                                                  "proxy-unset")
    assert "feature" not in problem
    assert "TENTACULO_SERVICE_MADRE_URL" in problem["detail"]
    assert "tentaculo service set madre --url" in problem["detail"]


async def test_disabled_module_is_feature_disabled(start_gateway, module, admin_headers, db) -> None:
    gw = await start_gateway(service_urls={"madre": module.url + "/base", "hermes": module.url + "/base"})
    registry = gw.app[keys.SERVICES]
    await queries.set_service_config(db, "hermes", enabled=False)
    try:
        await registry.reload()
        resp = await gw.get(url("hermes/echo/x"), headers=admin_headers)
        assert resp.status == 503
        assert (await resp.json())["code"] == "feature_disabled"
    finally:
        await queries.set_service_config(db, "hermes", enabled=True)
    assert not module.requests_to("/base/echo/x")


async def test_proxy_flag_off_is_feature_disabled(start_gateway, module, admin_headers) -> None:
    gw = await start_gateway()
    flags = gw.app[keys.FEATURES]
    await flags.set("proxy", "off", "maintenance", "tests")
    try:
        resp = await gw.get(url("madre/echo/x"), headers=admin_headers)
        assert resp.status == 503
        problem = await resp.json()
        assert (problem["code"], problem["feature"]) == ("feature_disabled", "proxy")
    finally:
        await flags.set("proxy", "on", None, "tests")
    assert (await gw.get(url("madre/echo/x"), headers=admin_headers)).status == 200
    assert len(module.requests_to("/base/echo/x")) == 1


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("madre/echo/a/../../../tokens", "path_forbidden"),
        ("madre/../tokens", "path_forbidden"),
        ("madre/echo/%2e%2e/%2E%2E/x", "path_forbidden"),
        ("madre/echo/%252e%252e/x", "path_forbidden"),
        ("madre/echo/..;/x", "path_forbidden"),
        ("madre/echo/./x", "path_forbidden"),
        ("madre//evil.example/x", "invalid_path"),
        ("madre/echo//x", "invalid_path"),
        ("madre/echo/a%2F..%2Fb", "invalid_path"),
        ("madre/echo/a%5Cb", "invalid_path"),
        ("madre/echo/a%00b", "invalid_path"),
        ("madre/echo/a%zzb", "invalid_path"),
        ("madre/echo/%25252e%25252e/x", "path_forbidden"),  # three layers, as the file explorer decodes
        ("madre/echo/%2525252e%2525252e/x", "invalid_path"),  # a fourth layer is not decoded: refused
        ("madre/echo/%c0%ae%c0%ae/x", "path_forbidden"),  # overlong UTF-8 for '.'
        ("madre/echo/%C0%AE/x", "path_forbidden"),
        ("madre/echo/%e0%80%ae%e0%80%ae/x", "path_forbidden"),
        ("madre/echo/%25c0%25ae%25c0%25ae/x", "path_forbidden"),
        ("madre/echo/..%c0%af/x", "path_forbidden"),  # overlong UTF-8 for '/'
        ("madre/echo/..%c1%9c/x", "path_forbidden"),  # overlong UTF-8 for '\\'
        ("madre/echo/%ef%bc%8e%ef%bc%8e/x", "path_forbidden"),  # fullwidth dots: '..' once NFKC-normalised
        ("madre/echo/a%c0%afb", "invalid_path"),
        ("madre/echo/caf%e9", "invalid_path"),  # Latin-1, not UTF-8
        ("madre/echo/x%252f..%252fy%25zz", "invalid_path"),  # an encoded '/' behind a stray '%'
    ],
)
@pytest.mark.parametrize("method", ["GET", "DELETE"])  # the lean pool and aiohttp's client
async def test_paths_escaping_the_base_path_are_refused(start_gateway, module, target, code, method) -> None:
    gw = await start_gateway()
    status, headers, body = await raw_request(gw.port, url(target), {"X-VX11-Token": ADMIN_TOKEN}, method=method)
    problem = problem_of(body)
    assert (status, problem["code"]) == ((403 if code == "path_forbidden" else 400), code)
    assert headers["content-type"] == "application/problem+json"
    assert problem["correlation_id"]
    assert module.seen == []


@pytest.mark.parametrize("method", ["GET", "PUT"])  # the lean pool and aiohttp's client
async def test_encoded_paths_that_stay_inside_pass_as_sent(start_gateway, module, admin_headers, method) -> None:
    gw = await start_gateway()
    for target in ("echo/caf%C3%A9/100%25/a%2541", "echo/%2e%2e%2e/x", "echo/.well-known/a..b"):
        status, _, _ = await raw_request(gw.port, url(f"madre/{target}"), admin_headers, method=method)
        assert status == 200, target
    assert [s.raw_path for s in module.seen] == [
        "/base/echo/caf%C3%A9/100%25/a%2541", "/base/echo/%2e%2e%2e/x", "/base/echo/.well-known/a..b"]


async def test_allow_list_limits_paths_and_methods(start_gateway, module, admin_headers) -> None:
    rules = (AllowRule(frozenset({"GET"}), ("/echo/public/",)), AllowRule(frozenset({"POST"}), ("/echo/jobs",)))
    gw = await start_gateway(service_allow={"madre": rules})
    assert (await gw.get(url("madre/echo/public/a"), headers=admin_headers)).status == 200
    assert (await gw.head(url("madre/echo/public/a"), headers=admin_headers)).status == 200
    assert (await gw.post(url("madre/echo/jobs"), data=b"1", headers=admin_headers)).status == 200
    assert (await gw.post(url("madre/echo/jobs/7"), data=b"1", headers=admin_headers)).status == 200
    outside = await gw.get(url("madre/echo/jobsx"), headers=admin_headers)
    assert (outside.status, (await outside.json())["code"]) == (403, "path_forbidden")
    wrong_method = await gw.delete(url("madre/echo/public/a"), headers=admin_headers)
    assert (wrong_method.status, (await wrong_method.json())["code"]) == (405, "method_not_allowed")
    assert wrong_method.headers["Allow"] == "GET, HEAD"
    assert [s.raw_path for s in module.seen] == ["/base/echo/public/a", "/base/echo/public/a", "/base/echo/jobs",
                                                 "/base/echo/jobs/7"]


async def test_sse_events_reach_the_client_as_the_module_sends_them(start_gateway, module, admin_headers) -> None:
    gw = await start_gateway()
    resp = await gw.get(url("madre/sse"), headers=admin_headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    async with asyncio.timeout(5):
        first = await resp.content.readuntil(b"\n\n")
    assert first == b"event: first\ndata: 1\n\n"
    assert not module.release_sse.is_set()  # the module is still holding the rest back
    module.release_sse.set()
    assert await resp.content.read() == b"event: second\ndata: 2\n\n"


async def test_chunked_and_large_bodies_stream_through_intact(start_gateway, admin_headers) -> None:
    gw = await start_gateway()
    resp = await gw.get(url("madre/chunks?count=320&size=65536"), headers=admin_headers)  # 20 MiB, chunked
    assert resp.status == 200
    size, digest = 0, hashlib.sha256()
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        digest.update(chunk)
    assert size == 320 * 65536
    assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()


async def test_request_bodies_stream_to_the_module_while_the_client_sends(start_gateway, module, admin_headers) -> None:
    gw = await start_gateway(proxy_max_body_bytes=64 * 1024 * 1024)
    block = bytes(range(256)) * 256  # 64 KiB
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for i in range(160):  # 10 MiB
            if i == 16:  # the module must already be reading before the client is done
                async with asyncio.timeout(5):
                    await module.upload_started.wait()
            digest.update(block)
            yield block

    resp = await gw.post(url("madre/upload"), data=body(), headers=admin_headers)
    assert resp.status == 200
    got = await resp.json()
    assert (got["size"], got["sha256"], got["chunked"]) == (160 * 65536, digest.hexdigest(), True)

    sized = await gw.put(url("madre/upload"), data=block * 4, headers=admin_headers)
    got = await sized.json()
    assert (got["size"], got["content_length"], got["chunked"]) == (4 * 65536, 4 * 65536, False)


async def test_a_body_over_the_limit_is_refused(start_gateway, module, admin_headers) -> None:
    gw = await start_gateway(proxy_max_body_bytes=100_000)
    sized = await gw.post(url("madre/upload"), data=b"z" * 100_001, headers=admin_headers)
    assert (sized.status, (await sized.json())["code"]) == (413, "payload_too_large")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"z" * 65536

    streamed = await gw.post(url("madre/upload"), data=body(), headers=admin_headers)
    assert (streamed.status, (await streamed.json())["code"]) == (413, "payload_too_large")


async def test_head_redirects_and_compressed_bodies_pass_unchanged(start_gateway, admin_headers) -> None:
    gw = await start_gateway()
    head = await gw.head(url("madre/gzipped"), headers={**admin_headers, "Accept-Encoding": "gzip"})
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(GZIPPED))
    assert await head.read() == b""

    async with aiohttp.ClientSession(auto_decompress=False) as raw:
        resp = await raw.get(gw.make_url(url("madre/gzipped")), headers={**admin_headers, "Accept-Encoding": "gzip"})
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == GZIPPED

    moved = await gw.get(url("madre/redirect"), headers=admin_headers, allow_redirects=False)
    assert moved.status == 302
    assert moved.headers["Location"] == "/operator/api/proxy/madre/landing?x=1"


@pytest.mark.parametrize(("method", "size"), [("GET", 64), ("GET", 256 * 1024), ("HEAD", 64), ("POST", 64),
                                           ("POST", 256 * 1024)])
async def test_module_headers_cannot_act_on_the_gateways_origin(start_gateway, module, admin_headers,
                                                                method, size) -> None:
    """GET goes over the lean pool, HEAD and POST over aiohttp's client; the large bodies stream."""
    gw = await start_gateway()
    cid = f"origin-{uuid.uuid4().hex[:8]}"
    resp = await gw.request(method, url(f"madre/hostile?size={size}"), data=b"x" if method == "POST" else None,
                            headers={**admin_headers, "X-Correlation-ID": cid})
    assert resp.status == 200
    assert len(await resp.read()) == (0 if method == "HEAD" else size)
    assert resp.headers.getall("Content-Security-Policy") == ["sandbox"]
    assert resp.headers.getall("X-Content-Type-Options") == ["nosniff"]
    assert resp.headers.getall("X-Correlation-ID") == [cid]
    assert resp.headers["X-Module-Header"] == "kept"
    assert resp.headers["Content-Type"].startswith("text/html")
    leaked = {name.lower() for name in resp.headers} & {name.lower() for name, _ in HOSTILE_HEADERS}
    assert leaked == {"content-security-policy", "x-content-type-options", "x-correlation-id", "x-module-header"}
    assert resp.cookies == {}
    assert len(module.requests_to("/base/hostile")) == 1


async def test_websocket_frames_and_close_codes_pass_both_ways(start_gateway, module, admin_headers, db) -> None:
    gw = await start_gateway(service_tokens={"madre": MODULE_TOKEN})
    async with gw.session.ws_connect(gw.make_url(url("madre/ws")), headers=admin_headers,
                                     protocols=("vx11.v1",)) as ws:
        assert ws.protocol == "vx11.v1"
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
        await ws.send_bytes(b"abc")
        assert (await ws.receive(timeout=5)).data == b"cba"
        await ws.send_str("close:4002")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 4002)
    handshake = module.requests_to("/base/ws")[0].headers
    assert handshake["authorization"] == [f"Bearer {MODULE_TOKEN}"]
    assert "x-vx11-token" not in handshake

    cid = f"ws-{uuid.uuid4().hex[:8]}"
    async with gw.session.ws_connect(gw.make_url(url("madre/ws")), headers={**admin_headers, "X-Correlation-ID": cid}) as ws:
        await ws.send_str("ping")
        assert (await ws.receive(timeout=5)).data == "echo:ping"
        await ws.close(code=4001, message=b"client done")
    await wait_for(lambda: len(module.ws_close_codes) == 1)
    assert module.ws_close_codes == [4001]
    # Audited as what the client got: the upgrade, not a request it walked away from.
    row = await audit_row_of(db, cid)
    assert (row["status"], row["service"]) == (101, "madre")

    async with gw.session.ws_connect(gw.make_url(url("madre/ws")), headers=admin_headers) as ws:
        await ws.send_str("drop")  # the module vanishes without a close frame
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1014)



async def test_a_websocket_handshake_passes_none_of_the_modules_headers(start_gateway, module,
                                                                       admin_headers) -> None:
    gw = await start_gateway()
    answers: list[aiohttp.ClientResponse] = []

    async def on_end(session: object, context: object, params: aiohttp.TraceRequestEndParams) -> None:
        answers.append(params.response)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session, \
            session.ws_connect(gw.make_url(url("madre/ws")), headers=admin_headers) as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
    [answer] = answers
    assert answer.status == 101
    # The gateway's own correlation id and nosniff, never the module's values.
    shared = {n.lower() for n in answer.headers} & {n.lower() for n, _ in HOSTILE_HEADERS}
    assert shared <= {"x-correlation-id", "x-content-type-options"}
    assert answer.headers["X-Correlation-ID"] != "module-chosen-id"
    assert answer.headers.getall("X-Content-Type-Options") == ["nosniff"]


def test_allow_and_timeout_settings_syntax() -> None:
    env = {
        "TENTACULO_SERVICE_MADRE_ALLOW": "GET,HEAD:/api/,/health; POST:/api/jobs; /public",
        "TENTACULO_SERVICE_OPERATOR_BACKEND_TIMEOUT": "connect=1.5,read=300",
        "TENTACULO_SERVICE_SWITCH_TIMEOUT": "12",
        "TENTACULO_SERVICE_MADRE_TOKEN": MODULE_TOKEN,
        "TENTACULO_TRUSTED_PROXIES": "10.0.0.0/8,::1",
    }
    s = Settings.from_env(env)
    assert s.service_allow["madre"] == (
        AllowRule(frozenset({"GET", "HEAD"}), ("/api/", "/health")),
        AllowRule(frozenset({"POST"}), ("/api/jobs",)),
        AllowRule(None, ("/public",)),
    )
    rule = s.service_allow["madre"][0]
    assert rule.covers("/health") and rule.covers("/health/db") and not rule.covers("/healthz")
    assert rule.covers("/api/x") and not rule.covers("/api")
    assert s.service_timeouts == {"operator_backend": ModuleTimeouts(1.5, 300.0), "switch": ModuleTimeouts(None, 12.0)}
    assert s.service_tokens == {"madre": MODULE_TOKEN}
    assert MODULE_TOKEN not in repr(s)
    assert Settings.from_env({"TENTACULO_SERVICE_MADRE_READ_UPGRADES": "/ws, /feeds/"}).service_read_upgrades == {
        "madre": ("/ws", "/feeds/")}
    assert Settings.from_env({"TENTACULO_PUBLIC_URL": "https://ops.example.com:8443/"}).public_url == \
        "https://ops.example.com:8443/"
    for var, bad in [("TENTACULO_SERVICE_MADRE_ALLOW", "GET:api/"), ("TENTACULO_SERVICE_MADRE_ALLOW", "/a/../b"),
                     ("TENTACULO_SERVICE_MADRE_READ_UPGRADES", "ws"),
                     ("TENTACULO_PUBLIC_URL", "ops.example.com"), ("TENTACULO_PUBLIC_URL", "ftp://ops.example.com"),
                     ("TENTACULO_PUBLIC_URL", "https://ops.example.com/console"),
                     ("TENTACULO_PUBLIC_URL", "https://user:pw@ops.example.com"),
                     ("TENTACULO_PUBLIC_URL", "https://ops.example.com?x=1"),
                     ("TENTACULO_SERVICE_MADRE_READ_UPGRADES", "/ws/../admin"),
                     ("TENTACULO_SERVICE_MADRE_TIMEOUT", "slow"), ("TENTACULO_SERVICE_MADRE_TIMEOUT", "write=3"),
                     ("TENTACULO_TRUSTED_PROXIES", "not-an-ip"), ("TENTACULO_PROXY_RETRIES", "9")]:
        with pytest.raises(ValueError, match=var):
            Settings.from_env({var: bad})


async def test_sequential_calls_reuse_one_keep_alive_connection(start_gateway, module, admin_headers) -> None:
    gateway = await start_gateway()
    for n in range(20):
        resp = await gateway.get(f"/operator/api/proxy/madre/echo/reuse-{n}", headers=admin_headers)
        assert resp.status == 200
    ports = {seen.peer_port for seen in module.requests_to("/base/echo/reuse-")}
    assert len(module.requests_to("/base/echo/reuse-")) == 20
    assert len(ports) == 1, f"the proxy opened {len(ports)} connections for 20 sequential calls"


async def test_connections_left_idle_after_a_burst_are_closed(start_gateway, module, admin_headers,
                                                              monkeypatch) -> None:
    monkeypatch.setattr(ModulePool, "IDLE_SECONDS", 0.2)
    gateway = await start_gateway()
    burst = await asyncio.gather(*(gateway.get(url("madre/slow?delay=0.1"), headers=admin_headers) for _ in range(4)))
    assert [r.status for r in burst] == [200] * 4
    burst_ports = {seen.peer_port for seen in module.requests_to("/base/slow")}
    assert len(burst_ports) == 4
    await asyncio.sleep(0.3)
    assert (await gateway.get(url("madre/echo/after"), headers=admin_headers)).status == 200
    [kept] = [seen.peer_port for seen in module.requests_to("/base/echo/after")]
    assert kept in burst_ports  # an idle connection was reused ...

    async def only_the_used_one_open() -> bool:  # ... and the others, idle too long, were closed
        assert module.server is not None and module.server.runner is not None
        server = module.server.runner.server
        assert server is not None
        open_ports = {h.transport.get_extra_info("peername")[1] for h in server.connections  # type: ignore[attr-defined]
                      if h.transport is not None}
        return open_ports & burst_ports == {kept}

    await wait_for(only_the_used_one_open, timeout=5)


@pytest.mark.parametrize(("to", "location"), [
    ("/base/login?next=1", "/operator/api/proxy/madre/login?next=1"),  # a path into the module
    ("landing", "landing"),  # relative: resolved against the proxy path by the browser
    ("/elsewhere", "/elsewhere"),  # a path of the gateway's own origin
    ("https://evil.example/phish", None),
    ("//evil.example/phish", None),
    ("/\\evil.example/phish", None),
    (" \t//evil.example", None),
    ("javascript:alert(1)", None),
], ids=["into-module", "relative", "same-origin", "other-origin", "scheme-relative", "backslash", "spaces",
        "javascript"])
async def test_a_modules_redirect_never_leaves_the_gateways_origin(start_gateway, admin_headers, to, location) -> None:
    gw = await start_gateway()
    resp = await gw.get(url("madre/redirect-to"), params={"to": to}, headers=admin_headers, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers.get("Location") == location

"""Correlation ids and problem+json errors, on tiny inline apps and on the gateway."""

from __future__ import annotations

import io
import re
import uuid

import structlog
from aiohttp import web
from structlog.testing import capture_logs

from tentaculo.http.errors import Problem
from tentaculo.http.middlewares import add_correlation_header, correlation_middleware, error_middleware
from tests.helpers import inline_app

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _app() -> web.Application:
    app = inline_app(correlation_middleware, error_middleware)
    app.on_response_prepare.append(add_correlation_header)

    async def ok(request: web.Request) -> web.Response:
        import structlog

        structlog.get_logger("t").info("inside")
        return web.json_response({"ok": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"chunk")
        return resp

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail /etc/passwd")

    async def problem(request: web.Request) -> web.Response:
        raise Problem("validation_error", "bad", errors=[{"field": "x", "message": "y"}])

    app.router.add_get("/ok", ok)
    app.router.add_get("/stream", stream)
    app.router.add_get("/boom", boom)
    app.router.add_post("/problem", problem)
    return app


async def test_valid_correlation_id_is_kept_and_echoed(aiohttp_client) -> None:
    client = await aiohttp_client(_app())
    resp = await client.get("/ok", headers={"X-Correlation-ID": "op-42:retry.1"})
    assert resp.headers["X-Correlation-ID"] == "op-42:retry.1"


async def test_missing_correlation_id_is_minted_as_uuid4(aiohttp_client) -> None:
    client = await aiohttp_client(_app())
    resp = await client.get("/ok")
    assert UUID_RE.match(resp.headers["X-Correlation-ID"])


async def test_correlation_id_with_spaces_or_10kb_is_replaced(gateway) -> None:
    for bad in ("has spaces in it", "x" * 10_000, "-leading-dash", "a" * 129, "semi;colon"):
        resp = await gateway.get("/health", headers={"X-Correlation-ID": bad})
        assert resp.status == 200
        assert UUID_RE.match(resp.headers["X-Correlation-ID"]), bad[:20]


async def test_streamed_response_carries_correlation_id(aiohttp_client) -> None:
    client = await aiohttp_client(_app())
    resp = await client.get("/stream", headers={"X-Correlation-ID": "stream-1"})
    assert await resp.read() == b"chunk"
    assert resp.headers["X-Correlation-ID"] == "stream-1"


async def test_correlation_id_is_bound_into_log_lines(aiohttp_client) -> None:
    client = await aiohttp_client(_app())
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await client.get("/ok", headers={"X-Correlation-ID": "log-me"})
    inside = [entry for entry in logs if entry["event"] == "inside"]
    assert inside and inside[0]["correlation_id"] == "log-me"


async def test_unhandled_error_is_a_500_problem_without_internals(aiohttp_client) -> None:
    client = await aiohttp_client(_app())
    with capture_logs() as logs:
        resp = await client.get("/boom", headers={"X-Correlation-ID": "boom-1"})
    assert resp.status == 500
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["code"] == "internal_error"
    assert body["correlation_id"] == "boom-1"
    text = str(body)
    assert "secret detail" not in text and "/etc/passwd" not in text and "Traceback" not in text
    assert any(e["event"] == "unhandled_error" and e.get("exc_info") for e in logs)


async def test_problem_carries_extra_fields(aiohttp_client) -> None:
    client = await aiohttp_client(_app())
    resp = await client.post("/problem")
    body = await resp.json()
    assert resp.status == 422
    assert body["errors"] == [{"field": "x", "message": "y"}]
    assert set(body) >= {"type", "title", "status", "detail", "code", "correlation_id"}


async def test_gateway_unknown_route_is_404_problem(gateway) -> None:
    cid = str(uuid.uuid4())
    resp = await gateway.get("/nowhere", headers={"X-Correlation-ID": cid})
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["code"] == "not_found" and body["correlation_id"] == cid


async def test_gateway_wrong_method_is_405_problem_with_allow(gateway) -> None:
    resp = await gateway.delete("/health")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    assert (await resp.json())["code"] == "method_not_allowed"


async def test_gateway_malformed_json_is_400_invalid_json(gateway, admin_headers) -> None:
    resp = await gateway.post("/operator/api/tokens", data=b'{"name": ', headers=admin_headers)
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == "invalid_json"
    assert body["correlation_id"] == resp.headers["X-Correlation-ID"]


async def test_gateway_oversized_body_is_413(gateway, admin_headers, settings) -> None:
    resp = await gateway.post(
        "/operator/api/tokens", data=io.BytesIO(b"x" * (settings.max_body_bytes + 1)), headers=admin_headers
    )
    assert resp.status == 413
    assert (await resp.json())["code"] == "payload_too_large"


async def test_gateway_server_header_has_no_version(gateway) -> None:
    resp = await gateway.get("/health")
    assert resp.headers["Server"] == "tentaculo"

"""``* /operator/api/proxy/{service}/{path}``: the reverse proxy to the VX11 modules.

Who may call what, in the order it is checked: the token's scope (``read`` for GET and HEAD,
``operate`` for every other method and for a WebSocket upgrade, except under the paths of
``TENTACULO_SERVICE_<NAME>_READ_UPGRADES``) and the ``proxy`` feature flag (middlewares), then the
module (unknown: 404; disabled or without an address: 503 ``feature_disabled``), the path
(``tentaculo/proxy/``), the module's allow-list (``TENTACULO_SERVICE_<NAME>_ALLOW``: a path
outside it is 403 ``path_forbidden``, a method it does not list 405), a body on GET or HEAD
(400 ``validation_error``), the call's risk (``tentaculo/auth/risk.py``: a high-risk call waits for
its confirmation, 428 ``confirmation_required``) and the module's circuit breaker (open: 502
``upstream_unavailable`` with ``Retry-After``). The transport does the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from multidict import CIMultiDict

from tentaculo import keys
from tentaculo.auth.actions import Action, check_scope, guard
from tentaculo.auth.confirm import HEADER as CONFIRM_HEADER
from tentaculo.auth.tokens import requires
from tentaculo.http.errors import Problem
from tentaculo.http.middlewares import CLIENT_CLOSED
from tentaculo.proxy.call import BodyTooLarge, ProxyCall, RequestBody, Upstream, UpstreamError, UpstreamUnavailable
from tentaculo.proxy.headers import client_headers, upstream_headers
from tentaculo.proxy.paths import forwarded_query, module_path
from tentaculo.proxy.transport import ModuleProxy, UpstreamResponse
from tentaculo.proxy.websocket import WS_HEARTBEAT, WS_MAX_MESSAGE, is_websocket, pump_websockets
from tentaculo.settings import AllowRule, service_key, under_prefixes
from tentaculo.status.features import feature
from tentaculo.status.services import GATEWAY, ServiceEntry, ServiceRegistry, unconfigured_detail

log = structlog.get_logger("tentaculo.proxy")

NAME_MAX = 64
# Bodies up to this size with a Content-Length are read whole and answered in one write.
SMALL_BODY = 64 * 1024
# Module statuses that count against its circuit: it is failing, not the request.
FAILURE_STATUSES = frozenset({500, 502, 503, 504})


def proxy_scope(request: web.Request) -> str:
    """GET and HEAD read; everything else, and a WebSocket outside the module's read-only paths, operates."""
    if request.method not in ("GET", "HEAD"):
        return "operate"
    if "Upgrade" in request.headers and is_websocket(request):
        # An open socket carries the client's messages to the module: that drives it, unless the
        # module declared the path a read-only feed (TENTACULO_SERVICE_<NAME>_READ_UPGRADES).
        name = request.match_info["service"]
        prefixes = request.app[keys.SETTINGS].service_read_upgrades.get(service_key(name))
        if prefixes is None:
            return "operate"
        try:
            _, path = module_path(request.raw_path.partition("?")[0], name)
        except Problem:
            return "operate"  # a path the view refuses anyway is never read-only
        return "read" if under_prefixes(prefixes, path) else "operate"
    return "read"


class Verdict:
    """Reports one proxied call to the module's circuit breaker exactly once (a broken body may add a failure)."""

    __slots__ = ("_name", "_registry", "given")

    def __init__(self, registry: ServiceRegistry, name: str) -> None:
        self._registry = registry
        self._name = name
        self.given = False

    def ok(self) -> None:
        if not self.given:
            self.given = True
            self._registry.proxy_succeeded(self._name)

    def failed(self, reason: str) -> None:
        self.given = True
        self._registry.proxy_failed(self._name, reason)

    def release(self) -> None:
        if not self.given:
            self.given = True
            self._registry.proxy_released(self._name)


@feature("proxy")
@requires(proxy_scope)
async def proxy(request: web.Request) -> web.StreamResponse:
    """Forward the call to the module named in the path and relay its answer as it streams."""
    app = request.app
    settings = app[keys.SETTINGS]
    registry = app[keys.SERVICES]
    name = request.match_info["service"]
    entry = registry.get(name)
    if entry is None or entry.name == GATEWAY:
        shown = name if len(name) <= NAME_MAX else name[:NAME_MAX] + "..."
        why = "the gateway does not proxy to itself" if entry is not None else "no module has this name"
        raise Problem("not_found", f"cannot proxy to {shown!r}: {why}")
    request[keys.SERVICE] = entry.name
    address = entry.address
    if entry.enabled and address is None:
        raise Problem("module_unconfigured", unconfigured_detail(name), service=name)
    if not entry.enabled or address is None:
        reason = registry.status_of(name).reason
        raise Problem("feature_disabled", f"module {name!r} is off: {reason}", feature="proxy", service=name)
    transport = app[keys.PROXY]
    try:
        target = transport.upstream(address)
    except ValueError:
        raise Problem("not_found", f"module {name!r} does not speak HTTP: it cannot be proxied") from None
    raw_path, _, raw_query = request.raw_path.partition("?")
    rest, path = module_path(raw_path, name)
    key = service_key(name)
    _check_allowed(settings.service_allow.get(key), request.method, path, name)
    length = request.content_length
    if request.method in ("GET", "HEAD") and (length or "Transfer-Encoding" in request.headers):
        # RFC 9110 gives such a body no meaning: modules and caches disagree on whether it is there,
        # and a read token must not deliver a payload. 400, not 422: the request itself is malformed.
        raise Problem("validation_error", f"a {request.method} request must not carry a body", status=400)
    if length is not None and length > settings.proxy_max_body_bytes:
        raise Problem("payload_too_large", f"the request body exceeds {settings.proxy_max_body_bytes} bytes")
    risk = app[keys.RISK_RULES].classify(entry.name, request.method, path)
    buffered: bytes | None = None
    action: Action | None = None
    if risk.risk != "low":
        check_scope(request, risk)  # before a body is read for it
        body_hash = None
        if risk.risk == "high":
            # Its hash binds the confirmation; only the confirmed call needs the body itself.
            body_hash, buffered = await _read_body(request, settings.proxy_max_body_bytes,
                                                   keep=CONFIRM_HEADER in request.headers)
        action = await guard(request, entry.name, risk, body_hash)
    try:
        response = await _perform(request, name, entry, target, rest, raw_query, buffered)
    except Problem as problem:
        if action is not None:
            action.done(problem.status)
        raise
    except BaseException as error:  # cancelled, or a bug: the spent confirmation still gets its outcome
        if action is not None:
            action.failed(error)
        raise
    if action is not None:
        action.done(response.status)
    return response


async def _read_body(request: web.Request, limit: int, *, keep: bool) -> tuple[str, bytes | None]:
    """The SHA-256 (hex) of the request body, hashed as it arrives, and the body when ``keep``.

    413 ``payload_too_large`` past ``limit`` (``TENTACULO_PROXY_MAX_BODY_BYTES``, as for any proxied body).
    """
    digest = hashlib.sha256()
    kept = bytearray() if keep else None
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise Problem("payload_too_large", f"the request body exceeds {limit} bytes")
        digest.update(chunk)
        if kept is not None:
            kept += chunk
    return digest.hexdigest(), bytes(kept) if kept is not None else None


async def _perform(
    request: web.Request, name: str, entry: ServiceEntry, target: Upstream, rest: str, raw_query: str,
    buffered: bytes | None,
) -> web.StreamResponse:
    """Forward an admitted call (its risk settled) and relay the answer."""
    app = request.app
    settings = app[keys.SETTINGS]
    registry = app[keys.SERVICES]
    transport = app[keys.PROXY]
    key = service_key(name)
    length = request.content_length
    headers = upstream_headers(
        request,
        correlation_id=request[keys.CORRELATION_ID],
        credential=settings.service_tokens.get(key),
        trusted=transport.trusted,
        public=transport.public,
    )
    headers.popall(CONFIRM_HEADER, None)  # the gateway's own: the module never sees it
    websocket = is_websocket(request)
    offered = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
    if websocket and not web.WebSocketResponse(protocols=offered).can_prepare(request).ok:
        raise Problem("validation_error", "the WebSocket handshake is not valid", status=400)

    if not entry.breaker.allow():
        retry_in = entry.breaker.snapshot()["retry_in_s"] or 0
        raise UpstreamUnavailable(
            name, "is failing: its circuit is open after repeated failures",
            headers={"Retry-After": str(max(1, math.ceil(retry_in)))},
        )
    body: RequestBody | None = None
    if request.body_exists and not websocket:
        if buffered is not None:
            body = _ReadBody(buffered)
            headers.popall("Transfer-Encoding", None)
            headers["Content-Length"] = str(len(buffered))
        else:
            body = RequestBody(request.content, settings.proxy_max_body_bytes)
            if length is not None:
                headers["Content-Length"] = str(length)
    call = ProxyCall(
        service=name,
        method=request.method,
        target=target,
        rest=rest,
        query=forwarded_query(raw_query),
        headers=headers,
        body=body,
        auth=None if key in settings.service_tokens else target.auth,
        timeouts=transport.timeouts(settings.service_timeouts.get(key)),
    )
    verdict = Verdict(registry, entry.name)
    try:
        if websocket:
            return await _websocket(request, transport, verdict, call, offered)
        return await _forward(request, transport, verdict, call)
    finally:
        verdict.release()  # no-op once a verdict was given; frees a half-open trial otherwise


class _ReadBody(RequestBody):
    """A body already read whole (a high-risk call's, bound to its confirmation by its hash)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.sent = 0
        self.too_large = False
        self.client_failed = False
        self.timed_out = None

    async def chunks(self) -> AsyncIterator[bytes]:
        self.sent = len(self._data)
        yield self._data


def _check_allowed(rules: tuple[AllowRule, ...] | None, method: str, path: str, name: str) -> None:
    """Apply the module's allow-list; no list: every path and method (scopes still apply)."""
    if rules is None:
        return
    covering = [r for r in rules if r.covers(path)]
    if not covering:
        raise Problem("path_forbidden", f"module {name!r} does not allow proxied calls to this path")
    wanted = {method, "GET"} if method == "HEAD" else {method}  # HEAD goes where GET may
    allowed: set[str] = set()
    for rule in covering:
        if rule.methods is None or wanted & rule.methods:
            return
        allowed |= rule.methods
    if "GET" in allowed:
        allowed.add("HEAD")
    raise Problem(
        "method_not_allowed",
        f"module {name!r} does not allow {method} on this path; allowed: {', '.join(sorted(allowed))}",
        headers={"Allow": ", ".join(sorted(allowed))},
    )


async def _forward(request: web.Request, transport: ModuleProxy, verdict: Verdict, call: ProxyCall) -> web.StreamResponse:
    name, body = call.service, call.body
    try:
        upstream = await transport.send(call)
    except BodyTooLarge:
        limit = request.app[keys.SETTINGS].proxy_max_body_bytes
        raise Problem("payload_too_large", f"the request body exceeds {limit} bytes") from None
    except UpstreamError as problem:
        if body is not None and body.timed_out is not None:
            raise body.timed_out from None  # the client's fault, not the module's: no verdict
        if body is not None and body.client_failed:
            log.info("proxy_client_gone", service=name, phase="request body")
            return web.Response(status=CLIENT_CLOSED)
        verdict.failed(problem.detail)
        log.warning("proxy_upstream_failed", service=name, code=problem.code, detail=problem.detail)
        raise
    finished = False
    try:
        if upstream.status in FAILURE_STATUSES:
            verdict.failed(f"answered HTTP {upstream.status}")
        else:
            verdict.ok()
        headers = client_headers(upstream.headers, call.target, name)
        length = upstream.content_length
        if (length is not None and length <= SMALL_BODY and request.method != "HEAD"
                and upstream.status not in (204, 304) and "Transfer-Encoding" not in upstream.headers):
            # Small and sized: read it and answer in one write (no memory risk, a syscall saved);
            # a module that breaks off here still gets a clean 502 instead of a truncated body.
            try:
                payload = await upstream.read()
            except UpstreamError as broke:
                verdict.failed(broke.detail)
                log.warning("proxy_upstream_broke_off", service=name, detail=broke.detail, sent=0)
                raise broke from None
            finished = True
            return web.Response(body=payload, status=upstream.status, headers=headers)
        response = await _relay(request, upstream, headers, verdict, name)
        finished = True
        return response
    finally:
        if finished and upstream.at_eof():
            upstream.release()
        else:
            upstream.close()  # a connection with an unread body is never reused


async def _relay(
    request: web.Request,
    upstream: UpstreamResponse,
    headers: CIMultiDict[str],
    verdict: Verdict,
    name: str,
) -> web.StreamResponse:
    """Stream the module's body to the client chunk by chunk as it arrives."""
    response = web.StreamResponse(status=upstream.status, headers=headers)
    if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
        response.content_length = upstream.content_length
    try:
        await response.prepare(request)
    except ConnectionError:
        return response  # the client left before the status line went out
    while True:
        try:
            chunk = await upstream.read_chunk()
        except UpstreamError as problem:
            verdict.failed(problem.detail)
            log.warning("proxy_upstream_broke_off", service=name, detail=problem.detail, sent=response.body_length)
            # The status line is gone: the only honest signal left is an incomplete response.
            if request.transport is not None:
                request.transport.abort()
            return response
        if not chunk:
            break
        try:
            await response.write(chunk)
        except ConnectionError:
            log.info("proxy_client_gone", service=name, phase="response body")
            return response
    try:
        await response.write_eof()
    except ConnectionError:
        pass
    return response


async def _websocket(
    request: web.Request, transport: ModuleProxy, verdict: Verdict, call: ProxyCall, offered: tuple[str, ...]
) -> web.StreamResponse:
    name = call.service
    try:
        module_ws = await transport.websocket(call, offered)
    except UpstreamError as problem:
        status = problem.extra.get("upstream_status")
        if status is None or status in FAILURE_STATUSES:
            verdict.failed(problem.detail)
        else:
            verdict.ok()  # the module answered; it just does not upgrade this path
        log.warning("proxy_upstream_failed", service=name, code=problem.code, detail=problem.detail)
        raise
    verdict.ok()
    client_ws = web.WebSocketResponse(
        protocols=(module_ws.protocol,) if module_ws.protocol else (),
        heartbeat=WS_HEARTBEAT,
        max_msg_size=WS_MAX_MESSAGE,
    )
    try:
        await client_ws.prepare(request)
    except (ConnectionError, asyncio.CancelledError):
        await module_ws.close()
        raise
    await pump_websockets(client_ws, module_ws)
    return client_ws

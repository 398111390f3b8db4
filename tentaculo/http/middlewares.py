"""The middleware chain, outermost first: correlation, errors, audit+metrics, CORS preflights, auth, feature gate."""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import orjson
import structlog
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Middleware

from tentaculo import keys
from tentaculo.auth.limits import BudgetFigures, budget_exceeded, budget_key
from tentaculo.auth.tokens import (
    PUBLIC,
    QUERY_TOKEN_NAMES,
    TICKET_PARAM,
    Principal,
    TokenExpired,
    TokenStoreUnavailable,
    accepts_ticket,
    required_scope,
)
from tentaculo.db import DB_UNREACHABLE
from tentaculo.http.cors import announced_route, cors_preflight
from tentaculo.http.errors import (
    OPENAI_PREFIX,
    Problem,
    RequestTimeout,
    database_unreachable,
    failure_reason,
    openai_error,
)
from tentaculo.settings import Settings
from tentaculo.status.features import feature_of

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("tentaculo.http")

CORRELATION_HEADER = "X-Correlation-ID"
# Headers every answer carries, including those the server writes before the app is reached.
BASE_HEADERS = {"Server": "tentaculo", "X-Content-Type-Options": "nosniff"}
CORRELATION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Status recorded when the client went away before a response was sent (nginx's convention);
# after a streamed response's head went out, its status is recorded whatever ends the stream.
CLIENT_CLOSED = 499
# A handler's query that met a PostgreSQL outage: the error layer answers database_unreachable().
DATABASE_DOWN = database_unreachable().status

_HTTP_CODES = {
    401: "auth_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
}


def problem_response(request: web.Request, problem: Problem) -> web.Response:
    """Render ``problem`` as application/problem+json carrying the request's correlation id.

    Under ``/v1/`` (the OpenAI-compatible face) it also carries OpenAI's ``error`` member, whatever
    refused the call: auth, a turned-off feature, routing or the handler.
    """
    body = problem.body(request.get(keys.CORRELATION_ID, ""))
    if request.path.startswith(OPENAI_PREFIX):
        body.setdefault("error", openai_error(problem))
    headers = problem.headers
    if problem.status == 401 and "WWW-Authenticate" not in headers:
        headers = {**headers, "WWW-Authenticate": _challenge(problem.code)}
    response = web.Response(
        body=orjson.dumps(body),
        status=problem.status,
        content_type="application/problem+json",
        headers=headers,
    )
    if problem.code == "request_timeout":
        response.force_close()  # the rest of the body may still arrive; the connection is not reusable
    return response


# Every 401 names the schemes the gateway accepts (RFC 9110 section 11.6.1): Bearer in
# Authorization; the X-VX11-Token header carries the same token.
CHALLENGE = 'Bearer realm="tentaculo"'


def _challenge(code: str) -> str:
    return f'{CHALLENGE}, error="invalid_token"' if code == "invalid_token" else CHALLENGE


def problem_from_http(exc: web.HTTPException, request: web.Request) -> Problem:
    """Translate aiohttp's own HTTP errors (404, 405, 413, ...) into contract problems."""
    code = _HTTP_CODES.get(exc.status)
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After", "WWW-Authenticate")}
    if exc.status == 404:
        detail = f"no route for {request.method} {request.path}"
    elif exc.status == 405:
        detail = f"{request.method} is not allowed here; allowed: {headers.get('Allow', '')}"
    elif exc.status == 413:
        detail = f"the request body exceeds {request.app[keys.SETTINGS].max_body_bytes} bytes"
    else:
        detail = exc.reason
    if code is None:
        code = "validation_error" if exc.status < 500 else "internal_error"
    return Problem(code, detail, status=exc.status, headers=headers)


def status_of(exc: BaseException) -> int:
    """The status a client receives for an exception leaving a handler."""
    if isinstance(exc, Problem):
        return exc.status
    if isinstance(exc, web.HTTPException):
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return CLIENT_CLOSED
    if isinstance(exc, DB_UNREACHABLE):
        return DATABASE_DOWN
    return 500


def route_of(request: web.Request) -> str | None:
    """The matched route's template, e.g. ``/operator/api/proxy/{service}/{path}``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


def new_correlation_id() -> str:
    """A random UUID4 string. Correlation ids are lookup keys, not secrets: a fast PRNG is enough."""
    h = "%032x" % (random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# Version 4 and the RFC 4122 variant, as bit masks over the 128-bit integer.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


@web.middleware
async def correlation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Keep a well-formed X-Correlation-ID or mint one, and bind it into every log line."""
    incoming = request.headers.get(CORRELATION_HEADER)
    cid = incoming if incoming and CORRELATION_RE.fullmatch(incoming) else new_correlation_id()
    request[keys.CORRELATION_ID] = cid
    request[keys.STARTED] = time.perf_counter()
    # aiohttp runs each request in its own task with a fresh copy of the context: bind, no clear.
    structlog.contextvars.bind_contextvars(correlation_id=cid)
    if not request.body_exists or request.content.is_eof():
        return await handler(request)
    deadline = BodyDeadline(request.content, request.app[keys.SETTINGS])
    try:
        return await handler(request)
    finally:
        deadline.cancel()


class BodyDeadline:
    """Fails a request body's reads with 408 once the client sends too slowly.

    The body has ``body_timeout`` seconds, plus one for every ``body_min_rate`` bytes received: a
    trickle (one byte every few seconds) is cut, a large upload at a sane rate is not.
    """

    __slots__ = ("_content", "_handle", "_loop", "_min_rate", "_start", "_timeout")

    def __init__(self, content: StreamReader, settings: Settings) -> None:
        self._content = content
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()
        self._timeout = settings.body_timeout
        self._min_rate = settings.body_min_rate
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self._start + self._timeout, self._check)

    def _check(self) -> None:
        content = self._content
        if content.is_eof() or content.exception() is not None:
            self._handle = None
            return
        due = self._start + self._timeout + content.total_bytes / self._min_rate
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._handle = None
        log.info("request_body_timeout", received=content.total_bytes)
        content.set_exception(RequestTimeout(
            f"the request body arrived too slowly: allowed {self._timeout:g} s plus 1 s per "
            f"{self._min_rate} bytes received"
        ))

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def add_correlation_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streamed ones included, carries the id and ``nosniff``; no version banner.

    A streamed response's status is remembered: its handler may still be cancelled by the client
    leaving, and the audit row must say what the client was answered.
    """
    response.headers.update(BASE_HEADERS)
    cid = request.get(keys.CORRELATION_ID)
    if cid is not None:
        response.headers[CORRELATION_HEADER] = cid
    if type(response) is not web.Response:
        request[keys.SENT_STATUS] = response.status


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into problem+json; never a stack trace on the wire."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem_response(request, problem)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(request, problem_from_http(exc, request))
    except asyncio.CancelledError:
        raise
    except DB_UNREACHABLE as exc:  # a handler's query met an outage: say so, and when to try again
        log.warning("database_unreachable", method=request.method, path=request.path, error=failure_reason(exc))
        return problem_response(request, database_unreachable())
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        return problem_response(request, Problem("internal_error", "the gateway could not handle this request"))


def _passed_routing(request: web.Request) -> bool:
    return request.match_info.http_exception is None


def record_middleware(*, access_log: bool) -> Middleware:
    """Audit and metrics for every routed request, whatever its outcome; optionally a log line.

    One layer records both: they need the same status, route and duration.
    """

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is None:
            route = request.match_info.route.resource.canonical  # type: ignore[union-attr]
        else:  # did not pass routing; a CORS preflight counts as the call it announces
            announced = await announced_route(request) if request.method == "OPTIONS" else None
            if announced is None:
                return await handler(request)
            route = announced
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except BaseException as exc:
            # Once a streamed response's head went out, that is what the client was answered.
            status = request.get(keys.SENT_STATUS) or status_of(exc)
            raise
        finally:
            duration_ms = (time.perf_counter() - request[keys.STARTED]) * 1000
            principal = request.get(keys.PRINCIPAL)
            token_name = principal.name if principal is not None else None
            app = request.app
            app[keys.AUDIT].record(
                (
                    datetime.now(UTC),
                    request[keys.CORRELATION_ID],
                    token_name,
                    request.method,
                    route,
                    request.path,
                    status,
                    duration_ms,
                    request.remote,
                    app[keys.SETTINGS].instance,
                    request.get(keys.SERVICE),
                )
            )
            app[keys.METRICS].observe(route, request.method, status, duration_ms)
            if access_log:
                log.info(
                    "request",
                    method=request.method,
                    path=request.path,
                    status=status,
                    duration_ms=round(duration_ms, 3),
                    token_name=token_name,
                )

    return record


def presented_token(request: web.Request) -> str | None:
    """The token from X-VX11-Token or ``Authorization: Bearer``; never from the query string."""
    token = request.headers.get("X-VX11-Token")
    if token:
        return token.strip()
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the token to a principal, check the scope the route declares, then its feature flag.

    Failed authentications count against the client's address; a blocked address is refused
    before its token is looked at.
    """
    if not _passed_routing(request):
        return await handler(request)
    scope = required_scope(request.match_info.handler, request)
    if scope == PUBLIC:
        _check_feature(request)
        return await handler(request)
    limiter = request.app[keys.AUTH_LIMITER]
    if limiter.blocked:
        limiter.check(request)
    try:
        principal = await _principal_of(request)
    except Problem as problem:
        if problem.code == "invalid_token":
            await limiter.failed(request)
        raise
    request[keys.PRINCIPAL] = principal
    structlog.contextvars.bind_contextvars(token_name=principal.name)
    if principal.requests_per_minute is not None:
        await _spend_budget(request, principal)
    if scope not in principal.scopes:
        raise Problem("forbidden", f"this call needs the '{scope}' scope", required_scope=scope)
    _check_feature(request)
    return await handler(request)


async def _principal_of(request: web.Request) -> Principal:
    """Who the request's token (or event ticket) stands for; 401 problems otherwise."""
    ticket = request.query.get(TICKET_PARAM) if request.query_string else None
    if ticket is not None and not accepts_ticket(request.match_info.handler):
        raise Problem("invalid_token", "an event ticket only opens event streams; send the X-VX11-Token header")
    if request.query_string and any(name.lower() in QUERY_TOKEN_NAMES for name in request.query):
        raise Problem("invalid_token", "tokens are not accepted in the query string; send the X-VX11-Token header")
    token = presented_token(request)
    if token is None and ticket is not None:
        return await request.app[keys.TICKETS].verify(ticket)
    if token is None:
        raise Problem(
            "auth_required",
            "send a token in X-VX11-Token or Authorization: Bearer",
            headers={"WWW-Authenticate": CHALLENGE},
        )
    try:
        found = await request.app[keys.TOKENS].authenticate(token)
    except TokenStoreUnavailable:
        raise database_unreachable("the token database is unreachable; try again shortly") from None
    except TokenExpired as exc:
        when = datetime.fromtimestamp(exc.expires, UTC).isoformat().replace("+00:00", "Z")
        raise Problem("invalid_token", f"the token expired at {when}; ask an admin for a new one") from None
    if found is None:
        raise Problem("invalid_token", "the token is unknown, revoked or malformed")
    return found


async def _spend_budget(request: web.Request, principal: Principal) -> None:
    """Count one request against the token's budget (shared through Redis); 429 when it is spent."""
    limit = principal.requests_per_minute or 1
    verdict = await request.app[keys.RATE_COUNTER].hit(budget_key(principal.token_id), 60.0 / limit, limit)
    request[keys.RATE_LIMIT] = BudgetFigures(limit, verdict.remaining, max(0, math.ceil(verdict.reset_after)))
    if not verdict.allowed:
        raise budget_exceeded(limit, verdict)


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the answers to a token with a budget carry ``RateLimit-*``, streamed ones too."""
    figures = request.get(keys.RATE_LIMIT)
    if figures is not None:
        response.headers["RateLimit-Limit"] = str(figures.limit)
        response.headers["RateLimit-Remaining"] = str(figures.remaining)
        response.headers["RateLimit-Reset"] = str(figures.reset)


def _check_feature(request: web.Request) -> None:
    """The feature gate: 503 ``feature_disabled`` for a handler marked ``@feature(name)`` while that flag is off.

    It runs after the token and scope checks (a caller without a valid token learns nothing about
    flags) as part of the auth layer, so a refusal is audited like any other.
    """
    name = feature_of(request.match_info.handler)
    if name is not None and request.app[keys.FEATURES].is_off(name):
        reason = request.app[keys.FEATURES].effective(name).reason
        raise Problem("feature_disabled", f"the {name!r} feature is turned off: {reason}", feature=name)


def middleware_chain(settings: Settings) -> list[Middleware]:
    """The chain for ``settings``, outermost first.

    Audit and metrics (one layer) wrap auth so that refused requests (401/403) are recorded
    and counted too. Auth ends with the feature gate (``_check_feature``): a caller without a
    valid token learns nothing about which features are on, and a 503 ``feature_disabled`` is
    still audited. CORS preflights are answered between the two: a browser sends no token with
    them, and each is audited as the call it announces.
    """
    return [
        correlation_middleware,
        error_middleware,
        record_middleware(access_log=settings.access_log_enabled),
        cors_preflight(settings.cors_origins),
        auth_middleware,
    ]

"""What the rate limits cost an authenticated GET, and that guessing is limited.

Three gateway processes' CPU per request of ``GET /operator/api/whoami`` with a database token:
this build, the same build with the auth step as it was before the limits (``python -m
bench.limits --baseline``: the auth middleware of before, no expiry check, no RateLimit hook),
this build with a token that has a budget (one Redis call per request), and one whose budget of
60 a minute is long spent (answered 429 from memory until its Retry-After). Whole-process figures on
a shared machine move by a few microseconds between runs, so the limiter's own cost on the
common path (a valid token without a budget) is also timed in this process: the auth middleware
of this build against the one of before, on the same request, a hundred thousand times each.
Last, one address sends wrong tokens for a few seconds: only the burst and the rate get a 401.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid

import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bench.env import BenchEnv, Figure, cpu_seconds, wait_http
from tentaculo import keys
from tentaculo.auth.limits import AuthFailureLimiter, SharedGcra
from tentaculo.auth.tokens import (
    PUBLIC,
    QUERY_TOKEN_NAMES,
    TICKET_PARAM,
    Principal,
    TokenStore,
    TokenStoreUnavailable,
    _Cached,
    accepts_ticket,
    hash_token,
    new_token,
    required_scope,
    requires,
)
from tentaculo.db import queries
from tentaculo.embedded import free_port
from tentaculo.http.errors import Problem, database_unreachable
from tentaculo.http.middlewares import _check_feature, _passed_routing, add_rate_limit_headers, auth_middleware, presented_token
from tentaculo.http.trusted import TrustedProxies

NAME = "limits"
ROUNDS = 3
SECONDS = 3.0
CONCURRENCY = 32
PATH = "/operator/api/whoami"
GOAL_US = 5.0
FLOOD_SECONDS = 3.0
IN_PROCESS_CALLS = 100_000


@web.middleware
async def baseline_auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """The auth middleware as it was before the limits (tentaculo 75ad825), to measure against."""
    if not _passed_routing(request):
        return await handler(request)
    scope = required_scope(request.match_info.handler, request)
    if scope == PUBLIC:
        _check_feature(request)
        return await handler(request)
    ticket = request.query.get(TICKET_PARAM) if request.query_string else None
    if ticket is not None and not accepts_ticket(request.match_info.handler):
        raise Problem("invalid_token", "an event ticket only opens event streams; send the X-VX11-Token header")
    if request.query_string and any(name.lower() in QUERY_TOKEN_NAMES for name in request.query):
        raise Problem("invalid_token", "tokens are not accepted in the query string; send the X-VX11-Token header")
    token = presented_token(request)
    if token is None and ticket is not None:
        principal = await request.app[keys.TICKETS].verify(ticket)
    elif token is None:
        raise Problem(
            "auth_required",
            "send a token in X-VX11-Token or Authorization: Bearer",
            headers={"WWW-Authenticate": 'Bearer realm="tentaculo"'},
        )
    else:
        try:
            found = await request.app[keys.TOKENS].authenticate(token)
        except TokenStoreUnavailable:
            raise database_unreachable("the token database is unreachable; try again shortly") from None
        if found is None:
            raise Problem("invalid_token", "the token is unknown, revoked or malformed")
        principal = found
    request[keys.PRINCIPAL] = principal
    structlog.contextvars.bind_contextvars(token_name=principal.name)
    if scope not in principal.scopes:
        raise Problem("forbidden", f"this call needs the '{scope}' scope", required_scope=scope)
    _check_feature(request)
    return await handler(request)


def _serve_baseline() -> int:
    """``tentaculo run`` with the auth step of before the limits."""
    import tentaculo.app
    import tentaculo.http.middlewares
    from tentaculo.cli import main

    original = tentaculo.app.create_app

    def create_app(settings):  # type: ignore[no-untyped-def]
        app = original(settings)
        app.on_response_prepare.remove(add_rate_limit_headers)
        return app

    tentaculo.http.middlewares.auth_middleware = baseline_auth  # type: ignore[assignment]
    tentaculo.app.create_app = create_app  # type: ignore[assignment]
    TokenStore._usable = lambda self, principal: principal  # type: ignore[method-assign]
    return main(["run"])


async def run(env: BenchEnv) -> list[Figure]:
    plain, budgeted, spent = new_token(), new_token(), new_token()
    conn = await env.db()
    try:
        suffix = uuid.uuid4().hex[:6]
        await queries.insert_token(conn, f"bench-plain-{suffix}", hash_token(plain), ["read"], "bench")
        await queries.insert_token(conn, f"bench-budget-{suffix}", hash_token(budgeted), ["read"], "bench",
                                   requests_per_minute=1_000_000)
        await queries.insert_token(conn, f"bench-spent-{suffix}", hash_token(spent), ["read"], "bench",
                                   requests_per_minute=60)
    finally:
        await conn.close()
    gateway = await env.start_gateway("bench-limits")
    port = free_port()
    baseline = env.spawn(["-m", "bench.limits", "--baseline"], port=port,
                         env=env.gateway_env(port, "bench-limits-baseline"), name="bench-limits-baseline")
    await wait_http(f"{baseline.url}/health", baseline)
    cases = {"baseline": (baseline, plain), "limits": (gateway, plain), "budget": (gateway, budgeted),
             "spent": (gateway, spent)}
    for proc, token in cases.values():
        await env.load(proc.url + PATH, duration=1, headers=[f"X-VX11-Token: {token}"])
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    non_200 = 0
    for _ in range(ROUNDS):
        for name, (proc, token) in cases.items():
            before = cpu_seconds(proc)
            report = await env.load(proc.url + PATH, concurrency=CONCURRENCY, duration=SECONDS,
                                    headers=[f"X-VX11-Token: {token}"])
            cpu[name].append((cpu_seconds(proc) - before) / report["requests"] * 1e6)
            if name != "spent":
                non_200 += sum(v for k, v in report["statuses"].items() if k != "200")
    flood = await env.load(gateway.url + PATH, concurrency=4, duration=FLOOD_SECONDS,
                           headers=[f"X-VX11-Token: {new_token()}"])
    baseline.stop()
    gateway.stop()
    in_process = await _in_process_cost()
    med = {name: statistics.median(values) for name, values in cpu.items()}
    answered_401 = flood["statuses"].get("401", 0)
    allowed_401 = 20 + 5 * FLOOD_SECONDS + 5  # burst + rate * seconds, and a margin for the clock
    return [
        Figure(NAME, "server CPU per GET: before limits / valid token / budgeted token",
               f"{med['baseline']:.1f} / {med['limits']:.1f} / {med['budget']:.1f}", "us"),
        Figure(NAME, "whole-process difference, valid token without budget (noisy)",
               f"{med['limits'] - med['baseline']:+.1f}", "us"),
        Figure(NAME, "limiter cost per authenticated request (in-process, no budget)", f"{in_process:.2f}", "us",
               f"<= {GOAL_US:g}", in_process <= GOAL_US),
        Figure(NAME, "budgeted token: extra CPU per request (one Redis call)",
               f"{med['budget'] - med['limits']:+.1f}", "us"),
        Figure(NAME, "token far past a budget of 60/min: server CPU per (429) answer",
               f"{med['spent']:.1f}", "us"),
        Figure(NAME, f"wrong tokens answered 401 in {FLOOD_SECONDS:g} s from one address (rest 429)",
               f"{answered_401} of {flood['requests']}", "", f"<= {allowed_401:g}", answered_401 <= allowed_401),
        Figure(NAME, "non-200 answers to valid tokens", non_200, "", "0", non_200 == 0),
    ]


async def _in_process_cost() -> float:
    """Microseconds the auth middleware of this build spends more than the one of before, per call."""

    @requires("read")
    async def whoami(request: web.Request) -> web.Response:
        return response

    response = web.Response()
    app = web.Application()
    app.router.add_get(PATH, whoami)
    store = TokenStore(None, admin_token=None, cache_seconds=3600)  # type: ignore[arg-type]
    token = new_token()
    principal = Principal("bench", frozenset({"read"}), 1)
    store._cache[hash_token(token)] = _Cached(time.monotonic() + 3600, time.monotonic(), principal)  # seen a moment ago
    app[keys.TOKENS] = store
    app[keys.AUTH_LIMITER] = AuthFailureLimiter(
        SharedGcra.__new__(SharedGcra), burst=20, rate=5, trusted=TrustedProxies(()))
    request = make_mocked_request("GET", PATH, headers={"X-VX11-Token": token}, app=app)
    match = await app.router.resolve(request)
    match.add_app(app)
    request._match_info = match

    async def handler(_: web.Request) -> web.StreamResponse:
        return response

    async def limits() -> None:
        await auth_middleware(request, handler)
        await add_rate_limit_headers(request, response)

    async def before() -> None:
        await baseline_auth(request, handler)

    samples: dict[str, list[float]] = {"limits": [], "before": []}
    for _ in range(5):
        for name, call in (("before", before), ("limits", limits)):
            started = time.process_time()
            for _ in range(IN_PROCESS_CALLS // 5):
                await call()
            samples[name].append((time.process_time() - started) / (IN_PROCESS_CALLS // 5) * 1e6)
    return max(0.0, statistics.median(samples["limits"]) - statistics.median(samples["before"]))


if __name__ == "__main__":
    if sys.argv[1:] == ["--baseline"]:
        raise SystemExit(_serve_baseline())
    raise SystemExit("usage: python -m bench.limits --baseline")

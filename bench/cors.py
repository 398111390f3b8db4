"""CPU cost per request of the gateway's CORS pieces, and of aiohttp-cors doing the same job.

    python -m bench.cors
    PYTHONPATH=<dir with aiohttp_cors> python -m bench.cors     (adds aiohttp-cors's figures)

Not a ``make bench`` scenario: it times the hooks themselves on real aiohttp requests and
responses (``time.process_time`` over many calls, median of rounds), because a few microseconds
vanish in the noise of whole loopback requests on a shared machine. Every request pays the
``on_response_prepare`` hook; every request but a preflight also passes the preflight middleware.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from tentaculo.http.cors import ALLOW_HEADERS, EXPOSE_HEADERS, MAX_AGE, cors_headers, cors_preflight

ORIGIN = "http://127.0.0.1:5173"
CALLS = 100_000
ROUNDS = 7
Hook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


async def ok(request: web.Request) -> web.Response:
    return web.Response()


async def _request(app: web.Application, headers: dict[str, str]) -> web.Request:
    request = make_mocked_request("GET", "/operator/api/whoami", headers=headers, app=app)
    match = await app.router.resolve(request)
    match.add_app(app)
    request._match_info = match  # what aiohttp's dispatcher sets before middlewares run
    return request


async def _per_call(step: Callable[[], Awaitable[Any]]) -> float:
    """Median CPU microseconds of one ``step`` (a fresh response and one hook call, or a baseline)."""
    rounds = []
    for _ in range(ROUNDS):
        start = time.process_time()
        for _ in range(CALLS):
            await step()
        rounds.append((time.process_time() - start) / CALLS * 1e6)
    return statistics.median(rounds)


async def _hook_cost(app: web.Application, hook: Hook, headers: dict[str, str]) -> float:
    request = await _request(app, headers)

    async def step() -> None:
        await hook(request, web.Response())  # aiohttp-cors refuses a response that already has its header

    return await _per_call(step)


async def main() -> None:
    page = {"Origin": ORIGIN}
    ours = web.Application()
    ours.router.add_get("/operator/api/whoami", ok)

    async def nothing(request: web.Request, response: web.StreamResponse) -> None:
        return None

    baseline = {name: await _hook_cost(ours, nothing, h) for name, h in (("listed", page), ("none", {}))}
    rows = [("gateway hook", name, await _hook_cost(ours, cors_headers((ORIGIN,)), h) - baseline[name])
            for name, h in (("listed", page), ("none", {}))]

    request = await _request(ours, page)
    middleware = cors_preflight((ORIGIN,))
    direct = await _per_call(lambda: ok(request))
    through = await _per_call(lambda: middleware(request, ok))
    rows.append(("gateway preflight middleware", "listed", through - direct))

    try:
        import aiohttp_cors  # type: ignore[import-not-found]
    except ImportError:
        aiohttp_cors = None
    if aiohttp_cors is not None:
        theirs = web.Application()
        options = aiohttp_cors.ResourceOptions(
            allow_headers=[h.strip() for h in ALLOW_HEADERS.split(",")],
            expose_headers=[h.strip() for h in EXPOSE_HEADERS.split(",")],
            max_age=int(MAX_AGE),
        )
        cors = aiohttp_cors.setup(theirs, defaults={ORIGIN: options})
        cors.add(theirs.router.add_get("/operator/api/whoami", ok))
        hook = theirs.on_response_prepare[-1]
        rows += [(f"aiohttp-cors {aiohttp_cors.__version__} hook", name, await _hook_cost(theirs, hook, h) - baseline[name])
                 for name, h in (("listed", page), ("none", {}))]

    print(f"CPU microseconds per request, median of {ROUNDS} rounds of {CALLS:,} calls")
    print(f"{'piece':<34}{'Origin':<9}{'µs':>7}")
    for piece, origin, cost in rows:
        print(f"{piece:<34}{origin:<9}{cost:>7.2f}")
    if aiohttp_cors is None:
        print("(aiohttp-cors is not importable: put it on PYTHONPATH to compare)")


if __name__ == "__main__":
    asyncio.run(main())

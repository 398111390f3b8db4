"""``GET /operator/api/status`` under 32 concurrent clients with the ten VX11 modules registered:
healthy ones, a slow one, two unreachable ones, a Redis one and one that hangs every health check.

The modules are real loopback HTTP servers in their own process (``python -m bench.status
--modules kind:port ...``); unreachable ones point at closed ports. The same load is run against
a second gateway with no module configured, so the figures show what the modules cost status:
nothing, because status answers from what the prober already knows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys

import aiohttp
from aiohttp import web

from bench.env import BenchEnv, Figure, wait_http
from tentaculo.embedded import free_port

NAME = "status"
ROUNDS = 3
SECONDS = 3.0
CONCURRENCY = 32
GOAL_P99_MS = 20.0
PATH = "/operator/api/status"
# module -> what its stand-in does; "closed" is a port nothing listens on, "redis" the bench's Redis.
MODULES = {
    "madre": "healthy",
    "switch": "healthy",
    "operator-backend": "healthy",
    "operator-frontend": "healthy",
    "hermes": "slow",
    "spawner": "hang",
    "hormiguero": "closed",
    "mcp": "closed",
    "redis": "redis",
}
SLOW_SECONDS = 1.5


async def run(env: BenchEnv) -> list[Figure]:
    ports = {name: free_port() for name in MODULES}
    served = [f"{kind}:{ports[name]}" for name, kind in MODULES.items() if kind in ("healthy", "slow", "hang")]
    first = int(served[0].split(":")[1])
    stand_ins = env.spawn(["-m", "bench.status", "--modules", *served], port=first, name="status-modules")
    for item in served:
        kind, port = item.split(":")
        if kind == "healthy":
            await wait_http(f"http://127.0.0.1:{port}/health", stand_ins)
    urls = {}
    for name, kind in MODULES.items():
        var = f"TENTACULO_SERVICE_{name.replace('-', '_').upper()}_URL"
        urls[var] = env.redis_url if kind == "redis" else f"http://127.0.0.1:{ports[name]}"
    # Probing as configured by default: every 5 s, 1 s to connect, 2 s to answer, slow beyond 1 s.
    with_modules = await env.start_gateway("bench-status", **urls, TENTACULO_LOG_LEVEL="warning")
    without = await env.start_gateway("bench-status-bare", TENTACULO_LOG_LEVEL="warning")
    headers = [f"X-VX11-Token: {env.admin_token}"]
    seen = await _statuses(with_modules.url, env.admin_token)
    await env.load(with_modules.url + PATH, duration=1, headers=headers)
    await env.load(without.url + PATH, duration=1, headers=headers)
    runs, bare_runs = [], []
    for _ in range(ROUNDS):
        bare_runs.append(await env.load(without.url + PATH, concurrency=CONCURRENCY, duration=SECONDS, headers=headers))
        runs.append(await env.load(with_modules.url + PATH, concurrency=CONCURRENCY, duration=SECONDS, headers=headers))
    after = await _statuses(with_modules.url, env.admin_token)
    with_modules.stop()
    without.stop()
    stand_ins.stop()
    p50, p99 = _median(runs, "p50_ms"), _median(runs, "p99_ms")
    bare_p50, bare_p99 = _median(bare_runs, "p50_ms"), _median(bare_runs, "p99_ms")
    non_200 = sum(v for r in runs + bare_runs for k, v in r["statuses"].items() if k != "200")
    print(f"status: module statuses seen before the load {seen}, after {after}", file=sys.stderr)
    expected = {"madre": "on", "hermes": "degraded", "spawner": "error", "hormiguero": "error", "redis": "on",
                "tentaculo_link": "on"}
    honest = all(after.get(name) == status for name, status in expected.items())
    return [
        Figure(NAME, "modules registered (healthy, slow, unreachable, redis, hanging, self)", len(after), "",
               "10", len(after) == 10),
        Figure(NAME, "module statuses as expected while loaded", "yes" if honest else json.dumps(after), "",
               "yes", honest),
        Figure(NAME, "status p50 / p99, ten modules, one hanging", f"{p50} / {p99}", "ms",
               f"p99 <= {GOAL_P99_MS:g}", p99 <= GOAL_P99_MS),
        Figure(NAME, "status p50 / p99, no module configured", f"{bare_p50} / {bare_p99}", "ms"),
        Figure(NAME, "status req/s (median), ten modules", round(statistics.median(r["rps"] for r in runs)), "req/s"),
        Figure(NAME, "non-200 answers", non_200, "", "0", non_200 == 0),
    ]


async def _statuses(url: str, token: str) -> dict[str, str]:
    """Wait until every probed module has a result, then return {module: status}."""
    async with aiohttp.ClientSession(headers={"X-VX11-Token": token}) as session:
        for _ in range(100):
            async with session.get(url + "/operator/api/modules") as resp:
                modules = (await resp.json())["modules"]
            found = {m["name"]: m["status"] for m in modules}
            if all(m["reason"] != "health not checked yet" for m in modules) and found.get("spawner") == "error":
                return found
            await asyncio.sleep(0.1)
    return found


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


# ------------------------------------------------------------------ the modules' stand-ins


async def _serve(specs: list[str]) -> None:
    release = asyncio.Event()

    async def healthy(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_SECONDS)
        return web.json_response({"status": "ok"})

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"status": "ok"})

    handlers = {"healthy": healthy, "slow": slow, "hang": hang}
    runners = []
    for spec in specs:
        kind, port = spec.split(":")
        app = web.Application()
        app.router.add_get("/health", handlers[kind])
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", int(port)).start()
        runners.append(runner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    release.set()
    for runner in runners:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="Module stand-ins for the status bench.")
    parser.add_argument("--modules", nargs="+", required=True, help="kind:port items; kind is healthy, slow or hang")
    asyncio.run(_serve(parser.parse_args().modules))


if __name__ == "__main__":
    main()

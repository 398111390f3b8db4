"""The baseline table: five request paths, each through the gateway (one worker process, and two)
and through a bare aiohttp app doing the same job; the three serve side by side and take turns.

Rows: the authenticated GET (``/operator/api/whoami``), mock chat answered as JSON and streamed
as SSE (``POST /operator/api/chat``, provider ``mock``), the proxy (a 1 KB JSON GET from a loopback
module), and SSE delivery (events published through Redis to ``SSE_CLIENTS`` open streams).
The bare app (``bench.bare``) serves the same paths: the JSON and the events the gateway itself
answered the same chat body with, a plain aiohttp forward to the same module, an aiohttp-sse
stream fed by one Redis subscriber.

Columns: the server's CPU per request (per delivered event for SSE), gateway and bare, read from
``/proc`` around each run and divided by what the run completed; the gateway's p50 / p99 latency
at ``CONCURRENCY`` clients (a whole answer for chat; publish to arrival for SSE); the gateway's
rate with ``TENTACULO_WORKERS`` 1 and 2 (requests/s; delivered events/s for SSE). With two
workers the CPU is the sum over the supervisor and its workers. The load generator (and the SSE
client, ``bench.fanout``) runs as its own process on the same cores.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from dataclasses import dataclass

import aiohttp

from bench.chat import CHAT_BODY
from bench.env import BenchEnv, Figure, Process, cpu_seconds, grid
from bench.proxy import JSON_PATH, start_module

NAME = "baseline"
ROUNDS = 3
SECONDS = 3.0
WARM_SECONDS = 1.0
CONCURRENCY = 32
SSE_CLIENTS = 200
SSE_WINDOW = 4  # events in flight: each is published once the one before it on its lane reached every stream
CHAT_PATH = "/operator/api/chat"
STREAM_BODY = json.dumps({**json.loads(CHAT_BODY), "stream": True})


@dataclass(frozen=True)
class Route:
    """One request path of the table, the same on the gateway and on the bare app."""

    label: str
    method: str
    path: str
    body: str = ""


ROUTES = [
    Route("authenticated GET", "GET", "/operator/api/whoami"),
    Route("chat (plain)", "POST", CHAT_PATH, CHAT_BODY),
    Route("chat (streamed)", "POST", CHAT_PATH, STREAM_BODY),
    Route("proxy (1 KB GET)", "GET", "/operator/api/proxy/madre" + JSON_PATH),
]
SSE_LABEL = "SSE delivery"


@dataclass(frozen=True)
class Server:
    """A server under test: its name in the table, its process, how ``bench.fanout`` publishes to it."""

    name: str
    process: Process
    publish: list[str]


BARE, ONE, TWO = "bare", "gateway", "gateway, 2 workers"


@dataclass
class Runs:
    """Medians over the rounds of one path on one server."""

    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server CPU per request (per delivered event for SSE)
    failed: int  # non-200 answers, or deliveries missed


async def run(env: BenchEnv) -> list[Figure]:
    module = await start_module(env)
    config = {
        "TENTACULO_PROVIDERS": "mock",
        "TENTACULO_PROVIDER_CHAIN": "mock",
        "TENTACULO_SERVICE_MADRE_URL": module.url,
        "TENTACULO_EVENTS_MAX_STREAMS_PER_TOKEN": str(SSE_CLIENTS + 50),
    }
    # All three serve at once and take turns, so a machine's drift hits each alike. The two-worker
    # gateway has Redis keys of its own: it does not read the events the other publishes.
    two_prefix = f"{env.redis_prefix}2w:"
    one = await env.start_gateway("bench-baseline", **config)
    two = await env.start_gateway("bench-baseline-2w", TENTACULO_WORKERS="2", TENTACULO_REDIS_PREFIX=two_prefix,
                                  **config)
    answers = env.workdir / "chat-answers.json"
    answers.write_text(json.dumps(await _chat_answers(one.url + CHAT_PATH, env.admin_token)))
    channel = f"{env.redis_prefix}bare-events"
    bare = await env.start_bare("--answers", str(answers), "--upstream", module.url, "--redis", env.redis_url,
                                "--channel", channel)
    servers = [
        Server(BARE, bare, ["--channel", channel]),
        Server(ONE, one, ["--hub", env.redis_prefix]),
        Server(TWO, two, ["--hub", two_prefix]),
    ]
    headers = [f"X-VX11-Token: {env.admin_token}"]
    measured = {route.label: await _route(env, servers, route, headers) for route in ROUTES}
    measured[SSE_LABEL] = await _sse(env, servers)
    for server in servers:
        server.process.stop()
    module.stop()

    env.summary = _summary(measured)
    figures = []
    for label, runs in measured.items():
        g, b, t = runs[ONE], runs[BARE], runs[TWO]
        sse = label == SSE_LABEL
        failed = g.failed + b.failed + t.failed
        figures += [
            Figure(NAME, f"{label}: rate gateway / bare / gateway on 2 workers",
                   f"{g.rate:.0f} / {b.rate:.0f} / {t.rate:.0f}", "deliveries/s" if sse else "req/s"),
            Figure(NAME, f"{label}: p50 / p99 gateway / bare / 2 workers",
                   f"{g.p50_ms} / {g.p99_ms}, {b.p50_ms} / {b.p99_ms}, {t.p50_ms} / {t.p99_ms}", "ms"),
            Figure(NAME, f"{label}: CPU per {'event' if sse else 'request'} gateway / bare / 2 workers (all)",
                   f"{g.cpu_us:.1f} / {b.cpu_us:.1f} / {t.cpu_us:.1f}", "us"),
            Figure(NAME, f"{label}: {'deliveries missed' if sse else 'non-200 answers'}", failed, "", "0",
                   failed == 0),
        ]
    return figures


def _summary(measured: dict[str, dict[str, Runs]]) -> str:
    rows = [("", "gateway CPU us/req", "bare CPU us/req", "p50 ms", "p99 ms", "rate 1 worker", "rate 2 workers")]
    for label, runs in measured.items():
        g = runs[ONE]
        rows.append((label, f"{g.cpu_us:.1f}", f"{runs[BARE].cpu_us:.1f}", f"{g.p50_ms:.2f}", f"{g.p99_ms:.2f}",
                     f"{g.rate:,.0f}", f"{runs[TWO].rate:,.0f}"))
    note = (f"rates in requests/s at {CONCURRENCY} clients; SSE: per event delivered, deliveries/s to "
            f"{SSE_CLIENTS} streams, p50 / p99 from publish to arrival")
    return grid(rows, right=range(1, 7)) + "\n" + note


async def _chat_answers(url: str, token: str) -> dict[str, object]:
    """The gateway's own answers to the chat bodies: the JSON, and the streamed events as (event, data)."""
    async with aiohttp.ClientSession(headers={"X-VX11-Token": token, "Content-Type": "application/json"}) as session:
        async with session.post(url, data=CHAT_BODY) as resp:
            if resp.status != 200:
                raise RuntimeError(f"chat answered {resp.status}: {await resp.text()}")
            answer = await resp.json()
        async with session.post(url, data=STREAM_BODY) as resp:
            if resp.status != 200:
                raise RuntimeError(f"streamed chat answered {resp.status}: {await resp.text()}")
            text = await resp.text()
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = block.split("\n")
        event = next((line[6:].strip() for line in lines if line.startswith("event:")), "message")
        data = "\n".join(line[5:].removeprefix(" ") for line in lines if line.startswith("data:"))
        if data:
            events.append((event, data))
    if not any(event == "delta" for event, _ in events):
        raise RuntimeError(f"the streamed chat sent no delta: {text[:500]}")
    return {"json": answer, "events": events}


async def _measure(env: BenchEnv, server: Process, route: Route, headers: list[str]) -> dict:
    before = cpu_seconds(server)
    report = await env.load(server.url + route.path, concurrency=CONCURRENCY, duration=SECONDS, headers=headers,
                            method=route.method, body=route.body)
    report["server_us"] = (cpu_seconds(server) - before) / max(1, report["requests"]) * 1e6
    return report


async def _route(env: BenchEnv, servers: list[Server], route: Route, headers: list[str]) -> dict[str, Runs]:
    """The route on every server: warmed, then in turns."""
    for server in servers:
        await env.load(server.process.url + route.path, duration=WARM_SECONDS, headers=headers,
                       method=route.method, body=route.body)
    reports: dict[str, list[dict]] = {server.name: [] for server in servers}
    for _ in range(ROUNDS):
        for server in servers:
            reports[server.name].append(await _measure(env, server.process, route, headers))
    return {name: _medians(runs) for name, runs in reports.items()}


def _medians(reports: list[dict]) -> Runs:
    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in reports), 2)

    failed = sum(v for r in reports for k, v in r["statuses"].items() if k != "200")
    return Runs(median("rps"), median("p50_ms"), median("p99_ms"), median("server_us"), failed)


async def _fanout(env: BenchEnv, server: Process, publish: list[str]) -> dict:
    """One run of ``bench.fanout`` against ``server``, with the server's CPU per delivered event."""
    args = [sys.executable, "-m", "bench.fanout", "--url", f"{server.url}/operator/api/events",
            "--token", env.admin_token, "--clients", str(SSE_CLIENTS), "--seconds", str(SECONDS),
            "--window", str(SSE_WINDOW), "--redis-url", env.redis_url, *publish]
    client = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None
    try:
        ready = await asyncio.wait_for(client.stdout.readline(), 60)
        if not ready:
            raise RuntimeError("the SSE client exited before it was ready (see above)")
        before = cpu_seconds(server)
        client.stdin.write(b"go\n")
        await client.stdin.drain()
        line = await asyncio.wait_for(client.stdout.readline(), SECONDS + 60)
        spent = cpu_seconds(server) - before
        if not line:
            raise RuntimeError("the SSE client exited without a report (see above)")
        report = json.loads(line)
        await asyncio.wait_for(client.wait(), 30)
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    report.update(rps=report["rate"], server_us=spent / max(1, report["deliveries"]) * 1e6,
                  statuses={"200": report["deliveries"], "missed": report["missed"]})
    return report


async def _sse(env: BenchEnv, servers: list[Server]) -> dict[str, Runs]:
    """SSE delivery on every server, in turns (each run opens its streams after a warm-up of its own)."""
    reports: dict[str, list[dict]] = {server.name: [] for server in servers}
    for _ in range(ROUNDS):
        for server in servers:
            reports[server.name].append(await _fanout(env, server.process, server.publish))
    return {name: _medians(runs) for name, runs in reports.items()}

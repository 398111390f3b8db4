"""Chat through the provider registry: non-streaming mock chat throughput against the bare aiohttp
app, and the time the gateway adds to a streaming provider's first delta.

For the first, the load generator POSTs ``/operator/api/chat`` (provider ``mock``) at 32 concurrent
clients; the baseline is the bare app's GET, as in the gateway scenario. For the second, a loopback
OpenAI-compatible server (``python -m bench.chat --upstream PORT``, run as its own process) is the
``local`` provider: its time to first delta asked directly is compared with the same answer streamed
through ``POST /operator/api/chat``, one request at a time, alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import aiohttp

from bench.env import BenchEnv, Figure, wait_http
from tentaculo.embedded import free_port

NAME = "chat"
ROUNDS = 3
SECONDS = 3.0
CONCURRENCY = 32
TTFD_SAMPLES = 300
TTFD_WARMUP = 20
GOAL_ADDED_MS = 2.0
CHAT_BODY = json.dumps({"message": "How long is the Nile?", "provider": "mock"})
STREAM_BODY = {"messages": [{"role": "user", "content": "How long is the Nile?"}], "model": "bench"}


async def run(env: BenchEnv) -> list[Figure]:
    instance = "bench-chat"
    up_port = free_port()
    upstream = env.spawn(["-m", "bench.chat", "--upstream", str(up_port)], port=up_port, name="chat-upstream")
    await wait_http(f"{upstream.url}/v1/models", upstream)
    gateway = await env.start_gateway(
        instance,
        TENTACULO_PROVIDERS="mock,local",
        TENTACULO_PROVIDER_CHAIN="mock",
        TENTACULO_LOCAL_BASE_URL=f"{upstream.url}/v1",
        TENTACULO_LOCAL_MODEL="bench",
    )
    bare = await env.start_bare()
    headers = [f"X-VX11-Token: {env.admin_token}"]
    chat_url = gateway.url + "/operator/api/chat"

    warm = await env.load(chat_url, duration=1, headers=headers, method="POST", body=CHAT_BODY)
    await env.load(bare.url + "/operator/api/whoami", duration=1)
    gw_runs, bare_runs = [], []
    for _ in range(ROUNDS):
        bare_runs.append(await env.load(bare.url + "/operator/api/whoami", concurrency=CONCURRENCY, duration=SECONDS))
        gw_runs.append(await env.load(chat_url, concurrency=CONCURRENCY, duration=SECONDS, headers=headers,
                                      method="POST", body=CHAT_BODY))
    bare.stop()

    direct_ms, through_ms = await _time_to_first_delta(upstream.url, chat_url, env.admin_token)
    upstream.stop()
    exit_code = gateway.stop()  # Ctrl-C: queued chat rows are flushed before exit

    answered = warm["requests"] + sum(r["requests"] for r in gw_runs) + TTFD_SAMPLES + TTFD_WARMUP
    conn = await env.db()
    try:
        rows = await conn.fetchval("SELECT count(*) FROM copilot_actions_log WHERE instance = $1", instance)
    finally:
        await conn.close()
    gw_rps = statistics.median(r["rps"] for r in gw_runs)
    bare_rps = statistics.median(r["rps"] for r in bare_runs)
    ratio = gw_rps / bare_rps
    non_200 = sum(v for r in gw_runs for k, v in r["statuses"].items() if k != "200")
    direct_p50, through_p50 = statistics.median(direct_ms), statistics.median(through_ms)
    added = through_p50 - direct_p50
    return [
        Figure(NAME, "mock chat (non-streaming) req/s at 32 clients (median)", round(gw_rps), "req/s"),
        Figure(NAME, "mock chat / bare GET request rate", round(ratio, 3)),  # the 0.25 goal is retired
        Figure(NAME, "mock chat p50 / p99 latency", f"{_median(gw_runs, 'p50_ms')} / {_median(gw_runs, 'p99_ms')}", "ms"),
        Figure(NAME, "non-200 chat answers", non_200, "", "0", non_200 == 0),
        Figure(NAME, "provider's own time to first delta p50", round(direct_p50, 3), "ms"),
        Figure(NAME, "time to first delta through the gateway p50", round(through_p50, 3), "ms"),
        Figure(NAME, "added time to first delta p50", round(added, 3), "ms", f"<= {GOAL_ADDED_MS}",
               added <= GOAL_ADDED_MS),
        Figure(NAME, f"chat rows lost of {answered} answered", answered - rows, "", "0",
               rows == answered and exit_code == 0),
    ]


async def _time_to_first_delta(upstream: str, chat_url: str, token: str) -> tuple[list[float], list[float]]:
    """Milliseconds to the first delta: asked directly, and through the gateway; alternating, one at a time."""
    direct: list[float] = []
    through: list[float] = []
    gateway_body = {"messages": STREAM_BODY["messages"], "provider": "local", "stream": True}
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:
        for i in range(TTFD_SAMPLES + TTFD_WARMUP):
            d = await _first_delta(session, f"{upstream}/v1/chat/completions", {**STREAM_BODY, "stream": True},
                                   {}, b'"content":"B')
            t = await _first_delta(session, chat_url, gateway_body, {"X-VX11-Token": token}, b"event: delta")
            if i >= TTFD_WARMUP:  # the first ones warm connections and code paths
                direct.append(d)
                through.append(t)
    return direct, through


async def _first_delta(session: aiohttp.ClientSession, url: str, body: dict, headers: dict, marker: bytes) -> float:
    started = time.perf_counter()
    first = None
    async with session.post(url, data=json.dumps(body), headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}: {await resp.text()}")
        async for line in resp.content:
            if first is None and marker in line:
                first = (time.perf_counter() - started) * 1000
    if first is None:
        raise RuntimeError(f"{url} streamed no delta")
    return first


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


# ------------------------------------------------------------------ the loopback upstream


def _upstream(port: int) -> None:
    """An OpenAI-compatible streaming server: a role chunk, four content chunks, finish, usage, [DONE]."""
    from aiohttp import web

    from tentaculo.cli import _new_loop

    def data(obj: dict) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return data({"id": "b", "object": "chat.completion.chunk", "created": 0, "model": "bench",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    pieces = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Benchmarks "}),
              chunk({"content": "measure "}), chunk({"content": "what "}), chunk({"content": "matters."}),
              chunk({}, "stop"),
              data({"id": "b", "object": "chat.completion.chunk", "created": 0, "model": "bench", "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}),
              b"data: [DONE]\n\n"]

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(pieces[0] + pieces[1])  # the first delta goes out at once
        await resp.write(b"".join(pieces[2:]))
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "bench", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=_new_loop())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", type=int, required=True, help="serve the loopback provider on this port")
    _upstream(parser.parse_args().upstream)

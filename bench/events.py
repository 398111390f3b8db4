"""SSE clients one gateway instance holds, its memory per client, and publish-to-delivery latency.

The gateway runs as ``tentaculo run``; the load client runs in its own process
(``python -m bench.events --client ...``). The client opens the streams, reports, waits for the
go-ahead while the gateway's RSS is read, then publishes events through Redis exactly as another
gateway instance would (``EventHub.publish``) and times each one's arrival on every stream, all
on one clock. Finally the gateway is stopped with every stream still open, to time the shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import time
from typing import Any

from bench.env import BenchEnv, Figure, cpu_seconds
from bench.load import run_fast

NAME = "events"
# Fewer clients or more rounds for a quick comparison on a busy machine; the goals hold at the defaults.
CLIENTS = int(os.environ.get("TENTACULO_BENCH_EVENTS_CLIENTS", "5000"))
ROUNDS = int(os.environ.get("TENTACULO_BENCH_EVENTS_ROUNDS", "5"))
CONNECT_BATCH = 100
GOAL_P99_MS = 250
GOAL_KIB_PER_CLIENT = 30
MARKER = b'"bench_seq":'


def _raise_fd_limit() -> int:
    """Each stream is one descriptor on each side: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def run(env: BenchEnv) -> list[Figure]:
    limit = _raise_fd_limit()  # the gateway process inherits it
    clients = min(CLIENTS, limit - 200)
    gateway = await env.start_gateway(
        "bench-events", TENTACULO_EVENTS_MAX_CLIENTS=str(clients + 100), TENTACULO_LOG_LEVEL="warning",
        # Every client is one address with one token: lift the per-address and per-token caps.
        TENTACULO_MAX_CONNECTIONS_PER_CLIENT="0", TENTACULO_EVENTS_MAX_STREAMS_PER_TOKEN=str(clients + 100),
        # The shutdown figure is the streams' close, not the drain a balancer needs (no balancer here).
        TENTACULO_DRAIN_SECONDS="0",
    )
    await _warm_up(gateway.url, env.admin_token)
    base_kib = gateway.rss_kib()
    args = [
        sys.executable, "-m", "bench.events", "--client",
        "--url", f"{gateway.url}/operator/api/events",
        "--token", env.admin_token,
        "--clients", str(clients),
        "--rounds", str(ROUNDS),
        "--redis-url", env.redis_url,
        "--prefix", env.redis_prefix,
    ]  # fmt: skip
    client = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 20
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        connected = json.loads(await asyncio.wait_for(client.stdout.readline(), 60))
        held_kib = gateway.rss_kib()
        client.stdin.write(b"go\n")
        await client.stdin.drain()
        cpu_before = cpu_seconds(gateway)
        done = json.loads(await asyncio.wait_for(client.stdout.readline(), 60 + 2 * ROUNDS))
        # Everything the gateway did during the rounds: idle between events is next to nothing.
        cpu_per_event_ms = (cpu_seconds(gateway) - cpu_before) / (ROUNDS + 1) * 1000
        print(f"events: per event p50/p99/max ms: {done['rounds_p50_p99_max_ms']}", file=sys.stderr)
        started = time.perf_counter()
        exit_code = gateway.stop()
        shutdown_s = time.perf_counter() - started
        await asyncio.wait_for(client.wait(), 30)
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    held = connected["connected"]
    per_client_kib = (held_kib - base_kib) / held if held else float("inf")
    p50, p99 = done["p50_ms"], done["p99_ms"]
    return [
        Figure(NAME, "concurrent SSE clients held by one instance", held, "", f">= {clients}", held >= clients),
        Figure(NAME, "time to open them all", connected["seconds"], "s"),
        Figure(NAME, "gateway RSS idle / with all clients", f"{base_kib // 1024} / {held_kib // 1024}", "MiB"),
        Figure(
            NAME, "gateway memory per client (RSS delta / clients)", round(per_client_kib, 1), "KiB",
            f"<= {GOAL_KIB_PER_CLIENT}", per_client_kib <= GOAL_KIB_PER_CLIENT,
        ),
        Figure(
            NAME, f"publish-to-delivery p50 / p99, {ROUNDS} events x all clients", f"{p50} / {p99}", "ms",
            f"p99 <= {GOAL_P99_MS}", p99 <= GOAL_P99_MS,
        ),
        Figure(NAME, "first event after the connects: p99 (one-time full GC)", done["first_event_p99_ms"], "ms"),
        Figure(NAME, "gateway CPU per event, delivered to every client", round(cpu_per_event_ms, 1), "ms"),
        Figure(NAME, "deliveries missed", done["missed"], "", "0", done["missed"] == 0),
        Figure(NAME, "shutdown with every stream open", round(shutdown_s, 2), "s", "<= 5",
               shutdown_s <= 5 and exit_code == 0),
    ]  # fmt: skip


async def _warm_up(url: str, token: str) -> None:
    """Load the stream's code paths once, so the memory baseline is not charged to the first client."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"X-VX11-Token": token}) as session:
        for _ in range(3):
            async with session.get(f"{url}/operator/api/events") as resp:
                assert resp.status == 200, await resp.text()
                await resp.content.readline()


# -- the load client (its own process) -----------------------------------------------------


class Tally:
    """How many streams got each event; resolves a future when all of them have."""

    def __init__(self) -> None:
        self.expected = 0
        self.counts: dict[int, int] = {}
        self.complete: dict[int, asyncio.Future[None]] = {}

    def hit(self, seq: int) -> None:
        count = self.counts[seq] = self.counts.get(seq, 0) + 1
        waiter = self.complete.get(seq)
        if count >= self.expected and waiter is not None and not waiter.done():
            waiter.set_result(None)


class EventStream(asyncio.Protocol):
    """One SSE connection with next to no client-side work: find the marker, note the time."""

    def __init__(self, request: bytes, tally: Tally, opened: asyncio.Future[int]) -> None:
        self.request = request
        self.tally = tally
        self.opened = opened
        self.head = bytearray()
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        self.times: dict[int, float] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.opened.done():
            self.head += data
            if b"\r\n\r\n" in self.head and (b"retry:" in self.head or not self.head.startswith(b"HTTP/1.1 200")):
                self.opened.set_result(int(self.head[9:12]))
            return
        chunk = self.tail + data
        idx = chunk.find(MARKER)
        while idx >= 0:
            end = idx + len(MARKER)
            digits = bytearray()
            while end < len(chunk) and chr(chunk[end]).isdigit():
                digits.append(chunk[end])
                end += 1
            if end < len(chunk):  # a complete number
                seq = int(digits)
                if seq not in self.times:
                    self.times[seq] = now
                    self.tally.hit(seq)
            idx = chunk.find(MARKER, end)
        self.tail = chunk[-48:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(0)


async def open_streams(url: str, token: str, clients: int) -> tuple[list[EventStream], Tally, dict[str, int], float]:
    """Open ``clients`` event streams in batches: the ones answered 200, their tally, all statuses, seconds taken."""
    from urllib.parse import urlsplit

    _raise_fd_limit()
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nX-VX11-Token: {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    streams: list[EventStream] = []
    tally = Tally()
    statuses: dict[str, int] = {}
    started = time.perf_counter()

    async def open_one() -> None:
        opened: asyncio.Future[int] = loop.create_future()
        stream = EventStream(request, tally, opened)
        try:
            await loop.create_connection(lambda: stream, parts.hostname, parts.port)
            status = await asyncio.wait_for(opened, 30)
        except (OSError, TimeoutError):
            status = 0
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 200:
            streams.append(stream)

    for first in range(0, clients, CONNECT_BATCH):
        await asyncio.gather(*(open_one() for _ in range(min(CONNECT_BATCH, clients - first))))
    return streams, tally, statuses, round(time.perf_counter() - started, 2)


async def _client(url: str, token: str, clients: int, rounds: int, redis_url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    from tentaculo.events.hub import EventHub

    loop = asyncio.get_running_loop()
    streams, tally, statuses, seconds = await open_streams(url, token, clients)
    print(json.dumps({"connected": len(streams), "statuses": statuses, "seconds": seconds}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the parent reads the gateway's memory now
    # The client's own garbage collection would delay every arrival alike: do it now, not mid-round.
    gc.collect()
    gc.freeze()

    redis = Redis.from_url(redis_url)
    hub = EventHub(redis, prefix=prefix, instance="bench-publisher")
    await hub.start()
    published: dict[int, float] = {}
    latencies: list[float] = []
    missed = 0
    per_round: list[list[float]] = []
    first_p99: float | None = None
    tally.expected = len(streams)
    for seq in range(rounds + 1):
        tally.complete[seq] = loop.create_future()
        published[seq] = time.perf_counter()
        hub.publish("metrics", {"bench_seq": seq})
        try:
            await asyncio.wait_for(tally.complete[seq], 10)
        except TimeoutError:
            pass
        this = sorted((s.times[seq] - published[seq]) * 1000 for s in streams if seq in s.times)
        missed += len(streams) - len(this)
        if this:
            per_round.append([round(this[len(this) // 2], 1), round(this[int(0.99 * (len(this) - 1))], 1),
                              round(this[-1], 1)])
        if seq == 0:
            # The first event after thousands of connects pays for the gateway's first full garbage
            # collection of their objects: reported apart, not mixed into the steady-state figures.
            first_p99 = per_round[-1][1] if this else None
        else:
            latencies += this
        await asyncio.sleep(0.2)  # let the gateway settle between events
    await hub.close()
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else float("nan")

    result: dict[str, Any] = {
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "missed": missed,
        "first_event_p99_ms": first_p99,
        "rounds_p50_p99_max_ms": per_round,
    }
    print(json.dumps(result), flush=True)
    # Hold the streams until the gateway closes them (the parent times that shutdown).
    while any(s.transport is not None and not s.transport.is_closing() for s in streams):
        await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", action="store_true", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    run_fast(_client(args.url, args.token, args.clients, args.rounds, args.redis_url, args.prefix))


if __name__ == "__main__":
    main()

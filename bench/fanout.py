"""SSE delivery under load: event streams held open while events are published as fast as they are delivered.

    python -m bench.fanout --url URL --token T --clients 200 --seconds 3 --window 4 \
        --redis-url URL (--hub PREFIX | --channel NAME)

Runs in its own process. It opens ``--clients`` streams, then keeps ``--window`` events in flight:
each of that many lanes publishes an event and publishes the next once every stream has it. With
``--hub`` it publishes through the gateway's event hub (the Redis stream and channel under that
prefix, as another gateway instance would); with ``--channel`` it publishes a JSON envelope of the
same shape on a plain Redis channel (the bare app's). A short warm-up, then it prints ``ready``,
waits for a line on stdin (the parent reads the server's CPU), measures, and prints one JSON
object: deliveries, seconds, the delivery rate, publish-to-delivery percentiles (ms), missed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import sys
import time
from collections.abc import Awaitable, Callable

from bench.events import EventStream, Tally, open_streams
from bench.load import run_fast

WARM_SECONDS = 0.5
WAIT_SECONDS = 5.0  # an event not on every stream by then is counted missed where it is absent


async def _publisher(redis_url: str, hub_prefix: str | None, channel: str | None
                     ) -> tuple[Callable[[int], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """A function publishing event ``seq``, and the one closing the publisher."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    if hub_prefix is not None:
        from tentaculo.events.hub import EventHub

        hub = EventHub(redis, prefix=hub_prefix, instance="bench-publisher")
        await hub.start()

        async def publish_hub(seq: int) -> None:
            hub.publish("metrics", {"bench_seq": seq})

        async def close_hub() -> None:
            await hub.close()
            await redis.aclose()

        return publish_hub, close_hub
    assert channel is not None
    ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())

    async def publish_channel(seq: int) -> None:
        envelope = {"id": str(seq), "type": "metrics", "ts": ts, "source": "bench-publisher", "severity": "info",
                    "correlation_id": None, "data": {"bench_seq": seq}}
        await redis.publish(channel, json.dumps(envelope, separators=(",", ":")))

    async def close_channel() -> None:
        await redis.aclose()

    return publish_channel, close_channel


async def _lanes(window: int, seconds: float, seqs: itertools.count[int], tally: Tally,
                 publish: Callable[[int], Awaitable[None]], published: dict[int, float]) -> float:
    """Keep ``window`` events in flight for ``seconds``; the seconds it took, the last ones included."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    stop = started + seconds

    async def lane() -> None:
        while time.perf_counter() < stop:
            seq = next(seqs)
            done = tally.complete[seq] = loop.create_future()
            published[seq] = time.perf_counter()
            await publish(seq)
            try:
                await asyncio.wait_for(done, WAIT_SECONDS)
            except TimeoutError:
                pass

    await asyncio.gather(*(lane() for _ in range(window)))
    return time.perf_counter() - started


async def _run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    streams, tally, statuses, _seconds = await open_streams(args.url, args.token, args.clients)
    if len(streams) < args.clients:
        raise SystemExit(f"only {len(streams)} of {args.clients} streams opened: {statuses}")
    tally.expected = len(streams)
    publish, close = await _publisher(args.redis_url, args.hub, args.channel)
    seqs = itertools.count()
    await _lanes(args.window, WARM_SECONDS, seqs, tally, publish, {})
    gc.collect()
    gc.freeze()  # the client's own collections would delay arrivals mid-run
    print(json.dumps({"ready": len(streams)}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    published: dict[int, float] = {}
    seconds = await _lanes(args.window, args.seconds, seqs, tally, publish, published)
    await close()
    print(json.dumps(_report(streams, published, seconds)), flush=True)
    for stream in streams:
        if stream.transport is not None:
            stream.transport.close()


def _report(streams: list[EventStream], published: dict[int, float], seconds: float) -> dict[str, object]:
    latencies = sorted((s.times[seq] - at) * 1000 for s in streams for seq, at in published.items() if seq in s.times)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else 0.0

    return {
        "events": len(published),
        "deliveries": len(latencies),
        "missed": len(published) * len(streams) - len(latencies),
        "seconds": round(seconds, 3),
        "rate": round(len(latencies) / seconds, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--redis-url", required=True)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--hub", metavar="PREFIX", help="publish through the event hub under this Redis prefix")
    target.add_argument("--channel", help="publish on this plain Redis channel")
    args = parser.parse_args()
    run_fast(_run(args))


if __name__ == "__main__":
    main()

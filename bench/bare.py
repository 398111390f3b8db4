"""The baseline: a bare aiohttp app on the same loop and server settings, with no middleware.

    python -m bench.bare PORT [--answers FILE] [--upstream URL] [--redis URL --channel NAME]

It always serves ``GET /operator/api/whoami``. The rest does, the plain aiohttp way, the job of the
gateway route of the same path, so the gateway's CPU per request can be read against it:

- ``--answers FILE`` (JSON: ``{"json": {...}, "events": [[event, data], ...]}``, the gateway's own
  answers to the bench's chat body): ``POST /operator/api/chat`` reads the JSON body and returns
  that JSON, or with ``"stream": true`` sends those events with aiohttp-sse, one write each.
- ``--upstream URL``: ``GET /operator/api/proxy/madre/{path}`` forwards to ``URL/{path}`` with one
  aiohttp client session and streams the answer back.
- ``--redis URL --channel NAME``: ``GET /operator/api/events`` is an aiohttp-sse stream of every
  message published on that Redis channel (a JSON envelope with ``id`` and ``type``), read by one
  subscriber and handed to each client's queue, as the gateway's event hub does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp_sse import sse_response

from tentaculo.cli import _new_loop

ANSWERS = web.AppKey("answers", dict)
UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)
CLIENTS = web.AppKey("clients", set)
QUEUE_SIZE = 1000
# Hop-by-hop and framing headers a proxy does not copy.
NOT_COPIED = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"name": "admin", "scopes": ["admin", "chat", "operate", "read"]})


async def chat(request: web.Request) -> web.StreamResponse:
    data = await request.json()
    answers = request.app[ANSWERS]
    if not data.get("stream"):
        return web.json_response(answers["json"])
    async with sse_response(request, allow_all_methods=True, send_timeout=None) as sse:
        for event, text in answers["events"]:
            await sse.send(text, event=event)
    return sse


async def proxy(request: web.Request) -> web.StreamResponse:
    url = f"{request.app[UPSTREAM]}/{request.match_info['path']}"
    headers = {k: v for k, v in request.headers.items() if k.lower() not in NOT_COPIED}
    async with request.app[SESSION].request(request.method, url, params=request.query, headers=headers,
                                            data=request.content if request.body_exists else None) as upstream:
        resp = web.StreamResponse(status=upstream.status, headers={
            k: v for k, v in upstream.headers.items() if k.lower() not in NOT_COPIED})
        if upstream.content_length is not None:
            resp.content_length = upstream.content_length
        await resp.prepare(request)
        async for chunk in upstream.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def events(request: web.Request) -> web.StreamResponse:
    queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(QUEUE_SIZE)
    clients = request.app[CLIENTS]
    async with sse_response(request, send_timeout=None) as sse:
        clients.add(queue)
        try:
            await sse.write(b"retry: 3000\r\n\r\n")  # subscribed: the client may count this stream
            while True:
                event_id, event_type, text = await queue.get()
                await sse.send(text, id=event_id, event=event_type)
        except (ConnectionError, TimeoutError):
            pass  # the client went away
        finally:
            clients.discard(queue)
    return sse


def _client_session(app: web.Application) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            app[SESSION] = session
            yield

    return ctx


def _subscriber(redis_url: str, channel: str) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from redis.asyncio import Redis

        redis = Redis.from_url(redis_url)
        pubsub = redis.pubsub()
        await pubsub.subscribe(channel)
        clients = app[CLIENTS]

        async def read() -> None:
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                text = message["data"].decode()
                envelope = json.loads(text)
                item = (str(envelope["id"]), envelope["type"], text)
                for queue in list(clients):
                    if queue.full():
                        continue  # a slow client misses events; the bench counts them
                    queue.put_nowait(item)

        reader = asyncio.create_task(read())
        yield
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await pubsub.aclose()
        await redis.aclose()

    return ctx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--answers", type=Path)
    parser.add_argument("--upstream")
    parser.add_argument("--redis")
    parser.add_argument("--channel", default="bench-events")
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/operator/api/whoami", whoami)
    if args.answers:
        app[ANSWERS] = json.loads(args.answers.read_text())
        app.router.add_post("/operator/api/chat", chat)
    if args.upstream:
        app[UPSTREAM] = args.upstream.rstrip("/")
        app.cleanup_ctx.append(_client_session(app))
        app.router.add_route("*", "/operator/api/proxy/madre/{path:.*}", proxy)
    if args.redis:
        app[CLIENTS] = set()
        app.cleanup_ctx.append(_subscriber(args.redis, args.channel))
        app.router.add_get("/operator/api/events", events)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=_new_loop())


if __name__ == "__main__":
    main()

"""A WebSocket through the proxy: the upgrade is forwarded like any call (same headers, credentials
and path rules, opened by the aiohttp transport); frames are then pumped in both directions and a
close code from either side is passed to the other (an abrupt end becomes 1014 "bad gateway").
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

WS_MAX_MESSAGE = 4 * 1024 * 1024
WS_HEARTBEAT = 30.0
WS_CLOSE_TIMEOUT = 5.0


def is_websocket(request: web.Request) -> bool:
    """Whether the request asks for a WebSocket upgrade (what the view then passes through as one)."""
    return request.method == "GET" and request.headers.get("Upgrade", "").strip().lower() == "websocket"


def _sendable(code: int | None) -> int:
    """A close code that may go on the wire: an abrupt end (1006, 1015, unknown) becomes 1014 "bad gateway"."""
    if not code or code in (1005, 1006, 1015):
        return WSCloseCode.BAD_GATEWAY
    return code


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    closes: dict[str, tuple[int, bytes]],
    label: str,
) -> None:
    """Copy frames from ``source`` to ``sink`` until ``source`` closes, then close ``sink`` with its code.

    The code and reason ``source`` closed with are kept in ``closes[label]``, so that a cancelled
    pump's work can be finished.
    """
    try:
        while True:
            msg = await source.receive()
            if msg.type == WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif msg.type == WSMsgType.CLOSE:
                code = msg.data if msg.data and msg.data != 1005 else WSCloseCode.OK  # 1005: closed without a code
                reason = msg.extra if isinstance(msg.extra, str) else ""
                closes[label] = (_sendable(code), reason.encode()[:123].decode("utf-8", errors="ignore").encode())
                break
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                closes.setdefault(label, (_sendable(source.close_code), b""))
                break
    except ConnectionError:
        return  # the sink went away: its own pump closes the other side
    if not sink.closed:
        code, message = closes[label]
        with contextlib.suppress(ConnectionError):
            await sink.close(code=code, message=message)


async def pump_websockets(client: web.WebSocketResponse, module: aiohttp.ClientWebSocketResponse) -> None:
    """Relay frames both ways until either side closes; the close code crosses over.

    The server cancels this when the client's connection ends (which is also how a clean close
    ends); the module is then still told the client's close code.
    """
    closes: dict[str, tuple[int, bytes]] = {}
    to_module = asyncio.create_task(_pump(client, module, closes, "client"), name="ws-client-to-module")
    to_client = asyncio.create_task(_pump(module, client, closes, "module"), name="ws-module-to-client")
    try:
        _, pending = await asyncio.wait({to_module, to_client}, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            # One side closed and the other was told: give its pump the close handshake's time.
            await asyncio.wait(pending, timeout=WS_CLOSE_TIMEOUT)
    finally:
        for task in (to_module, to_client):
            task.cancel()
        await asyncio.gather(to_module, to_client, return_exceptions=True)
        if not module.closed:
            code, message = closes.get("client", (WSCloseCode.GOING_AWAY, b""))
            with contextlib.suppress(ConnectionError):
                await module.close(code=code, message=message)

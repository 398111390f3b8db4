"""Helpers for chat tests: a gateway with chosen providers, SSE parsing, chat rows."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import asyncpg
import orjson
from aiohttp.test_utils import TestClient

from tentaculo.app import create_app
from tentaculo.settings import Settings
from tests.helpers import AppClient, serve, wait_for


async def chat_gateway(aiohttp_client: AppClient, settings: Settings, **changes: Any) -> TestClient:
    """A gateway whose only provider is mock (chain: mock) unless ``changes`` say otherwise."""
    base: dict[str, Any] = {"providers": ("mock",), "provider_chain": ("mock",), "provider_retry_backoff": 0.01}
    return await serve(aiohttp_client, create_app(dataclasses.replace(settings, **{**base, **changes})))


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """(event, data) of each SSE event; ``data`` decoded as JSON when it is JSON."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            raw = "\n".join(data)
            try:
                events.append((name, orjson.loads(raw)))
            except orjson.JSONDecodeError:
                events.append((name, raw))
    return events


def new_cid() -> str:
    return f"chat-test-{uuid.uuid4().hex[:12]}"


async def chat_rows(db: asyncpg.Connection, cid: str, count: int = 1) -> list[asyncpg.Record]:
    """Wait until ``count`` copilot_actions_log rows of ``cid`` are written, and return them."""

    async def written() -> bool:
        return await db.fetchval("SELECT count(*) FROM copilot_actions_log WHERE correlation_id = $1", cid) >= count

    await wait_for(written)
    return await db.fetch("SELECT * FROM copilot_actions_log WHERE correlation_id = $1 ORDER BY id", cid)

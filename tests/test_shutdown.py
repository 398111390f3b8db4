"""SIGTERM as an orchestrator sends it: drain, a word to every stream, a bounded stop, nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import aiohttp
import asyncpg
import pytest

from tentaculo.embedded import free_port
from tentaculo.http.server import shutdown_total
from tentaculo.settings import Settings
from tests.helpers import ADMIN_TOKEN, wait_for

DRAIN, TIMEOUT, FLUSH = 1.0, 2.5, 2.0


@pytest.mark.slow
async def test_sigterm_drains_then_ends_streams_with_a_word_within_the_bound(
    database_url: str, redis_url: str, redis_prefix: str, db: asyncpg.Connection
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENTACULO_", "DEEPSEEK_"))}
    env.update(
        TENTACULO_PORT=str(port), TENTACULO_DATABASE_URL=database_url, TENTACULO_REDIS_URL=redis_url,
        TENTACULO_REDIS_PREFIX=redis_prefix, TENTACULO_ADMIN_TOKEN=ADMIN_TOKEN, TENTACULO_LOG_FORMAT="json",
        TENTACULO_INSTANCE=f"stop-{uuid.uuid4().hex[:8]}", TENTACULO_PROVIDERS="mock", TENTACULO_PROVIDER_CHAIN="mock",
        TENTACULO_MOCK_DELAY_MS="300", TENTACULO_DRAIN_SECONDS=str(DRAIN), TENTACULO_SHUTDOWN_TIMEOUT=str(TIMEOUT),
        TENTACULO_SHUTDOWN_FLUSH_SECONDS=str(FLUSH),
    )
    proc = subprocess.Popen([sys.executable, "-m", "tentaculo", "run"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    headers = {"X-VX11-Token": ADMIN_TOKEN}
    cid = f"cut-{uuid.uuid4().hex[:8]}"
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"{base}/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(ready, timeout=60, interval=0.1)
            events = await http.get(f"{base}/operator/api/events", headers=headers)
            chat = await http.post(f"{base}/operator/api/chat", headers={**headers, "X-Correlation-ID": cid},
                                   json={"message": "a long answer", "stream": True})
            assert events.status == 200 and chat.status == 200
            first = await chat.content.readuntil(b"event: delta")
            assert b"event: start" in first

            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # Draining: the listener still serves, and /ready says not to send more.
            async with http.get(f"{base}/ready") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] != "on"
            chat_rest = (await chat.content.read()).decode()
            events_rest = (await events.content.read()).decode()
        await asyncio.to_thread(proc.wait, 30)
        stopped_in = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate()[1]
    assert proc.returncode == 0, stderr[-2000:]
    # The streamed chat got a terminal event saying why, not a truncated body.
    assert "event: error" in chat_rest and "shutting_down" in chat_rest, chat_rest[-500:]
    assert "event: done" not in chat_rest
    # The event stream was told to reconnect, and how soon.
    assert "event: shutdown" in events_rest and "retry: " in events_rest, events_rest[-500:]
    settings = Settings(drain_seconds=DRAIN, shutdown_timeout=TIMEOUT, shutdown_flush_seconds=FLUSH)
    assert stopped_in <= shutdown_total(settings) + 1.0, stopped_in
    # Recorded as cut by the server, not as a client that went away, and flushed before the exit.
    row = await db.fetchrow("SELECT status, error FROM copilot_actions_log WHERE correlation_id = $1", cid)
    assert row is not None and row["status"] == "shutdown" and "cut by the server" in row["error"]
    audit = await db.fetchrow("SELECT status FROM audit_logs WHERE correlation_id = $1", cid)
    assert audit is not None and audit["status"] == 200
    assert ADMIN_TOKEN not in stderr

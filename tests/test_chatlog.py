"""ChatActionLog: chat rows survive a PostgreSQL outage and are flushed at shutdown."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import asyncpg

from tentaculo.chatlog import ChatActionLog
from tests.conftest import wait_for
from tests.faults import proxy_postgres


def row(cid: str, status: str = "ok") -> tuple:
    return (datetime.now(UTC), cid, uuid.uuid4(), "session", "tester", "mock", "mock", status, "stop",
            3, 13, 1.5, False, True, json.dumps([{"provider": "mock", "status": "ok"}]), None, "test-instance")


async def test_rows_wait_out_an_outage(settings, db) -> None:
    proxy, dsn = await proxy_postgres(settings.database_url)
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
    log = ChatActionLog(pool, capacity=100, batch_size=10, flush_seconds=0.02, max_backoff=0.1)
    log.start()
    cid = f"chatlog-{uuid.uuid4().hex[:8]}"
    try:
        await proxy.cut()
        log.record(row(cid))
        await wait_for(lambda: _failed(log))
        assert log.queued == 1 and log.dropped == 0
        await proxy.restore()

        async def written() -> bool:
            return await db.fetchval("SELECT count(*) FROM copilot_actions_log WHERE correlation_id = $1", cid) == 1

        await wait_for(written)
        stored = await db.fetchrow("SELECT * FROM copilot_actions_log WHERE correlation_id = $1", cid)
        assert stored["status"] == "ok" and stored["completion_tokens"] == 13 and stored["streamed"] is True
        assert json.loads(stored["attempts"]) == [{"provider": "mock", "status": "ok"}]
    finally:
        await log.close(timeout=2)
        await pool.close()
        await proxy.close()


async def _failed(log: ChatActionLog) -> bool:
    return log.last_error is not None


async def test_close_flushes_and_later_rows_are_counted(settings, db) -> None:
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=2)
    log = ChatActionLog(pool, capacity=100, batch_size=100, flush_seconds=60)
    log.start()
    cid = f"chatlog-{uuid.uuid4().hex[:8]}"
    for status in ("ok", "cancelled", "error"):
        log.record(row(cid, status))
    await log.close(timeout=5)
    statuses = await db.fetch("SELECT status FROM copilot_actions_log WHERE correlation_id = $1 ORDER BY id", cid)
    assert [r["status"] for r in statuses] == ["ok", "cancelled", "error"]
    log.record(row(cid))  # after close: not silently lost, counted
    assert log.dropped == 1
    await pool.close()


async def test_one_bad_row_does_not_cost_the_batch(settings, db) -> None:
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=2)
    log = ChatActionLog(pool, capacity=100, batch_size=100, flush_seconds=60)
    cid = f"chatlog-{uuid.uuid4().hex[:8]}"
    bad = list(row(cid, "error"))
    bad[3] = "nul\x00in text"  # PostgreSQL text cannot hold NUL
    for r in (row(cid, "ok"), tuple(bad), row(cid, "cancelled")):
        log.record(r)
    assert await log.flush()
    statuses = await db.fetch("SELECT status FROM copilot_actions_log WHERE correlation_id = $1 ORDER BY id", cid)
    assert [r["status"] for r in statuses] == ["ok", "cancelled"]
    assert log.dropped == 1 and log.written == 2
    await pool.close()

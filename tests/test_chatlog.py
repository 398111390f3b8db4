"""ChatActionLog: chat rows survive a PostgreSQL outage and are flushed at shutdown."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import asyncpg

from tentaculo.chat.log import ChatActionLog
from tentaculo.db.rowwriter import UNSTORABLE
from tests.faults import proxy_postgres
from tests.helpers import wait_for


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


async def test_unstorable_text_and_json_are_stored_escaped_and_cost_no_other_row(settings, db) -> None:
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=2)
    log = ChatActionLog(pool, capacity=100, batch_size=100, flush_seconds=60)
    cid = f"chatlog-{uuid.uuid4().hex[:8]}"
    text = list(row(cid, "error"))
    text[3] = "nul\x00in text"  # PostgreSQL text cannot hold NUL
    text[15] = "upstream said \udcff"  # nor invalid UTF-8 (a lone surrogate cannot even be encoded)
    attempts = list(row(cid, "cancelled"))
    attempts[14] = json.dumps([{"provider": "mock", "error": "a\x00b \udcfe"}])  # jsonb: no \u0000 either
    for r in (row(cid, "ok"), tuple(text), tuple(attempts), row(cid, "done")):
        log.record(r)
    assert await log.flush()
    stored = await db.fetch("SELECT * FROM copilot_actions_log WHERE correlation_id = $1 ORDER BY id", cid)
    assert [r["status"] for r in stored] == ["ok", "error", "cancelled", "done"]
    assert (stored[1]["session_id"], stored[1]["error"]) == ("nul\\x00in text", "upstream said \\xff")
    assert json.loads(stored[2]["attempts"]) == [{"provider": "mock", "error": "a\\x00b \\xfe"}]
    assert (log.written, log.escaped, log.marked, log.dropped) == (4, 2, 0, 0)
    assert log.failures == 0 and log.last_error is None
    await pool.close()


async def test_a_row_refused_even_so_is_written_with_a_marker(settings, db) -> None:
    """The last resort: the row PostgreSQL refuses is found by halving the batch and written with
    its text replaced, never dropped; the rows around it are written as they are."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=2)
    log = ChatActionLog(pool, capacity=100, batch_size=100, flush_seconds=60)
    cid = f"chatlog-{uuid.uuid4().hex[:8]}"
    rows = [row(cid, f"s{i}") for i in range(7)]
    bad = list(rows[4])
    bad[14] = "[{not json"
    rows[4] = tuple(bad)
    for r in rows:
        log.record(r)
    assert await log.flush()
    stored = await db.fetch("SELECT * FROM copilot_actions_log WHERE message_id = ANY($1::uuid[]) ORDER BY id",
                            [r[2] for r in rows])
    assert [r["message_id"] for r in stored] == [r[2] for r in rows]
    assert [r["status"] for r in stored] == ["s0", "s1", "s2", "s3", UNSTORABLE, "s5", "s6"]
    marked = stored[4]
    assert marked["correlation_id"] == UNSTORABLE and json.loads(marked["attempts"]) == UNSTORABLE
    assert marked["completion_tokens"] == 13 and marked["streamed"] is True  # what is not text is kept
    assert (log.written, log.marked, log.dropped, log.rejected) == (7, 1, 0, 0)
    assert log.failures == 0 and log.last_error is None
    await pool.close()

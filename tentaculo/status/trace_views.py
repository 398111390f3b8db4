"""``GET /operator/api/trace/{correlation_id}``: everything recorded for one correlation id, in time order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import orjson
from aiohttp import web

from tentaculo import keys
from tentaculo.auth.tokens import requires
from tentaculo.db import queries
from tentaculo.http.errors import Problem, ValidationFailed
from tentaculo.http.jsonio import json_response
from tentaculo.http.middlewares import CORRELATION_RE
from tentaculo.status.dependencies import DEPENDENCY_FAILURES

LIMIT_DEFAULT, LIMIT_MAX = 200, 1000
SOURCE_TIMEOUT = 5.0
_MICROSECOND = timedelta(microseconds=1)

T = TypeVar("T")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return LIMIT_DEFAULT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= LIMIT_MAX:
        raise ValidationFailed([{"field": "limit", "message": f"must be an integer from 1 to {LIMIT_MAX}"}])
    return value


def _audit_item(row: asyncpg.Record) -> dict[str, Any]:
    return {"kind": "audit", "ts": row["ts"], "method": row["method"], "route": row["route"], "path": row["path"],
            "status": row["status"], "duration_ms": row["duration_ms"], "token_name": row["token_name"],
            "client": row["client"], "instance": row["instance"], "service": row["service"]}


def _chat_item(row: asyncpg.Record) -> dict[str, Any]:
    return {"kind": "chat", "ts": row["ts"], "message_id": str(row["message_id"]), "session_id": row["session_id"],
            "token_name": row["token_name"], "provider": row["provider"], "model": row["model"],
            "status": row["status"], "finish_reason": row["finish_reason"],
            "usage": {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"]},
            "latency_ms": row["latency_ms"], "degraded": row["degraded"], "streamed": row["streamed"],
            "attempts": row["attempts"], "error": row["error"], "instance": row["instance"]}


def _event_item(envelope: bytes) -> dict[str, Any]:
    event = orjson.loads(envelope)
    return {"kind": "event", "ts": datetime.fromisoformat(event["ts"]), "id": event["id"], "type": event["type"],
            "source": event["source"], "severity": event["severity"], "data": event["data"]}


def in_time_order(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort by time; show every time to the millisecond, the precision events carry.

    Rows are timed to the microsecond, events only to the millisecond (truncated), so within
    one millisecond an event's place is unknown from its time alone. A chat event follows the
    chat row it reports (same ``message_id``); other events sort at the start of their millisecond.
    """
    chats = {item["message_id"]: item["ts"] for item in items if item["kind"] == "chat"}

    def when(item: dict[str, Any]) -> datetime:
        ts: datetime = item["ts"]
        if item["kind"] == "event" and item["type"] == "chat":
            row: datetime | None = chats.get((item["data"] or {}).get("message_id"))
            if row is not None and row >= ts:
                return row + _MICROSECOND
        return ts

    ordered = sorted(items, key=when)
    for item in ordered:
        ts = item["ts"]
        item["ts"] = ts.replace(microsecond=ts.microsecond // 1000 * 1000)
    return ordered


async def _bounded(call: Awaitable[T]) -> T:
    async with asyncio.timeout(SOURCE_TIMEOUT):
        return await call


@requires("read")
async def trace(request: web.Request) -> web.Response:
    """Audit rows, chat actions and retained events of one correlation id, oldest first.

    An id nothing was recorded for answers 200 with no items: rows are written asynchronously,
    so "nothing yet" is an answer, not an error.
    """
    cid = request.match_info["correlation_id"]
    if not CORRELATION_RE.fullmatch(cid):
        raise ValidationFailed([{"field": "correlation_id",
                                 "message": "not a correlation id: letters, digits, ._:- (max 128)"}])
    limit = _limit(request)
    app = request.app
    pool = app[keys.DB_POOL]
    audit, chats, events = await asyncio.gather(
        _bounded(queries.audit_trace(pool, cid, limit)),
        _bounded(queries.chat_trace(pool, cid, limit)),
        _bounded(app[keys.EVENTS].history.recent(limit=limit, correlation_id=cid)),
        return_exceptions=True,
    )
    items: list[dict[str, Any]] = []
    sources: dict[str, dict[str, Any]] = {}
    for name, result, build in (("audit", audit, _audit_item), ("chat", chats, _chat_item), ("events", events, None)):
        if isinstance(result, BaseException):
            if not isinstance(result, DEPENDENCY_FAILURES):
                raise result
            where = "Redis" if name == "events" else "PostgreSQL"
            sources[name] = {"status": "error", "reason": f"{where} unreachable ({type(result).__name__})",
                             "truncated": False}
            continue
        if build is None:
            found, _cursor = result
            items += [_event_item(event.envelope) for event in found]
            count = len(found)
        else:
            items += [build(row) for row in result]
            count = len(result)
        sources[name] = {"status": "on", "reason": None, "truncated": count >= limit}
    if all(s["status"] == "error" for s in sources.values()):
        raise Problem("upstream_unavailable", "neither PostgreSQL nor Redis could be asked for this trace")
    items = in_time_order(items)
    return json_response({"correlation_id": cid, "items": items, "sources": sources})

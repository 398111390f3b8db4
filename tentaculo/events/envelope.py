"""What an event is: its envelope, its id (the epoch of its history and its stream key), and the
SSE records the stream writes for it.

An event id is ``<epoch>:<ms>-<seq>``: the Redis stream entry id orders events; the epoch names the
stream itself and changes whenever it is recreated (Redis restarted empty, failed over, flushed),
so a resume can tell a continuation of its history from a new history whose ids merely look later.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

EVENT_TYPES = ("service_status", "feature_toggle", "provider_status", "chat", "metrics", "policy_change",
               "operator_action")
SEVERITIES = ("info", "warning", "error")
# Control events the stream itself sends; not publishable, not filterable.
RESET, ERROR = "reset", "error"
MAX_EVENT_BYTES = 64 * 1024

_SEP = b"\r\n"
_ID = re.compile(r"(?:(\d{1,20}):)?(\d{1,20})(?:-(\d{1,20}))?")
_U64 = 2**64 - 1

EventKey: TypeAlias = tuple[int, int]
# An event id as a client gives it back: its history's epoch (None for a bare legacy id) and its key.
EventRef: TypeAlias = tuple[int | None, EventKey]


def parse_event_id(text: str) -> EventRef | None:
    """``<epoch>:1712345678901-3`` as (epoch, sortable key); None when it is not an event id.

    A bare ``1712345678901-3`` (or ``1712345678901``), the form before epochs, parses with epoch None:
    nothing says which history it belongs to.
    """
    match = _ID.fullmatch(text.strip())
    if match is None:
        return None
    epoch = int(match[1]) if match[1] is not None else None
    key = (int(match[2]), int(match[3] or 0))
    if key[0] > _U64 or key[1] > _U64 or (epoch is not None and epoch > _U64):
        return None
    return epoch, key


def format_event_id(epoch: int, key: EventKey) -> str:
    return f"{epoch}:{key[0]}-{key[1]}"


def stream_bound(key: EventKey) -> str:
    """An exclusive XRANGE / XREVRANGE bound at ``key`` (the stream knows entry ids, not epochs)."""
    return f"({key[0]}-{key[1]}"


@functools.lru_cache(maxsize=2)
def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def now_text() -> str:
    """Now, UTC, RFC 3339 with milliseconds; the date and time of day are formatted once a second."""
    second, ns = divmod(time.time_ns(), 1_000_000_000)
    return f"{_second_text(second)}.{ns // 1_000_000:03d}Z"


def _frame(event_id: str | None, event_type: str, envelope: bytes) -> bytes:
    head = b"id: " + event_id.encode() + _SEP if event_id is not None else b""
    return head + b"event: " + event_type.encode() + _SEP + b"data: " + envelope + _SEP + _SEP


@dataclass(frozen=True, slots=True)
class Event:
    """One published event, decoded once per instance and shared by every client that receives it.

    The envelope (``envelope``, JSON) is what a client sees as ``data:``::

        {"id": "1712345600000000:1712345678901-0",  # <epoch>:<stream entry id>; the resume key
         "type": "provider_status",        # one of EVENT_TYPES (docs/events.md describes each)
         "ts": "2024-04-05T12:34:56.789Z", # when it was published, UTC, RFC 3339, milliseconds
         "source": "gw-1",                 # who published it: the gateway instance, or a named component
         "severity": "info",               # info | warning | error
         "correlation_id": "…" | null,     # the request that caused it; null for background events
         "data": {...}}                    # the type's fields

    ``frame`` is the full SSE record (``id:``, ``event:``, ``data:``) ready to write.
    """

    id: str
    epoch: int
    key: EventKey  # orders events within one epoch
    type: str
    correlation_id: str | None
    envelope: bytes
    frame: bytes

    @classmethod
    def from_stored(cls, event_id: str, payload: bytes) -> Event:
        """Build from an ``<epoch>:<stream id>`` id and the stored envelope (which lacks the id)."""
        ref = parse_event_id(event_id)
        meta = orjson.loads(payload)
        if ref is None or ref[0] is None or not isinstance(meta, dict) or not payload.startswith(b"{"):
            raise ValueError("not an event")
        envelope = b'{"id":"' + event_id.encode() + b'",' + payload[1:]
        event_type = str(meta["type"])
        frame = _frame(event_id, event_type, envelope)
        return cls(event_id, ref[0], ref[1], event_type, meta.get("correlation_id"), envelope, frame)


def control_frame(
    event_type: str,
    data: Mapping[str, Any],
    *,
    source: str,
    correlation_id: str | None,
    severity: str = "warning",
) -> bytes:
    """An SSE record the stream sends on its own (``reset``, ``error``): same envelope, no id."""
    envelope = orjson.dumps(
        {
            "id": None,
            "type": event_type,
            "ts": now_text(),
            "source": source,
            "severity": severity,
            "correlation_id": correlation_id,
            "data": data,
        }
    )
    return _frame(None, event_type, envelope)


def position_frame(event_id: str) -> bytes:
    """An ``id:``-only record: moves the client's Last-Event-ID without dispatching an event."""
    return b"id: " + event_id.encode() + _SEP + _SEP



def entry_key(raw: bytes | str | None) -> EventKey:
    """A stream entry id (``<ms>-<seq>``, as Redis gives it) as a key."""
    text = raw.decode() if isinstance(raw, bytes) else (raw or "0-0")
    ref = parse_event_id(text)
    return ref[1] if ref is not None and ref[0] is None else (0, 0)

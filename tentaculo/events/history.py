"""Resume and epochs: reading the retained history (a Redis stream) so a client that reconnects gets
what it missed, with no gap and no duplicate, or is told ``reset`` when its id belongs to another
history (another epoch), is later than anything issued, or may have been trimmed away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tentaculo.events.envelope import Event, EventRef, entry_key, format_event_id, stream_bound
from tentaculo.events.fanout import Subscription

# XRANGE / XREVRANGE reply of a client without decode_responses; redis-py types it loosely.
StreamEntries: TypeAlias = list[tuple[bytes, dict[bytes, bytes]]]


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """Where a resuming client's replay starts and whether it must be told ``reset`` first."""

    reset: bool
    start: str  # XRANGE lower bound: "-" or "(<ms>-<seq>" (exclusive)
    position: str | None  # the client's position if the replay finds nothing newer (None: no history)
    oldest: str | None  # oldest retained id, for the reset event
    epoch: int | None = None  # the history's epoch when planned (None: there was no history)


class StaleCursor(Exception):
    """A ``before`` cursor from a history Redis no longer holds (it was recreated since)."""



class EventHistory:
    """The events Redis retains (the stream at ``stream_key``, of the epoch at ``epoch_key``), read back."""

    def __init__(self, redis: Redis, *, stream_key: str, epoch_key: str, history_max: int) -> None:
        self._redis = redis
        self.stream_key = stream_key
        self.epoch_key = epoch_key
        self.history_max = history_max

    async def resume_plan(self, ref: EventRef) -> ResumePlan:
        """Decide how a client that last saw ``ref`` (epoch, key) catches up from retained history."""
        epoch, key = ref
        # The stream and its epoch in one transaction: a stream recreated between two reads would
        # otherwise pass for the client's.
        pipe = self._redis.pipeline(transaction=True)
        pipe.xinfo_stream(self.stream_key)
        pipe.get(self.epoch_key)
        info, current_raw = await pipe.execute(raise_on_error=False)
        if isinstance(current_raw, Exception):
            raise current_raw
        if isinstance(info, ResponseError) or current_raw is None:
            # No stream yet (or any more): nothing retained, so nothing the client missed can be sent.
            return ResumePlan(reset=True, start="-", position=None, oldest=None)
        if isinstance(info, Exception):
            raise info
        current = int(current_raw)
        last = entry_key(info.get("last-generated-id"))
        length = int(info.get("length") or 0)
        first = info.get("first-entry")
        added = info.get("entries-added")  # Redis 7+; older servers do not count
        first_key = entry_key(first[0]) if first else None
        if added is not None:
            trimmed = int(added) - length > 0
        else:
            # The client saw its event in this stream; if it is gone, it was trimmed away.
            trimmed = first_key is not None and key < first_key
        oldest = format_event_id(current, first_key) if first_key is not None else None
        # Reset when the id is not of this history (another epoch: Redis was replaced or wiped; or a
        # bare id, which cannot say), when it is later than anything this history issued, or when
        # events after it may have been trimmed away (trimming removes the oldest first).
        if epoch != current or key > last or (trimmed and key < (first_key or last)):
            return ResumePlan(reset=True, start="-", position=format_event_id(current, last), oldest=oldest,
                              epoch=current)
        return ResumePlan(reset=False, start=stream_bound(key), position=format_event_id(current, key), oldest=oldest,
                          epoch=current)

    async def read(self, command: str, **bounds: Any) -> tuple[int, list[Event]]:
        """XRANGE / XREVRANGE and the stream's epoch, read together so each id names its history."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self.epoch_key)
        getattr(pipe, command)(self.stream_key, **bounds)
        epoch_raw, entries = await pipe.execute()
        # Entries without an epoch were written before epochs existed; 0 is no epoch a stream gets,
        # so a client holding one of these ids is reset once the next publish gives the stream one.
        epoch = int(epoch_raw) if epoch_raw is not None else 0
        return epoch, [_decoded(epoch, eid, fields) for eid, fields in cast(StreamEntries, entries)]

    async def since(self, start: str, count: int) -> list[Event]:
        """Up to ``count`` retained events from ``start`` (an XRANGE bound), oldest first."""
        return (await self.read("xrange", min=start, max="+", count=count))[1]

    async def recent(
        self,
        *,
        limit: int,
        before: EventRef | None = None,
        types: frozenset[str] | None = None,
        correlation_id: str | None = None,
    ) -> tuple[list[Event], str | None]:
        """The newest ``limit`` matching events older than ``before``, newest first, and the next cursor.

        Raise StaleCursor when ``before`` names another history than the one Redis holds now.
        """
        probe = Subscription(types, correlation_id, 0)
        found: list[Event] = []
        upper = "+" if before is None else stream_bound(before[1])
        epoch = before[0] if before is not None else None  # a bare cursor is taken as this history's
        chunk = max(limit * 2, 100)
        scanned = 0
        while True:
            current, events = await self.read("xrevrange", max=upper, min="-", count=chunk)
            if epoch is not None and current != epoch:
                if not scanned:
                    raise StaleCursor("this cursor belongs to an event history Redis no longer holds")
                return found, None  # recreated mid-scan: what follows is not the same history
            epoch = current
            for event in events:
                if probe.matches(event):
                    found.append(event)
                    if len(found) == limit:
                        return found, event.id
            scanned += len(events)
            if len(events) < chunk:
                return found, None
            upper = stream_bound(events[-1].key)
            if scanned >= self.history_max + chunk:
                # Sparse matches in a long history: hand back a cursor rather than scan on.
                return found, events[-1].id



def _decoded(epoch: int, eid: bytes, fields: Mapping[bytes, bytes]) -> Event:
    return Event.from_stored(f"{epoch}:{eid.decode()}", fields[b"e"])

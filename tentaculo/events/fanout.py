"""Fan-out: this instance's subscriptions (one per SSE client), each a filter and a bounded queue,
and the delivery of every event the hub receives to the ones it matches.

A client whose queue is full is disconnected as ``slow`` (it resumes with ``Last-Event-ID``), so a
slow reader never holds memory without bound. Streams are counted per instance and per token.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeAlias

import structlog

from tentaculo.events.envelope import Event

log = structlog.get_logger("tentaculo.events")

# Why a subscription ended.
SLOW, REDIS_LOST, SHUTDOWN, CLIENT_GONE = "slow", "redis", "shutdown", "client_gone"
DISABLED = "feature_disabled"  # the events feature was turned off
REVOKED = "token_revoked"  # the token that opened the stream was revoked
# Who a stream counts against: a token's row id, or the name of a token without a row (the bootstrap one).
StreamOwner: TypeAlias = int | str | None


class StreamClosed(Exception):
    """The subscription ended; ``reason`` is one of the reasons above (SLOW, REDIS_LOST, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason



class TooManyClients(Exception):
    """This instance already serves its maximum number of event streams, or this token its share."""


class Subscription:
    """One client's filter and bounded queue; the hub pushes, the stream view pulls."""

    __slots__ = ("_items", "_waiter", "correlation_id", "limit", "on_slow", "owner", "reason", "token_id", "types")

    def __init__(
        self,
        types: frozenset[str] | None,
        correlation_id: str | None,
        limit: int,
        token_id: int | None = None,
        owner: StreamOwner = None,
    ) -> None:
        self.types = types
        self.correlation_id = correlation_id
        self.limit = limit
        self.token_id = token_id  # the token row that opened it (None: the bootstrap token)
        self.owner = owner  # whose share of streams it counts against (None: nobody's)
        self.reason: str | None = None
        self.on_slow: Callable[[], object] | None = None
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def matches(self, event: Event) -> bool:
        return (self.types is None or event.type in self.types) and (
            self.correlation_id is None or event.correlation_id == self.correlation_id
        )

    @property
    def queued(self) -> int:
        return len(self._items)

    def push(self, event: Event) -> bool:
        """Queue ``event``; a full queue closes the subscription as SLOW instead of growing."""
        if self.reason is not None:
            return False
        if len(self._items) >= self.limit:
            self.close(SLOW)
            return False
        self._items.append(event)
        self._wake()
        return True

    def close(self, reason: str) -> None:
        """End the subscription. Queued events are still delivered unless the client is slow, its token
        was revoked or we shut down."""
        if self.reason is not None:
            return
        self.reason = reason
        if reason in (SLOW, SHUTDOWN, REVOKED):
            self._items.clear()
        if reason == SLOW and self.on_slow is not None:
            self.on_slow()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Event:
        """The next event; raise StreamClosed once closed and drained."""
        while not self._items:
            if self.reason is not None:
                raise StreamClosed(self.reason)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()



class Subscribers:
    """This instance's subscriptions, counted per owner, and the fan-out of each event to them."""

    def __init__(self, *, client_queue: int, max_clients: int, max_per_owner: int) -> None:
        self.client_queue = client_queue
        self.max_clients = max_clients
        self.max_per_owner = max_per_owner
        self.slow_disconnects = 0
        self._subs: set[Subscription] = set()
        self._owned: dict[int | str, int] = {}  # open streams per owner: changed only with _subs

    def __len__(self) -> int:
        return len(self._subs)

    def __iter__(self) -> Iterator[Subscription]:
        return iter(list(self._subs))

    def add(
        self,
        types: frozenset[str] | None,
        correlation_id: str | None,
        token_id: int | None,
        owner: StreamOwner,
    ) -> Subscription:
        """A new subscription (opened with token row ``token_id``, counted against ``owner``); raise TooManyClients."""
        if len(self._subs) >= self.max_clients:
            raise TooManyClients(f"this instance already serves {self.max_clients} event streams")
        if owner is not None and self._owned.get(owner, 0) >= self.max_per_owner:
            # Per token, so one token cannot take every stream the instance serves.
            raise TooManyClients(f"this token already has {self.max_per_owner} event streams open on this "
                                 "instance; close one first")
        sub = Subscription(types, correlation_id, self.client_queue, token_id, owner)
        self._subs.add(sub)
        if owner is not None:
            self._owned[owner] = self._owned.get(owner, 0) + 1
        return sub

    def drop(self, sub: Subscription) -> None:
        """Forget ``sub`` and free its owner's slot (once, however many paths end it)."""
        if sub in self._subs:
            self._subs.discard(sub)
            if sub.owner is not None:
                left = self._owned[sub.owner] - 1
                if left:
                    self._owned[sub.owner] = left
                else:
                    del self._owned[sub.owner]

    def close_all(self, reason: str, *, forget: bool = True) -> int:
        """Close every subscription with ``reason`` (and forget them unless ``forget`` is false); how many."""
        subs = list(self._subs)
        for sub in subs:
            sub.close(reason)
        if forget:
            self._subs.clear()
            self._owned.clear()
        return len(subs)

    def token_ids(self) -> set[int]:
        """The token rows that opened the open streams."""
        return {sub.token_id for sub in self._subs if sub.token_id is not None}

    def end_streams_of(self, token_ids: Iterable[int]) -> int:
        """End the streams opened with any of these token rows (revoked); returns how many."""
        revoked = set(token_ids)
        ended = [sub for sub in self._subs if sub.token_id in revoked]
        for sub in ended:
            sub.close(REVOKED)
            self.drop(sub)
        return len(ended)

    def deliver(self, event: Event) -> None:
        """Queue ``event`` for every subscription it matches; a slow one is disconnected."""
        for sub in list(self._subs):
            if not sub.matches(event):
                continue
            try:
                if not sub.push(event) and sub.reason == SLOW:
                    self.slow_disconnects += 1
                    self.drop(sub)
            except Exception:  # isolation boundary: one client's failure must not starve the others
                log.exception("event_fanout_failed")
                self.drop(sub)

"""EventHub: events published through Redis, one subscriber per instance, bounded fan-out to SSE clients.

Transport. ``publish()`` queues an event in a bounded outbox and returns at once; a background
task writes queued events to Redis with one Lua script per batch that appends each event to a
Redis stream (the retained history, capped by length and age) and publishes the whole batch as
one pub/sub message, a ``<id> <envelope>`` line per event, atomically, so live order is id order.
An event id is ``<epoch>:<ms>-<seq>``: the stream entry id orders events; the epoch names the
stream itself and changes whenever it is recreated (Redis restarted empty, failed over, flushed),
so a resume can tell a continuation of its history from a new history whose ids merely look later.
A batch carries a publish id and Redis applies it at most once: a publish retried after a timeout
whose first attempt did reach Redis (a partition that healed) never creates a second event.

Each instance runs one pub/sub reader; it decodes every event once and hands the same bytes to
each matching client's bounded queue. A client whose queue is full is disconnected (it resumes
with ``Last-Event-ID``), so a slow reader never holds memory without bound.

Failure. When the reader loses Redis, the hub's status becomes ``error`` with the reason, every
client's queue is closed with ``redis`` (the stream view then sends a final ``event: error``),
new subscriptions are refused, and the reader reconnects by itself with exponential backoff.
Events published meanwhile wait in the outbox (bounded; overflow is counted in ``snapshot()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from tentaculo.db.redisconn import redis_client
from tentaculo.http.errors import failure_reason
from tentaculo.settings import Settings
from tentaculo.tasks import stop_task

log = structlog.get_logger("tentaculo.events")

EVENT_TYPES = ("service_status", "feature_toggle", "provider_status", "chat", "metrics")
SEVERITIES = ("info", "warning", "error")
# Control events the stream itself sends; not publishable, not filterable.
RESET, ERROR = "reset", "error"
MAX_EVENT_BYTES = 64 * 1024
PUBLISH_BATCH = 256
PUBLISH_BATCH_BYTES = 256 * 1024  # one pub/sub message stays far below Redis's pubsub output buffer limit
# How long the publisher waits for more events before a call: a few per call instead of one
# halves what each costs the gateway (the call and every instance's read of it).
PUBLISH_LINGER_SECONDS = 0.001
IDLE_TRIM_SECONDS = 30.0
# How long Redis remembers that a batch was applied. An attempt the gateway gave up on can still
# reach Redis as long as its connection's data is in flight: the kernel retransmits a closed
# socket's unsent data for about two minutes at most; this is a wide margin over that.
PUBLISH_ID_MS = 10 * 60 * 1000
# Why a subscription ended.
SLOW, REDIS_LOST, SHUTDOWN, CLIENT_GONE = "slow", "redis", "shutdown", "client_gone"
DISABLED = "feature_disabled"  # the events feature was turned off
REVOKED = "token_revoked"  # the token that opened the stream was revoked

_SEP = b"\r\n"
_ID = re.compile(r"(?:(\d{1,20}):)?(\d{1,20})(?:-(\d{1,20}))?")
_U64 = 2**64 - 1
REDIS_FAILURES = (RedisError, OSError, TimeoutError)  # Redis, or the way to it

# KEYS: stream, channel, epoch, the batch's publish id key. ARGV: max length, max age in ms, how
# long a publish id is remembered in ms, then one envelope without id per event.
# One call and one pub/sub message per batch, not per event: each command and each message
# costs the gateway far more than the event does. An envelope is JSON on one line, so the
# message is ``<epoch>:<id> <envelope>`` lines joined by newlines.
# A batch already applied (its first attempt timed out for the gateway but reached Redis) is
# skipped whole: the script is atomic, so the publish id is set exactly when its events are added.
# A stream that does not exist (or lost its epoch) gets a new epoch before its first entry: its
# ids start a new history. Server time makes the epoch, and bounds the age so every instance
# trims alike whatever its own clock says.
_PUBLISH_LUA = """
if not redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[3]) then
  return -1
end
local now = redis.call('TIME')
local epoch = redis.call('GET', KEYS[3])
if not epoch or redis.call('EXISTS', KEYS[1]) == 0 then
  epoch = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('SET', KEYS[3], epoch)
end
local lines = {}
for i = 4, #ARGV do
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
  lines[#lines + 1] = epoch .. ':' .. id .. ' ' .. ARGV[i]
end
redis.call('PUBLISH', KEYS[2], table.concat(lines, '\\n'))
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[2])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', oldest))
end
return #ARGV - 3
"""
_TRIM_LUA = """
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[1])
if oldest > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', oldest))
end
return 0
"""

EventKey: TypeAlias = tuple[int, int]
# An event id as a client gives it back: its history's epoch (None for a bare legacy id) and its key.
EventRef: TypeAlias = tuple[int | None, EventKey]
# Who a stream counts against: a token's row id, or the name of a token without a row (the bootstrap one).
StreamOwner: TypeAlias = int | str | None
# XRANGE / XREVRANGE reply of a client without decode_responses; redis-py types it loosely.
StreamEntries: TypeAlias = list[tuple[bytes, dict[bytes, bytes]]]


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


def _now() -> str:
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
            "ts": _now(),
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


class StreamClosed(Exception):
    """The subscription ended; ``reason`` is one of the reasons above (SLOW, REDIS_LOST, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EventsUnavailable(Exception):
    """No live events right now (Redis away, or the instance is shutting down)."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


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


class EventHub:
    """Publishes events and delivers them to this instance's subscribers; see the module docstring."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        instance: str,
        client_queue: int = 2048,
        max_clients: int = 10_000,
        max_per_owner: int = 20,
        publish_buffer: int = 10_000,
        history_max: int = 10_000,
        history_seconds: float = 86_400.0,
        reconnect_max: float = 5.0,
        idle_check: float = 5.0,
    ) -> None:
        self._redis = redis
        self.channel = f"{prefix}events"
        self.stream_key = f"{prefix}events:history"
        self.epoch_key = f"{prefix}events:epoch"  # the epoch of the stream at stream_key
        self._publish_id_prefix = f"{prefix}events:pub:{secrets.token_hex(6)}-"  # unique to this hub
        self._publish_ids = itertools.count()
        self.instance = instance
        self.client_queue = client_queue
        self.max_clients = max_clients
        self.max_per_owner = max_per_owner
        self.publish_buffer = publish_buffer
        self.history_max = history_max
        self.history_ms = int(history_seconds * 1000)
        self.reconnect_max = reconnect_max
        self.idle_check = idle_check
        self._publish_script = redis.register_script(_PUBLISH_LUA)
        self._trim_script = redis.register_script(_TRIM_LUA)
        self._outbox: deque[bytes] = deque()
        # The batch being published and its publish id key: retried as it is until Redis answers,
        # so a retry carries the id of its first attempt.
        self._inflight: tuple[str, list[bytes]] | None = None
        self._outbox_wake = asyncio.Event()
        self._subs: set[Subscription] = set()
        self._owned: dict[int | str, int] = {}  # open streams per owner: changed only with _subs
        self._online = asyncio.Event()
        self._closing = False
        self._was_online = False
        self._tasks: list[asyncio.Task[None]] = []
        # Called with every Event this instance receives (e.g. feature flags obey feature_toggle).
        self.listeners: list[Callable[[Event], object]] = []
        self.status = "error"
        self.reason: str | None = "not connected to Redis yet"
        self.retry_after = 0.1
        self.published = 0
        self.publish_dropped = 0
        self.publish_failures = 0
        self.publish_error: str | None = None
        self.received = 0
        self.slow_disconnects = 0
        self.reconnects = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> EventHub:
        """A hub with its own Redis connections, which fail fast so the hub itself decides when to retry."""
        redis = redis_client(
            settings,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=5,
            socket_connect_timeout=2,
        )
        return cls(
            redis,
            prefix=settings.redis_prefix,
            instance=settings.instance,
            client_queue=settings.events_client_queue,
            max_clients=settings.events_max_clients,
            max_per_owner=settings.events_max_streams_per_token,
            publish_buffer=settings.events_publish_buffer,
            history_max=settings.events_history_max,
            history_seconds=settings.events_history_seconds,
            reconnect_max=settings.events_reconnect_max_seconds,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, wait: float = 2.0) -> None:
        """Start the reader and the publisher; wait up to ``wait`` s for Redis, then serve regardless."""
        self._tasks = [
            asyncio.create_task(self._listen(), name="events-reader"),
            asyncio.create_task(self._drain(), name="events-publisher"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._online.wait()

    def close_streams(self) -> None:
        """Shutdown: end every stream now so the server can stop in seconds; refuse new ones."""
        self._closing = True
        for sub in list(self._subs):
            sub.close(SHUTDOWN)

    async def close(self, timeout: float = 2.0) -> None:
        """Stop the reader, give queued events ``timeout`` s to reach Redis, close connections."""
        self.close_streams()
        reader, publisher = self._tasks or (None, None)
        await stop_task(reader)
        if publisher is not None:
            if self._outbox:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        while self._outbox and not publisher.done():
                            await asyncio.sleep(0.01)
            await stop_task(publisher)
        if self._outbox:
            self.publish_dropped += len(self._outbox)
            log.error("events_lost_at_shutdown", events=len(self._outbox), error=self.publish_error)
            self._outbox.clear()
        self._tasks = []
        await self._redis.aclose()

    async def wait_online(self) -> None:
        """Return once the reader is subscribed (immediately if it is)."""
        await self._online.wait()

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        correlation_id: str | None = None,
        severity: str = "info",
        source: str | None = None,
    ) -> bool:
        """Queue an event for every instance's clients; never blocks. False when dropped (counted).

        ``correlation_id`` defaults to the current request's (structlog context), so an event a
        request causes carries its id; background work outside a request publishes with null.
        """
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}; add it to EVENT_TYPES and docs/events.md")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}")
        if correlation_id is None:
            correlation_id = structlog.contextvars.get_contextvars().get("correlation_id")
        payload = orjson.dumps(
            {
                "type": event_type,
                "ts": _now(),
                "source": source or self.instance,
                "severity": severity,
                "correlation_id": correlation_id,
                "data": data,
            },
            option=orjson.OPT_UTC_Z,
        )
        if len(payload) > MAX_EVENT_BYTES:
            raise ValueError(f"an event must fit in {MAX_EVENT_BYTES} bytes; publish a reference, not the payload")
        if len(self._outbox) >= self.publish_buffer:
            self.publish_dropped += 1
            if self.publish_dropped == 1 or self.publish_dropped % 1000 == 0:
                log.error("events_outbox_full", dropped=self.publish_dropped, capacity=self.publish_buffer)
            return False
        self._outbox.append(payload)
        self._outbox_wake.set()
        return True

    async def _drain(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                await asyncio.sleep(backoff)
            elif not self._outbox:
                self._outbox_wake.clear()
                try:
                    async with asyncio.timeout(IDLE_TRIM_SECONDS):
                        await self._outbox_wake.wait()
                except TimeoutError:
                    # Quiet streams still age out.
                    with contextlib.suppress(*REDIS_FAILURES):
                        await self._trim_script(keys=[self.stream_key], args=[self.history_ms])
                    continue
            if self._inflight is None:
                if len(self._outbox) < PUBLISH_BATCH:
                    await asyncio.sleep(PUBLISH_LINGER_SECONDS)
                self._inflight = (f"{self._publish_id_prefix}{next(self._publish_ids)}", self._next_batch())
            publish_id, batch = self._inflight
            refused: ResponseError | None = None
            try:
                await self._publish_script(
                    keys=[self.stream_key, self.channel, self.epoch_key, publish_id],
                    args=[self.history_max, self.history_ms, PUBLISH_ID_MS, *batch],
                )
            except ResponseError as exc:  # Redis refused the script (e.g. out of memory); it was reachable
                refused = exc
            except REDIS_FAILURES as exc:
                self.publish_failures += 1
                if self.publish_error is None:
                    log.warning("events_publish_failed", queued=len(self._outbox), error=failure_reason(exc))
                self.publish_error = failure_reason(exc)
                backoff = min(max(backoff * 2, 0.1), self.reconnect_max)
                continue
            except Exception:  # isolation boundary: a bug must not stop every later event
                log.exception("events_publisher_failed", queued=len(self._outbox))
                self.publish_failures += 1
                backoff = min(max(backoff * 2, 0.1), self.reconnect_max)
                continue
            self._inflight = None
            for _ in batch:
                self._outbox.popleft()
            if refused is not None:
                # Retrying could duplicate the part of the batch Redis did take: count and move on.
                self.publish_dropped += len(batch)
                log.error("events_refused_by_redis", events=len(batch), error=failure_reason(refused))
            else:
                self.published += len(batch)
            backoff = 0.0
            if self.publish_error is not None:
                log.info("events_publish_recovered", queued=len(self._outbox))
                self.publish_error = None

    def _next_batch(self) -> list[bytes]:
        """The oldest queued events, up to PUBLISH_BATCH of them and PUBLISH_BATCH_BYTES (at least one)."""
        batch: list[bytes] = []
        size = 0
        for payload in self._outbox:
            if batch and (len(batch) >= PUBLISH_BATCH or size + len(payload) > PUBLISH_BATCH_BYTES):
                break
            batch.append(payload)
            size += len(payload)
        return batch

    # -- the reader ------------------------------------------------------------------------

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                async with asyncio.timeout(5):
                    while (msg := await pubsub.get_message(timeout=1.0)) is None or msg["type"] != "subscribe":
                        pass
                if self.status != "on" and self._was_online:
                    # Back after an outage: idle pooled connections from before it may be dead,
                    # and this client does not retry, so the next history read would fail on one.
                    await self._redis.connection_pool.disconnect(inuse_connections=False)
                self._went_online()
                delay = 0.1
                await self._pump(pubsub)
            except REDIS_FAILURES as exc:
                self._went_offline(f"Redis unreachable: {failure_reason(exc)}", delay)
            except Exception:  # isolation boundary: the reader must outlive any one bad message or bug
                log.exception("events_reader_failed")
                self._went_offline("the event reader failed; restarting it", delay)
            finally:
                with contextlib.suppress(*REDIS_FAILURES):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max)

    async def _pump(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            msg = await pubsub.get_message(timeout=self.idle_check)
            now = loop.time()
            if msg is None:
                # A silent connection may be half-open: ask, and give up if nothing answers.
                if now - heard > 3 * self.idle_check:
                    raise TimeoutError("Redis stopped answering pings")
                if now - heard >= self.idle_check:
                    await pubsub.ping()
                continue
            heard = now
            if msg["type"] == "message":
                self._dispatch_batch(msg["data"])

    def _dispatch_batch(self, raw: bytes) -> None:
        for line in raw.split(b"\n"):
            self._dispatch(line)

    def _dispatch(self, raw: bytes) -> None:
        event_id, _, payload = raw.partition(b" ")
        try:
            event = Event.from_stored(event_id.decode(), payload)
        except (ValueError, KeyError, UnicodeDecodeError):
            log.warning("event_undecodable", size=len(raw))
            return
        self.received += 1
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # one listener's failure must not starve the clients
                log.exception("event_listener_failed")
        for sub in list(self._subs):
            if not sub.matches(event):
                continue
            try:
                if not sub.push(event) and sub.reason == SLOW:
                    self.slow_disconnects += 1
                    self._drop(sub)
            except Exception:  # one client's failure must not starve the others
                log.exception("event_fanout_failed")
                self._drop(sub)

    def _went_online(self) -> None:
        if self.status != "on":
            if self._was_online:
                self.reconnects += 1
                log.info("events_reader_reconnected")
            self._was_online = True
            self.status, self.reason = "on", None
            self._online.set()

    def _went_offline(self, reason: str, retry_after: float) -> None:
        if self.status == "on":
            log.warning("events_reader_lost_redis", reason=reason, clients=len(self._subs))
        self.status, self.reason, self.retry_after = "error", reason, retry_after
        self._online.clear()
        for sub in list(self._subs):
            sub.close(REDIS_LOST)
        self._drop_all()

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(
        self,
        types: frozenset[str] | None = None,
        correlation_id: str | None = None,
        token_id: int | None = None,
        owner: StreamOwner = None,
    ) -> Subscription:
        """Register a client (opened with token row ``token_id``, counted against ``owner``);
        raise EventsUnavailable or TooManyClients."""
        if self._closing:
            raise EventsUnavailable("the instance is shutting down", 1.0)
        if self.status != "on":
            raise EventsUnavailable(self.reason or "Redis unreachable", max(self.retry_after, 0.1))
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

    def _drop(self, sub: Subscription) -> None:
        """Forget ``sub`` and free its owner's slot (once, however many paths end it)."""
        if sub in self._subs:
            self._subs.discard(sub)
            if sub.owner is not None:
                left = self._owned[sub.owner] - 1
                if left:
                    self._owned[sub.owner] = left
                else:
                    del self._owned[sub.owner]

    def _drop_all(self) -> None:
        self._subs.clear()
        self._owned.clear()

    def token_ids(self) -> set[int]:
        """The token rows that opened this instance's open streams."""
        return {sub.token_id for sub in self._subs if sub.token_id is not None}

    def end_streams_of(self, token_ids: Iterable[int]) -> int:
        """End the streams opened with any of these token rows (revoked); returns how many."""
        revoked = set(token_ids)
        ended = [sub for sub in self._subs if sub.token_id in revoked]
        for sub in ended:
            sub.close(REVOKED)
            self._drop(sub)
        return len(ended)

    def end_streams(self, reason: str) -> int:
        """End every open stream with ``reason`` (e.g. DISABLED); new ones are still accepted. Returns how many."""
        subs = list(self._subs)
        for sub in subs:
            sub.close(reason)
        self._drop_all()
        return len(subs)

    def unsubscribe(self, sub: Subscription) -> None:
        self._drop(sub)

    @property
    def clients(self) -> int:
        return len(self._subs)

    # -- history -----------------------------------------------------------------------------

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
        last = _key(info.get("last-generated-id"))
        length = int(info.get("length") or 0)
        first = info.get("first-entry")
        added = info.get("entries-added")  # Redis 7+; older servers do not count
        first_key = _key(first[0]) if first else None
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

    async def _read(self, command: str, **bounds: Any) -> tuple[int, list[Event]]:
        """XRANGE / XREVRANGE and the stream's epoch, read together so each id names its history."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(self.epoch_key)
        getattr(pipe, command)(self.stream_key, **bounds)
        epoch_raw, entries = await pipe.execute()
        # Entries without an epoch were written before epochs existed; 0 is no epoch a stream gets,
        # so a client holding one of these ids is reset once the next publish gives the stream one.
        epoch = int(epoch_raw) if epoch_raw is not None else 0
        return epoch, [_decoded(epoch, eid, fields) for eid, fields in cast(StreamEntries, entries)]

    async def history(self, start: str, count: int) -> list[Event]:
        """Up to ``count`` retained events from ``start`` (an XRANGE bound), oldest first."""
        return (await self._read("xrange", min=start, max="+", count=count))[1]

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
            current, events = await self._read("xrevrange", max=upper, min="-", count=chunk)
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

    def snapshot(self) -> dict[str, Any]:
        """State and counters, for status and metrics."""
        return {
            "status": self.status,
            "reason": self.reason,
            "clients": len(self._subs),
            "published": self.published,
            "publish_queued": len(self._outbox),
            "publish_dropped": self.publish_dropped,
            "publish_failures": self.publish_failures,
            "publish_error": self.publish_error,
            "received": self.received,
            "slow_disconnects": self.slow_disconnects,
            "reconnects": self.reconnects,
        }


def _key(raw: bytes | str | None) -> EventKey:
    """A stream entry id (``<ms>-<seq>``, as Redis gives it) as a key."""
    text = raw.decode() if isinstance(raw, bytes) else (raw or "0-0")
    ref = parse_event_id(text)
    return ref[1] if ref is not None and ref[0] is None else (0, 0)


def _decoded(epoch: int, eid: bytes, fields: Mapping[bytes, bytes]) -> Event:
    return Event.from_stored(f"{epoch}:{eid.decode()}", fields[b"e"])

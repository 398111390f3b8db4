"""EventHub: events published through Redis, one subscriber per instance, bounded fan-out to SSE clients.

This module owns the transport (the outbox, the publishing script, the pub/sub reader) and the
hub's lifecycle and status; what an event is lives in ``envelope``, the clients' queues in
``fanout``, reading the retained history back (resume, epochs) in ``history``.

Transport. ``publish()`` queues an event in a bounded outbox and returns at once; a background
task writes queued events to Redis with one Lua script per batch that appends each event to a
Redis stream (the retained history, capped by length and age) and publishes the whole batch as
one pub/sub message, a ``<id> <envelope>`` line per event, atomically, so live order is id order.
An event id is ``<epoch>:<ms>-<seq>`` (see ``envelope``).
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
import itertools
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from tentaculo.db.redisconn import redis_client
from tentaculo.events.envelope import EVENT_TYPES, MAX_EVENT_BYTES, SEVERITIES, Event, now_text
from tentaculo.events.fanout import REDIS_LOST, SHUTDOWN, StreamOwner, Subscribers, Subscription
from tentaculo.events.history import EventHistory
from tentaculo.health import Status
from tentaculo.http.errors import failure_reason
from tentaculo.settings import Settings
from tentaculo.tasks import stop_task

log = structlog.get_logger("tentaculo.events")

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


class EventsUnavailable(Exception):
    """No live events right now (Redis away, or the instance is shutting down)."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after



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
        self.publish_buffer = publish_buffer
        self.history_max = history_max
        self.subscribers = Subscribers(client_queue=client_queue, max_clients=max_clients,
                                       max_per_owner=max_per_owner)
        # What Redis retains, read back: resume, pages of recent events.
        self.history = EventHistory(redis, stream_key=self.stream_key, epoch_key=self.epoch_key,
                                    history_max=history_max)
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
        self._online = asyncio.Event()
        self._closing = False
        self._was_online = False
        self._tasks: list[asyncio.Task[None]] = []
        # Called with every Event this instance receives (e.g. feature flags obey feature_toggle).
        self.listeners: list[Callable[[Event], object]] = []
        self.status: Status = "error"
        self.reason: str | None = "not connected to Redis yet"
        self.retry_after = 0.1
        self.published = 0
        self.publish_dropped = 0
        self.publish_failures = 0
        self.publish_error: str | None = None
        self.received = 0
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
        self.subscribers.close_all(SHUTDOWN, forget=False)

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
                "ts": now_text(),
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
        self.subscribers.deliver(event)

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
            log.warning("events_reader_lost_redis", reason=reason, clients=len(self.subscribers))
        self.status, self.reason, self.retry_after = "error", reason, retry_after
        self._online.clear()
        self.subscribers.close_all(REDIS_LOST)

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
        return self.subscribers.add(types, correlation_id, token_id, owner)

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.drop(sub)

    def token_ids(self) -> set[int]:
        """The token rows that opened this instance's open streams."""
        return self.subscribers.token_ids()

    def end_streams_of(self, token_ids: Iterable[int]) -> int:
        """End the streams opened with any of these token rows (revoked); returns how many."""
        return self.subscribers.end_streams_of(token_ids)

    def end_streams(self, reason: str) -> int:
        """End every open stream with ``reason`` (e.g. DISABLED); new ones are still accepted. Returns how many."""
        return self.subscribers.close_all(reason)

    @property
    def clients(self) -> int:
        return len(self.subscribers)

    def snapshot(self) -> dict[str, Any]:
        """State and counters, for status and metrics."""
        return {
            "status": self.status,
            "reason": self.reason,
            "clients": len(self.subscribers),
            "published": self.published,
            "publish_queued": len(self._outbox),
            "publish_dropped": self.publish_dropped,
            "publish_failures": self.publish_failures,
            "publish_error": self.publish_error,
            "received": self.received,
            "slow_disconnects": self.subscribers.slow_disconnects,
            "reconnects": self.reconnects,
        }


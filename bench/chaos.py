"""`make chaos`: take PostgreSQL and Redis away under load, stop the gateway with streams open, print one table.

    python -m bench.chaos [scenario ...]     (default: all, in order; --quick for tiny numbers)

Each scenario starts its own gateway (``tentaculo run``, a subprocess) whose PostgreSQL and Redis
are reached through loopback proxies this process runs (``tests.faults.CuttableProxy``): a *cut*
refuses and resets connections as a stopped server would, a *silence* keeps them open and lets
nothing through. The machine's own servers are never stopped, restarted or flushed; each
scenario has its own database rows (counted by instance name and correlation-id prefix) and its
own Redis key prefix, deleted at the end.

What is counted, and how:

- Requests: every call carries ``X-Correlation-ID: <scenario prefix><n>``; after the run the
  ``audit_logs`` rows of the scenario's instance with that prefix are counted against the calls
  that got an answer, and ``/ready``'s ``checks.audit.dropped`` says how many the buffer shed.
- Events: every chat publishes a ``chat`` event carrying its correlation id. An SSE client
  follows ``types=chat`` and, whenever its stream ends, reconnects with ``Last-Event-ID`` (the
  last ``id:`` it saw, an opaque string). A published chat never delivered is a gap; one
  delivered twice a duplicate. A gap is *reported* when a ``reset`` reached the client after
  that chat was published (the gateway said history was lost); otherwise it is a broken promise.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.env import BenchEnv, Figure, Process, each_scenario, table as figures_table
from tentaculo.http.server import shutdown_total
from tentaculo.settings import Settings
from tests.faults import CuttableProxy, proxy_postgres, proxy_redis

DEFAULTS = Settings()
DEADLINE = DEFAULTS.db_timeout  # TENTACULO_DB_TIMEOUT, left at its default for these gateways
SLACK = 1.0  # scheduling slack on a loaded 2-core machine, on top of any deadline
READY_AGAIN = 5.0  # the promise for /ready after a dependency returns
WHOAMI = "/operator/api/whoami"
TOKENS = "/operator/api/tokens"
CHAT = "/operator/api/chat"
EVENTS = "/operator/api/events"


@dataclass(frozen=True)
class Sizes:
    """How long each phase lasts and how hard the load pushes; bounded so the whole run stays short."""

    clients: int = 4  # concurrent whoami clients (half with the admin token, half with a database token)
    pace: float = 0.05  # seconds between one client's calls
    tokens_pace: float = 0.25  # seconds between token-list calls: the resolution of "time to the first 503"
    unknown_pace: float = 0.5  # seconds between unknown-token calls during a partition
    chat_pace: float = 0.2  # seconds between chats
    before: float = 2.0  # steady load before the fault
    cut: float = 5.0
    silence: float = 8.0
    after: float = 2.0  # load after /ready is 200 again
    settle: float = 15.0  # longest wait for rows to be written and events delivered
    shutdown_words: int = 200  # the long streamed chat's length (TENTACULO_MOCK_DELAY_MS per word)


QUICK = Sizes(clients=2, before=1.0, cut=2.0, silence=3.0, after=0.5, settle=10.0)


def _now() -> float:
    return time.monotonic()


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f} s"


# -- a gateway behind cuttable proxies ---------------------------------------------------------


class Rig:
    """One scenario's gateway, its proxies to PostgreSQL and Redis, and an HTTP session."""

    def __init__(self, env: BenchEnv, name: str) -> None:
        self.env = env
        self.name = name
        self.tag = f"chaos-{name}-{uuid.uuid4().hex[:6]}"  # instance name and correlation-id prefix
        self.prefix = f"{env.redis_prefix}{name}:"
        self.pg: CuttableProxy | None = None
        self.redis: CuttableProxy | None = None
        self.gateway: Process | None = None
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._cids = itertools.count()

    async def start(self, **extra: str) -> Rig:
        """Proxies, then the gateway through them, ready; on failure everything started is closed."""
        try:
            self.pg, dsn = await proxy_postgres(self.env.database_url)
            self.redis, redis_url = await proxy_redis(self.env.redis_url)
            self.gateway = await self.env.start_gateway(
                self.tag, TENTACULO_DATABASE_URL=dsn, TENTACULO_REDIS_URL=redis_url,
                TENTACULO_REDIS_PREFIX=self.prefix, TENTACULO_PROVIDERS="mock", TENTACULO_PROVIDER_CHAIN="mock",
                TENTACULO_LOG_LEVEL="warning",
                **{"TENTACULO_DRAIN_SECONDS": "0.2", **extra},  # no balancer to drain for, except in "shutdown"
            )  # fmt: skip
            if await self.wait_ready(60) is None:
                raise RuntimeError(f"{self.name}: the gateway never became ready")
        except BaseException:
            await self.close()
            raise
        return self

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    @property
    def admin(self) -> dict[str, str]:
        return {"X-VX11-Token": self.env.admin_token}

    def cid(self, kind: str = "") -> str:
        return f"{self.tag}-{kind}{next(self._cids)}"

    async def ready(self) -> tuple[int, dict[str, Any]]:
        """``/ready``'s status and body (0 when it did not answer)."""
        try:
            async with self.http.get(f"{self.url}/ready", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                return resp.status, await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return 0, {}

    async def wait_ready(self, timeout: float, *, status: int = 200, interval: float = 0.1) -> float | None:
        """Poll ``/ready`` until it answers ``status``; the moment it did, or None."""
        deadline = _now() + timeout
        while _now() < deadline:
            code, _ = await self.ready()
            if code == status:
                return _now()
            await asyncio.sleep(interval)
        return None

    async def create_token(self) -> str:
        body = {"name": f"{self.tag}-{uuid.uuid4().hex[:4]}", "scopes": ["read"]}
        async with self.http.post(f"{self.url}{TOKENS}", json=body, headers=self.admin) as resp:
            assert resp.status == 201, await resp.text()
            token: str = (await resp.json())["token"]
        async with self.http.get(f"{self.url}{WHOAMI}", headers={"X-VX11-Token": token}) as resp:
            assert resp.status == 200  # PostgreSQL has now vouched for it
        return token

    async def audit_rows(self, answered: int, settle: float) -> tuple[int, int, int, int]:
        """Once writing settled: (calls with a row, rows beyond one per call, rows dropped, buffer capacity)."""
        conn = await self.env.db()
        try:
            deadline, last = _now() + settle, -1
            while True:
                counted = await conn.fetchrow(
                    "SELECT count(DISTINCT correlation_id) AS calls, count(*) AS rows FROM audit_logs"
                    " WHERE instance = $1 AND correlation_id LIKE $2",
                    self.tag, f"{self.tag}-%",
                )
                rows, extra = counted["calls"], counted["rows"] - counted["calls"]
                if rows >= answered or _now() > deadline:
                    break
                if rows == last and self.gateway is not None and self.gateway.popen.poll() is not None:
                    break  # the gateway exited: nothing more will come
                last = rows
                await asyncio.sleep(0.5)
        finally:
            await conn.close()
        if self.gateway is not None and self.gateway.popen.poll() is None:
            _, body = await self.ready()
            audit = body.get("checks", {}).get("audit", {})
            return rows, extra, int(audit.get("dropped", -1)), int(audit.get("capacity", -1))
        return rows, extra, -1, -1

    async def close(self) -> None:
        await self.http.close()
        if self.gateway is not None:
            # Waited for off the loop: the proxies run on it, and the gateway flushes through them.
            await asyncio.to_thread(self.gateway.stop)
        for proxy in (self.pg, self.redis):
            if proxy is not None:
                await proxy.close()


# -- request load ------------------------------------------------------------------------------


@dataclass
class Call:
    kind: str
    started: float
    ended: float
    status: int  # 0: no answer (refused, reset or timed out)
    retry_after: bool = False

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Load:
    """Paced callers, each one request at a time; every call is recorded."""

    rig: Rig
    calls: list[Call] = field(default_factory=list)
    unknown_on: bool = False
    stop_on_refusal: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    def start(self, sizes: Sizes, db_token: str | None) -> None:
        admin = self.rig.env.admin_token
        for i in range(sizes.clients):
            token, kind = (db_token, "db") if db_token and i % 2 else (admin, "admin")
            self._tasks.append(asyncio.create_task(self._caller(kind, "GET", WHOAMI, lambda t=token: t, sizes.pace)))
        self._tasks.append(asyncio.create_task(self._caller("tokens", "GET", TOKENS, lambda: admin, sizes.tokens_pace)))
        # Tokens never seen, only while a partition lasts: outside one they are 401s, which the
        # failed-authentication limiter counts against this address.
        self._tasks.append(asyncio.create_task(
            self._caller("unknown", "GET", WHOAMI, lambda: "chaos-unknown-" + uuid.uuid4().hex, sizes.unknown_pace,
                         when=lambda: self.unknown_on)))

    async def _caller(self, kind: str, method: str, path: str, token: Callable[[], str], pace: float,
                      when: Callable[[], bool] = lambda: True) -> None:
        while not self._stopping:
            if when():
                started = _now()
                headers = {"X-VX11-Token": token(), "X-Correlation-ID": self.rig.cid()}
                try:
                    async with self.rig.http.request(method, f"{self.rig.url}{path}", headers=headers) as resp:
                        await resp.read()
                        call = Call(kind, started, _now(), resp.status, "Retry-After" in resp.headers)
                except (aiohttp.ClientError, TimeoutError):
                    call = Call(kind, started, _now(), 0)
                self.calls.append(call)
                if call.status == 0 and self.stop_on_refusal:
                    return
            await asyncio.sleep(pace)

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*self._tasks)

    def answered(self) -> int:
        return sum(1 for c in self.calls if c.status)

    def unanswered(self) -> int:
        return sum(1 for c in self.calls if not c.status)

    def during(self, kind: str, start: float, end: float) -> list[Call]:
        return [c for c in self.calls if c.kind == kind and start <= c.started < end]

    def first(self, kind: str, status: int, after: float) -> Call | None:
        return min((c for c in self.calls if c.kind == kind and c.status == status and c.started >= after),
                   key=lambda c: c.ended, default=None)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the event stream --------------------------------------------------------------------------


@dataclass
class SseClient:
    """Follows ``chat`` events; reconnects with Last-Event-ID whenever its stream ends (unless told not to)."""

    rig: Rig
    reconnect: bool = True
    last_id: str | None = None
    deliveries: list[tuple[str, float]] = field(default_factory=list)  # (correlation id, when)
    ids: dict[str, set[str]] = field(default_factory=dict)  # correlation id -> the event ids it came under
    resets: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)  # (when, problem code)
    shutdowns: list[float] = field(default_factory=list)
    opened: list[float] = field(default_factory=list)
    refused: int = 0
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _resp: aiohttp.ClientResponse | None = None
    _stopping: bool = False

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Go away (keeping the last id, so ``start()`` resumes)."""
        self._stopping = True
        if self._resp is not None:
            self._resp.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.connected.clear()

    async def _run(self) -> None:
        backoff = 0.2
        while not self._stopping:
            headers = dict(self.rig.admin)
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            try:
                async with self.rig.http.get(
                    f"{self.rig.url}{EVENTS}", params={"types": "chat"}, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=60),
                ) as resp:  # fmt: skip
                    if resp.status != 200:
                        self.refused += 1
                        await resp.read()
                    else:
                        self._resp = resp
                        self.opened.append(_now())
                        self.connected.set()
                        backoff = 0.2
                        await self._read(resp)
            except (aiohttp.ClientError, TimeoutError):
                pass
            finally:
                self._resp = None
                self.connected.clear()
            if self._stopping or not self.reconnect:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        record: dict[str, str] = {}
        data: list[str] = []
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name in ("id", "event"):
                    record[name] = value
                continue
            if "id" in record:
                self.last_id = record["id"]  # id-only records move the position too
            if data:
                self._dispatch(record.get("event", "message"), json.loads("\n".join(data)))
            record, data = {}, []

    def _dispatch(self, event: str, envelope: dict[str, Any]) -> None:
        now = _now()
        if event == "chat":
            cid = envelope["correlation_id"]
            self.deliveries.append((cid, now))
            self.ids.setdefault(cid, set()).add(str(envelope.get("id")))
        elif event == "reset":
            self.resets.append(now)
        elif event == "error":
            self.errors.append((now, str(envelope.get("data", {}).get("code"))))
        elif event == "shutdown":
            self.shutdowns.append(now)


@dataclass(frozen=True)
class Tally:
    published: int
    delivered: int  # distinct events
    gaps: int  # published, never delivered, no reset told of it
    reported: int  # published, never delivered, a reset came after
    duplicates: int  # deliveries beyond the first of an event
    resets: int


def tally(published: dict[str, float], deliveries: list[tuple[str, float]], resets: list[float]) -> Tally:
    """Compare what was published (correlation id -> when) with what one client received."""
    seen = Counter(cid for cid, _ in deliveries if cid in published)
    missing = [when for cid, when in published.items() if cid not in seen]
    reported = sum(1 for when in missing if any(r >= when for r in resets))
    return Tally(
        published=len(published), delivered=len(seen), gaps=len(missing) - reported, reported=reported,
        duplicates=sum(n - 1 for n in seen.values()), resets=len(resets),
    )  # fmt: skip


@dataclass
class Chats:
    """One client chatting with the mock provider at a pace; remembers when each chat was answered."""

    rig: Rig
    pace: float
    published: dict[str, float] = field(default_factory=dict)
    phases: Counter[str] = field(default_factory=Counter)
    slowest: dict[str, float] = field(default_factory=dict)  # phase -> longest chat, seconds
    failed: int = 0
    phase: str = "before"
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            await self.one()
            await asyncio.sleep(self.pace)

    async def one(self) -> None:
        cid = self.rig.cid("chat-")
        phase, started = self.phase, _now()
        headers = {**self.rig.admin, "X-Correlation-ID": cid}
        try:
            async with self.rig.http.post(f"{self.rig.url}{CHAT}", headers=headers,
                                          json={"message": "x", "provider": "mock"}) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        self.slowest[phase] = max(self.slowest.get(phase, 0.0), _now() - started)
        if ok:
            self.published[cid] = _now()
            self.phases[phase] += 1
        else:
            self.failed += 1

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await self._task


async def _delivered(sse: SseClient, chats: Chats, settle: float) -> None:
    """Wait until the client has every published chat, or ``settle`` seconds."""
    deadline = _now() + settle
    while _now() < deadline:
        if set(chats.published) <= {cid for cid, _ in sse.deliveries}:
            return
        await asyncio.sleep(0.1)


def _event_figures(scenario: str, t: Tally, chats: Chats, sse: SseClient) -> list[Figure]:
    p = chats.phases
    # The same event twice (a replay overlapping live delivery) or one published twice under two ids?
    twice = sum(1 for cid, ids in sse.ids.items() if cid in chats.published and len(ids) > 1)
    first: dict[str, float] = {}
    for cid, when in sse.deliveries:
        first.setdefault(cid, when)
    late = max((first[cid] - answered for cid, answered in chats.published.items() if cid in first), default=None)
    return [
        Figure(scenario, "chats published before / during / after", f"{p['before']} / {p['during']} / {p['after']}",
               goal="all answered", ok=chats.failed == 0),
        Figure(scenario, "events published / delivered", f"{t.published} / {t.delivered}"),
        Figure(scenario, "slowest delivery (chat answered to event received)", _s(late)),
        Figure(scenario, "event gaps outside a reset", t.gaps, goal="0", ok=t.gaps == 0),
        Figure(scenario, "event gaps a reset reported", t.reported),
        Figure(scenario, "duplicate deliveries (events stored twice)", f"{t.duplicates} ({twice})", goal="0",
               ok=t.duplicates == 0),
        Figure(scenario, "resets received", t.resets),
    ]


# -- the scenarios -----------------------------------------------------------------------------


async def postgres_fault(env: BenchEnv, sizes: Sizes, mode: str) -> list[Figure]:
    """PostgreSQL cut or silenced under steady load: answers, deadlines, audit rows, /ready."""
    scenario = "postgres " + ("stops" if mode == "cut" else "silent")
    duration = sizes.cut if mode == "cut" else sizes.silence
    rig = await Rig(env, f"pg-{mode}").start()
    try:
        assert rig.pg is not None
        db_token = await rig.create_token()
        load = Load(rig)
        load.start(sizes, db_token)
        await asyncio.sleep(sizes.before)
        fault_at = _now()
        if mode == "cut":
            await rig.pg.cut()
        else:
            rig.pg.silence()
        load.unknown_on = True
        ready_503 = asyncio.create_task(rig.wait_ready(duration, status=503, interval=0.1))
        await asyncio.sleep(duration)
        load.unknown_on = False
        restored_at = _now()
        await rig.pg.restore()
        ready_at = await rig.wait_ready(30)
        not_ready_at = await ready_503
        await asyncio.sleep(sizes.after)
        await load.stop()
        answered = load.answered()
        rows, extra, dropped, capacity = await rig.audit_rows(answered, sizes.settle)
    finally:
        await rig.close()

    within = DEADLINE + SLACK
    db_calls = load.during("db", fault_at, restored_at)
    db_ok = sum(1 for c in db_calls if c.status == 200)
    db_lat = [c.seconds for c in db_calls]
    # Answered while the partition lasted; a call still waiting when it healed may rightly be 401.
    unknown = [c for c in load.during("unknown", fault_at, restored_at) if c.ended < restored_at]
    unknown_ok = sum(1 for c in unknown if c.status == 503 and c.retry_after)
    unknown_max = max((c.seconds for c in unknown), default=None)
    first_503 = load.first("tokens", 503, fault_at)
    to_503 = None if first_503 is None else first_503.ended - fault_at
    to_ready = None if ready_at is None else ready_at - restored_at
    to_not_ready = None if not_ready_at is None else not_ready_at - fault_at
    return [
        Figure(scenario, "requests answered / without an answer", f"{answered} / {load.unanswered()}",
               goal="none unanswered", ok=load.unanswered() == 0),
        Figure(scenario, "requests with an audit row / answered", f"{rows} / {answered}",
               goal="all (none lost)", ok=rows == answered),
        Figure(scenario, "audit rows written twice", extra, goal="0 (one row per request)", ok=extra == 0),
        Figure(scenario, "audit rows dropped (buffer)", f"{dropped} ({capacity} rows)", goal="0", ok=dropped == 0),
        Figure(scenario, "DB-token whoami during the fault: 200 / calls", f"{db_ok} / {len(db_calls)}",
               goal="all 200 (grace)", ok=bool(db_calls) and db_ok == len(db_calls)),
        Figure(scenario, "DB-token whoami during the fault: p50 / max (calls over)", f"{_ms(_pct(db_lat, 0.5))} / "
               f"{_ms(max(db_lat, default=None))} ms ({sum(1 for x in db_lat if x > within)})", "",
               f"max <= {within:g} s",
               bool(db_lat) and max(db_lat) <= within),
        Figure(scenario, "unknown-token whoami: 503+Retry-After / calls, max", f"{unknown_ok} / {len(unknown)}, "
               f"{_ms(unknown_max)} ms", goal=f"all, <= {within:g} s",
               ok=bool(unknown) and unknown_ok == len(unknown) and (unknown_max or 0) <= within),
        Figure(scenario, "fault to first 503 of a token-list call", _s(to_503), "",
               f"<= {within + sizes.tokens_pace:g} s", to_503 is not None and to_503 <= within + sizes.tokens_pace),
        Figure(scenario, "fault to /ready 503", _s(to_not_ready), "", f"<= {within:g} s",
               to_not_ready is not None and to_not_ready <= within),
        Figure(scenario, "restore to /ready 200", _s(to_ready), "", f"<= {READY_AGAIN:g} s",
               to_ready is not None and to_ready <= READY_AGAIN),
    ]  # fmt: skip


async def redis_fault(env: BenchEnv, sizes: Sizes, mode: str) -> list[Figure]:
    """Redis cut or silenced with an SSE client following chats: nothing lost, nothing twice."""
    scenario = "redis " + ("stops" if mode == "cut" else "silent")
    duration = sizes.cut if mode == "cut" else sizes.silence
    rig = await Rig(env, f"redis-{mode}").start()
    sse = SseClient(rig)
    chats = Chats(rig, sizes.chat_pace)
    try:
        assert rig.redis is not None
        sse.start()
        await asyncio.wait_for(sse.connected.wait(), 10)
        chats.start()
        await asyncio.sleep(sizes.before)
        fault_at = _now()
        chats.phase = "during"
        if mode == "cut":
            await rig.redis.cut()
        else:
            rig.redis.silence()
        ready_503 = asyncio.create_task(rig.wait_ready(duration, status=503, interval=0.1))
        await asyncio.sleep(duration)
        restored_at = _now()
        chats.phase = "after"
        await rig.redis.restore()
        ready_at = await rig.wait_ready(30)
        not_ready_at = await ready_503
        await asyncio.sleep(sizes.after)
        await chats.stop()
        await _delivered(sse, chats, sizes.settle)
        await sse.stop()
    finally:
        await sse.stop()
        await rig.close()
    t = tally(chats.published, sse.deliveries, sse.resets)
    told = [when for when, code in sse.errors if when >= fault_at]
    reopened = [when for when in sse.opened if when >= restored_at]
    figures = _event_figures(scenario, t, chats, sse)
    slowest = chats.slowest.get("during")
    figures += [
        Figure(scenario, "slowest chat during the fault", _ms(slowest), "ms", f"<= {SLACK:g} s (never blocks)",
               slowest is not None and slowest <= SLACK),
        Figure(scenario, "fault to /ready 503", _s(None if not_ready_at is None else not_ready_at - fault_at), "",
               f"<= {DEADLINE + SLACK:g} s", not_ready_at is not None and not_ready_at - fault_at <= DEADLINE + SLACK),
        Figure(scenario, "fault to the stream's error event", _s(told[0] - fault_at if told else None)),
        Figure(scenario, "restore to /ready 200", _s(None if ready_at is None else ready_at - restored_at), "",
               f"<= {READY_AGAIN:g} s", ready_at is not None and ready_at - restored_at <= READY_AGAIN),
        Figure(scenario, "restore to the stream open again", _s(reopened[0] - restored_at if reopened else None),
               "", f"<= {DEFAULTS.events_reconnect_max_seconds + 2 + SLACK:g} s" if told else "",
               (bool(reopened) and reopened[0] - restored_at <= DEFAULTS.events_reconnect_max_seconds + 2 + SLACK)
               if told else None),
    ]  # fmt: skip
    return figures


async def redis_replaced(env: BenchEnv, sizes: Sizes) -> list[Figure]:
    """The history is lost while the client is away (this run's keys deleted): resume says ``reset``."""
    scenario = "redis replaced"
    rig = await Rig(env, "redis-replaced").start()
    sse = SseClient(rig)
    chats = Chats(rig, sizes.chat_pace)
    try:
        sse.start()
        await asyncio.wait_for(sse.connected.wait(), 10)
        for _ in range(5):
            await chats.one()
        await _delivered(sse, chats, sizes.settle)
        await sse.stop()  # the client goes away
        chats.phase = "during"
        for _ in range(5):  # published while it is away, then lost with the history
            await chats.one()
        await asyncio.sleep(0.3)  # let the publisher write them
        deleted = await _delete_keys(env.redis_url, rig.prefix + "events:*")
        chats.phase = "after"
        for _ in range(5):
            await chats.one()
        await asyncio.sleep(0.3)
        sse.start()  # resume from the last id seen
        for _ in range(5):
            await chats.one()
        await _delivered(sse, chats, min(sizes.settle, 5.0))
        await sse.stop()
    finally:
        await sse.stop()
        await rig.close()
    t = tally(chats.published, sse.deliveries, sse.resets)
    resumed = sse.opened[-1] if len(sse.opened) > 1 else None
    after_resume = [when for _, when in sse.deliveries if resumed is not None and when >= resumed]
    reset_first = bool(sse.resets) and (not after_resume or sse.resets[0] <= after_resume[0])
    figures = _event_figures(scenario, t, chats, sse)
    figures[0] = Figure(scenario, "chats: seen / while away / after the loss",
                        f"{chats.phases['before']} / {chats.phases['during']} / {chats.phases['after']}",
                        goal="all answered", ok=chats.failed == 0)
    figures.insert(1, Figure(scenario, "history keys deleted", deleted))
    figures.append(Figure(scenario, "reset came first on resume", "yes" if reset_first else "no", goal="yes",
                          ok=reset_first))
    return figures


async def shutdown(env: BenchEnv, sizes: Sizes) -> list[Figure]:
    """SIGTERM with an event stream, a long streamed chat and light load: a word to each, a bounded stop."""
    scenario = "shutdown"
    drain, timeout, flush = 1.0, 3.0, 2.0
    bound = shutdown_total(Settings(drain_seconds=drain, shutdown_timeout=timeout, shutdown_flush_seconds=flush))
    rig = await Rig(env, "shutdown").start(
        TENTACULO_DRAIN_SECONDS=str(drain), TENTACULO_SHUTDOWN_TIMEOUT=str(timeout),
        TENTACULO_SHUTDOWN_FLUSH_SECONDS=str(flush), TENTACULO_MOCK_DELAY_MS="100",
    )  # fmt: skip
    assert rig.gateway is not None
    sse = SseClient(rig, reconnect=False)
    load = Load(rig, stop_on_refusal=True)
    chat_cid = rig.cid("long-")
    try:
        sse.start()
        await asyncio.wait_for(sse.connected.wait(), 10)
        load.start(Sizes(clients=2, pace=0.1, tokens_pace=1.0), None)
        chat = await rig.http.post(
            f"{rig.url}{CHAT}", headers={**rig.admin, "X-Correlation-ID": chat_cid},
            json={"message": "a long answer", "provider": "mock", "stream": True,
                  "metadata": {"mock": {"words": sizes.shutdown_words}}},
        )  # fmt: skip
        await chat.content.readuntil(b"event: delta")
        await asyncio.sleep(sizes.before / 2)
        signalled = _now()
        rig.gateway.popen.send_signal(signal.SIGTERM)
        chat_rest = (await chat.content.read()).decode()
        code = await asyncio.to_thread(rig.gateway.popen.wait, bound + 30)
        stopped_in = _now() - signalled
        await load.stop()
        await asyncio.wait_for(sse.stop(), 10)
        answered = load.answered() + 1  # the long chat has its row too
        rows, extra, _, _ = await rig.audit_rows(answered, 2.0)
        conn = await env.db()
        try:
            chat_row = await conn.fetchval("SELECT status FROM copilot_actions_log WHERE correlation_id = $1", chat_cid)
        finally:
            await conn.close()
    finally:
        await sse.stop()
        await rig.close()
    cut = "event: error" in chat_rest and "shutting_down" in chat_rest and "event: done" not in chat_rest
    return [
        Figure(scenario, "time from SIGTERM to exit (status)", f"{stopped_in:.2f} ({code})", "s",
               f"<= {bound:g} s, status 0", stopped_in <= bound and code == 0),
        Figure(scenario, "event stream got shutdown", "yes" if sse.shutdowns else "no", goal="yes",
               ok=bool(sse.shutdowns)),
        Figure(scenario, "streamed chat got error shutting_down", "yes" if cut else "no", goal="yes", ok=cut),
        Figure(scenario, "chat's action row status", str(chat_row), goal="shutdown", ok=chat_row == "shutdown"),
        Figure(scenario, "requests with an audit row / answered", f"{rows} / {answered}", goal="all",
               ok=rows == answered),
        Figure(scenario, "audit rows written twice", extra, goal="0", ok=extra == 0),
    ]


async def _delete_keys(redis_url: str, pattern: str) -> int:
    """Delete this run's keys matching ``pattern`` (never anything else on a shared server)."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        found = [key async for key in client.scan_iter(match=pattern, count=500)]
        return int(await client.delete(*found)) if found else 0
    finally:
        await client.aclose()


Scenario = Callable[[BenchEnv, Sizes], Awaitable[list[Figure]]]
SCENARIOS: dict[str, Scenario] = {
    "postgres-stops": lambda env, sizes: postgres_fault(env, sizes, "cut"),
    "postgres-silent": lambda env, sizes: postgres_fault(env, sizes, "silence"),
    "redis-stops": lambda env, sizes: redis_fault(env, sizes, "cut"),
    "redis-silent": lambda env, sizes: redis_fault(env, sizes, "silence"),
    "redis-replaced": redis_replaced,
    "shutdown": shutdown,
}


def table(figures: list[Figure]) -> str:
    """The chaos table: each figure with the promise it is held to, ok or BROKEN."""
    return figures_table(figures, goal="promise", failed="BROKEN")


async def run(selected: list[str], sizes: Sizes) -> tuple[list[Figure], bool]:
    """Run the scenarios; their figures, and whether any scenario itself failed."""
    env = BenchEnv(redis_prefix=f"tentaculo-chaos-{uuid.uuid4().hex[:8]}:")
    figures: list[Figure] = []
    failed = False
    try:
        await env.setup()
        figures, failed = await each_scenario(selected, lambda name: SCENARIOS[name](env, sizes), "chaos")
    finally:
        with contextlib.suppress(Exception):
            if env.redis_url:
                await _delete_keys(env.redis_url, env.redis_prefix + "*")
        await env.close()
        if not failed:  # the gateways' logs are kept only when a scenario failed
            shutil.rmtree(env.workdir, ignore_errors=True)
    return figures, failed


async def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("--")] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = _now()
    figures, failed = await run(names, QUICK if quick else Sizes())
    print()
    print(f"tentaculo chaos on {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{_now() - started:.0f} s in all")
    print(table(figures))
    broken = [f for f in figures if f.ok is False]
    return 1 if failed or broken else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))

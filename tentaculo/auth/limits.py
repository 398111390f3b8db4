"""Rate limits: failed authentications per client address, and request budgets per token.

Both count with GCRA (the generic cell rate algorithm): one number per key, the theoretical
arrival time of the next request, so a limit is "a burst of B, then R per second". The count is
shared by every instance through Redis (one Lua script call, keys under the Redis prefix with a
TTL of at most one burst period). When Redis cannot be reached, each instance counts in memory
on its own (bounded; ``/ready`` says ``degraded``) and goes back to Redis by itself once it
answers again: a limit is never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tentaculo.health import Status
from tentaculo.http.errors import Problem, failure_reason
from tentaculo.http.trusted import TrustedProxies

log = structlog.get_logger("tentaculo.limits")

REDIS_FAILURES = (RedisError, OSError, TimeoutError)
# Keys counted in memory while Redis is away, and addresses remembered as blocked. Past it, a new
# key is refused rather than an old one forgotten: a full table never lets a client off.
LOCAL_MAX_KEYS = 100_000
# How often an instance counting on its own asks Redis whether it is back.
RECOVERY_SECONDS = 1.0
DEGRADED_REASON = "Redis unreachable: limiting per instance"
# How often lapsed blocks are dropped from the table every request checks while it is non-empty.
SWEEP_SECONDS = 1.0

# KEYS[1]: the key. ARGV: emission interval (ms), burst. Returns {allowed, remaining, retry
# after (ms), reset after (ms)}. Server time, so every instance counts alike whatever its clock.
# A refused call does not move the key: what is refused costs the client nothing more.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, math.ceil(allow_at - now), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, math.floor((now - allow_at) / interval), 0, math.ceil(new_tat - now)}
"""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One counted request: allowed or not, what is left of the burst, and when to come back (seconds)."""

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after)))


@dataclass(frozen=True, slots=True)
class BudgetFigures:
    """What the ``RateLimit-*`` headers tell a token with a budget: its limit, what is left, when it is full again."""

    limit: int
    remaining: int
    reset: int


def budget_key(token_id: int | None) -> str:
    """The counter key of a token's budget of requests."""
    return f"limits:token:{token_id}"


def budget_exceeded(limit: int, verdict: Verdict) -> Problem:
    """The 429 for a token whose budget of requests per minute is spent."""
    return Problem(
        "rate_limited",
        f"this token's budget of {limit} requests per minute is spent; try again in {verdict.retry_after_header} s",
        headers={"Retry-After": verdict.retry_after_header},
    )


class LocalGcra:
    """The same GCRA in this process's memory, for at most ``max_keys`` keys."""

    def __init__(self, *, max_keys: int = LOCAL_MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self._tat: dict[str, float] = {}
        self._max_keys = max_keys
        self._clock = clock

    def __len__(self) -> int:
        return len(self._tat)

    def hit(self, key: str, interval: float, burst: int) -> Verdict:
        """Count one request of ``key`` (``interval`` seconds between requests after a ``burst``)."""
        now = self._clock()
        tat = self._tat.get(key)
        if tat is None and len(self._tat) >= self._max_keys:
            self._tat = {k: v for k, v in self._tat.items() if v > now}
            if len(self._tat) >= self._max_keys:
                return Verdict(False, 0, interval, interval)
        tat = max(tat or now, now)
        new_tat = tat + interval
        allow_at = new_tat - burst * interval
        if now < allow_at:
            return Verdict(False, 0, allow_at - now, tat - now)
        self._tat[key] = new_tat
        return Verdict(True, int((now - allow_at) / interval), 0.0, new_tat - now)


class SharedGcra:
    """GCRA counted in Redis; in memory (per instance) while Redis is away, and back by itself."""

    def __init__(self, redis: Redis, prefix: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._script = redis.register_script(_GCRA_LUA)
        self.prefix = prefix
        self.local = LocalGcra(clock=clock)
        self._clock = clock
        # key -> (refused until, full again at), from Redis's last refusal. Nothing is allowed
        # before then (other instances' requests only push it later), so until then a key is
        # refused here without asking Redis: a client far past its limit costs no Redis call.
        self._refused: dict[str, tuple[float, float]] = {}
        self.degraded_since: float | None = None
        self.reason: str | None = None
        self._recovery: asyncio.Task[None] | None = None

    @property
    def status(self) -> Status:
        """``on`` while counting in Redis, ``degraded`` while counting per instance."""
        return "on" if self.degraded_since is None else "degraded"

    async def hit(self, key: str, interval: float, burst: int) -> Verdict:
        """Count one request of ``key``: in Redis, else in this instance's memory."""
        if self.degraded_since is None:
            refused = self._refused.get(key) if self._refused else None
            if refused is not None:
                now = self._clock()
                if now < refused[0]:
                    return Verdict(False, 0, refused[0] - now, max(0.0, refused[1] - now))
                del self._refused[key]
            try:
                allowed, remaining, retry_ms, reset_ms = await self._script(
                    keys=[self.prefix + key], args=[interval * 1000, burst]
                )
            except REDIS_FAILURES as exc:
                self._degrade(exc)
            else:
                verdict = Verdict(bool(allowed), int(remaining), retry_ms / 1000, reset_ms / 1000)
                if not allowed:
                    self._remember_refusal(key, verdict)
                return verdict
        return self.local.hit(key, interval, burst)

    def _remember_refusal(self, key: str, verdict: Verdict) -> None:
        now = self._clock()
        if len(self._refused) >= LOCAL_MAX_KEYS:
            self._refused = {k: v for k, v in self._refused.items() if v[0] > now}
            if len(self._refused) >= LOCAL_MAX_KEYS:
                return
        self._refused[key] = (now + verdict.retry_after, now + verdict.reset_after)

    def redis_unreachable(self, reason: str) -> None:
        """Another check found Redis away: count per instance now rather than at the next failed call."""
        if self.degraded_since is None:
            self._degrade(reason)

    def _degrade(self, exc: BaseException | str) -> None:
        self.degraded_since = time.monotonic()
        self.reason = DEGRADED_REASON
        error = exc if isinstance(exc, str) else failure_reason(exc)
        log.warning("limits_degraded", reason=DEGRADED_REASON, error=error)
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(), name="limits-recovery")

    async def _recover(self) -> None:
        """Ping Redis until it answers, then count there again (memory counts are dropped)."""
        while True:
            await asyncio.sleep(RECOVERY_SECONDS)
            try:
                await self._redis.ping()
            except REDIS_FAILURES:
                continue
            self.degraded_since, self.reason = None, None
            self.local = LocalGcra(clock=self._clock)
            self._refused.clear()
            log.info("limits_recovered")
            return

    async def close(self) -> None:
        """Stop the recovery task, if one runs."""
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery


def client_address(request: web.Request, trusted: TrustedProxies) -> str:
    """The address a limit counts: the peer, or, behind trusted proxies, the nearest hop not trusted.

    ``X-Forwarded-For`` is read from the right (the entry our own proxy appended) and each hop is
    believed only while the one that handed it over is trusted, so a client cannot pick its own
    address by sending the header. An IPv6 client is counted by its /64, which one subscriber holds
    (an IPv4 address mapped into IPv6 by a dual-stack socket counts as itself).
    """
    address = request.remote or ""
    if address in trusted:
        hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", ()) for h in v.split(",")]
        for hop in reversed(hops):
            if address not in trusted or not _is_ip(hop):
                break
            address = hop
    if ":" in address:
        try:
            ip = ipaddress.IPv6Address(address)
        except ValueError:
            return address
        if ip.ipv4_mapped is not None:  # an IPv4 client seen through a dual-stack socket
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class AuthFailureLimiter:
    """Failed authentications per client address: a burst, then a rate; past it, 429 before any token check.

    A blocked address is remembered in memory until its ``Retry-After`` passes, and refused before
    its token is looked at, so guessing cannot go on; an address that never failed pays one
    dictionary check. Another instance learns of a block at that address's next failure there.
    """

    def __init__(self, counter: SharedGcra, *, burst: int, rate: float, trusted: TrustedProxies,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.counter = counter
        self.burst = burst
        self.interval = 1.0 / rate
        self.trusted = trusted
        self.blocked: dict[str, float] = {}
        self._clock = clock
        self._sweep_at = 0.0

    def check(self, request: web.Request) -> None:
        """Raise 429 when the request's address is blocked (call only while ``blocked`` is non-empty)."""
        now = self._clock()
        if now >= self._sweep_at:
            # Lapsed blocks go, so once an attack stops every request is back to the empty-dict test.
            self.blocked = {k: v for k, v in self.blocked.items() if v > now}
            self._sweep_at = now + SWEEP_SECONDS
            if not self.blocked:
                return
        address = client_address(request, self.trusted)
        until = self.blocked.get(address)
        if until is None:
            return
        left = until - now
        if left <= 0:
            del self.blocked[address]
            return
        raise _too_many_failures(left)

    async def failed(self, request: web.Request) -> None:
        """Count a failed authentication; raise 429 when the address is past its limit."""
        address = client_address(request, self.trusted)
        verdict = await self.counter.hit("limits:auth:" + address, self.interval, self.burst)
        if verdict.allowed:
            return
        now = self._clock()
        if len(self.blocked) >= LOCAL_MAX_KEYS:
            self.blocked = {k: v for k, v in self.blocked.items() if v > now}
        if len(self.blocked) < LOCAL_MAX_KEYS:
            self.blocked[address] = now + verdict.retry_after
        log.info("auth_failures_limited", client=address, retry_after_s=round(verdict.retry_after, 3))
        raise _too_many_failures(verdict.retry_after)

    def readiness(self) -> dict[str, Any]:
        """The ``auth_limiter`` check of ``/ready``."""
        return {"status": self.counter.status, "reason": self.counter.reason, "blocked": len(self.blocked)}


def _too_many_failures(retry_after: float) -> Problem:
    seconds = max(1, math.ceil(retry_after))
    return Problem(
        "rate_limited",
        f"too many failed authentications from this address; try again in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )

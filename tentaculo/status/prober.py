"""ServiceProber: the health of the VX11 modules, checked in the background for the ServiceRegistry.

The prober checks every enabled module that has an address, all at once, every
``TENTACULO_PROBE_INTERVAL_SECONDS``, each check bounded by ``TENTACULO_PROBE_CONNECT_TIMEOUT``
and ``TENTACULO_PROBE_TIMEOUT``. An ``http(s)://`` module is asked ``GET <address><health path>``;
a ``redis(s)://`` one is sent ``PING``. Verdicts, in the contract's enum:

* ``off``: disabled in ``service_configs``, or no address ("not configured"). Never probed.
* ``error``: no answer (refused, unreachable, timed out), or the module says it is failing.
* ``degraded``: it answers, but not well: a non-2xx health answer, a body saying
  ``degraded``, or an answer slower than ``TENTACULO_PROBE_SLOW_MS``.
* ``on``: a timely 2xx (a JSON body's ``status``, when present, says it is fine).

A module that is never probed (disabled, not configured, this gateway, the gateway's own Redis) is
reported by the registry alone (see ``services``). Each result goes to ``registry.record_probe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import aiohttp
import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError, TimeoutError as RedisTimeoutError

from tentaculo.health import shorten
from tentaculo.http.errors import connect_reason
from tentaculo.status.services import REASON_MAX, Probe, ServiceConfig, ServiceEntry, ServiceRegistry
from tentaculo.tasks import Periodic

log = structlog.get_logger("tentaculo.services")

MAX_HEALTH_BODY = 64 * 1024
# What a module's JSON health body may say in "status", and the verdict each means.
_HEALTHY = frozenset({"on", "ok", "up", "healthy", "pass", "passing", "ready", "running", "green", "alive"})
_DEGRADED = frozenset({"degraded", "warn", "warning", "partial", "yellow", "slow"})
_FAILING = frozenset({"error", "down", "fail", "failing", "failed", "unhealthy", "red", "critical"})
_OFF = frozenset({"off", "disabled", "maintenance"})


def _verdict_of_body(body: bytes) -> tuple[str, str | None] | None:
    """What a JSON health body says about itself: (status, reason), or None when it says nothing."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        return None
    said = data["status"].strip().lower()
    detail = data.get("reason") or data.get("detail") or data.get("message")
    detail = shorten(detail, REASON_MAX) if isinstance(detail, str) and detail.strip() else None
    if said in _HEALTHY:
        return "on", None
    label = shorten(data["status"], REASON_MAX)
    if said in _DEGRADED:
        return "degraded", f"reports {label!r}" + (f": {detail}" if detail else "")
    if said in _FAILING:
        return "error", f"reports {label!r}" + (f": {detail}" if detail else "")
    if said in _OFF:
        return "off", f"reports {label!r}" + (f": {detail}" if detail else "")
    return "degraded", f"reports an unknown status {label!r}"


class ServiceProber:
    """Checks every enabled, configured module concurrently, in rounds; see the module docstring."""

    def __init__(
        self,
        registry: ServiceRegistry,
        http: aiohttp.ClientSession,
        *,
        interval: float,
        connect_timeout: float,
        timeout: float,
        slow_ms: float,
    ) -> None:
        self.registry = registry
        self._http = http
        self.interval = interval
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.slow_ms = slow_ms
        self.rounds = 0
        self.last_round_ms: float | None = None
        self._first_round = asyncio.Event()
        # A round every ``interval`` from its start, and one at once when the configuration changes.
        self._probing = Periodic("service-prober", self._round, interval, wake=registry.changed, at_once=True,
                                 steady=True)

    async def start(self, wait: float = 1.0) -> None:
        """Start probing; wait up to ``wait`` s for the first round so status starts out known."""
        self._probing.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._first_round.wait()

    async def close(self) -> None:
        await self._probing.stop()

    async def _round(self) -> None:
        started = time.perf_counter()
        await self.probe_all()
        self.rounds += 1
        self.last_round_ms = round((time.perf_counter() - started) * 1000, 3)
        self._first_round.set()
        self.registry.refresh()

    async def probe_all(self) -> None:
        """Check every module the registry says to, all at once."""
        targets = self.registry.probe_targets()
        if targets:
            await asyncio.gather(*(self._probe_one(entry) for entry in targets))

    async def _probe_one(self, entry: ServiceEntry) -> None:
        config = entry.config
        probe = await self.check(config)
        self.registry.record_probe(entry, config, probe)

    async def check(self, config: ServiceConfig) -> Probe:
        """One health check of ``config``'s module, bounded in time; never raises (but on cancel)."""
        assert config.address is not None
        started = time.perf_counter()
        limit = self.connect_timeout + self.timeout
        try:
            async with asyncio.timeout(limit):
                if config.address.startswith(("redis://", "rediss://")):
                    status, reason, http_status = await self._ping_redis(config.address)
                else:
                    status, reason, http_status = await self._get_health(config)
        except asyncio.CancelledError:
            raise
        except aiohttp.ConnectionTimeoutError:
            status, reason, http_status = "error", f"unreachable: no connection within {self.connect_timeout:g} s", None
        except aiohttp.ServerTimeoutError:
            status, reason, http_status = "error", f"no answer within {self.timeout:g} s", None
        except TimeoutError:
            status, reason, http_status = "error", f"no answer within {limit:g} s", None
        except aiohttp.ClientSSLError:  # before its base class: its errno says nothing useful
            status, reason, http_status = "error", "failed the TLS handshake", None
        except aiohttp.ClientConnectorError as exc:
            status, reason, http_status = "error", f"unreachable: {connect_reason(exc)}", None
        except (aiohttp.ClientError, OSError, RedisError) as exc:
            status, reason, http_status = "error", shorten(f"health check failed: {type(exc).__name__}", REASON_MAX), None
        except Exception:  # isolation boundary: one odd module must not stop the round
            log.exception("service_probe_error", service=config.name)
            status, reason, http_status = "error", "health check failed unexpectedly", None
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        if status == "on" and latency_ms > self.slow_ms:
            status, reason = "degraded", f"slow: answered in {latency_ms:.0f} ms (over {self.slow_ms:g} ms)"
        answered = status != "error" or http_status is not None
        return Probe(status, reason, latency_ms if answered else None, datetime.now(UTC), http_status)

    async def _get_health(self, config: ServiceConfig) -> tuple[str, str | None, int | None]:
        assert config.address is not None
        url = config.address.rstrip("/") + config.health_path
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.timeout)
        async with self._http.get(url, timeout=timeout, allow_redirects=False,
                                  headers={"Accept": "application/json"}) as resp:
            body = await resp.content.read(MAX_HEALTH_BODY)
            said = _verdict_of_body(body)
            if not 200 <= resp.status < 300:
                reason = f"health check answered HTTP {resp.status}"
                if said is not None and said[1]:
                    reason += f" ({said[1]})"
                return "degraded", reason, resp.status
            if said is None:
                return "on", None, resp.status
            return said[0], said[1], resp.status

    async def _ping_redis(self, address: str) -> tuple[str, str | None, int | None]:
        client = Redis.from_url(address, socket_connect_timeout=self.connect_timeout, socket_timeout=self.timeout,
                                retry=Retry(NoBackoff(), 0))
        try:
            await client.ping()
        except AuthenticationError:
            return "degraded", "answers but refuses the configured credentials", None
        except RedisTimeoutError:
            return "error", f"timed out (connect {self.connect_timeout:g} s, answer {self.timeout:g} s)", None
        except ResponseError as exc:
            return "degraded", shorten(f"answers PING with an error: {exc}", REASON_MAX), None
        except (OSError, RedisError) as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                return "error", f"unreachable: {connect_reason(cause)}", None
            return "error", shorten(f"unreachable: {type(exc).__name__}", REASON_MAX), None
        finally:
            await client.aclose()
        return "on", None, None

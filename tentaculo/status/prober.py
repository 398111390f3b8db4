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

from tentaculo.health import Health, shorten
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


def _verdict_of_body(body: bytes) -> Health | None:
    """What a JSON health body says about itself, or None when it says nothing."""
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
        return Health.ON
    label = shorten(data["status"], REASON_MAX)
    if said in _DEGRADED:
        return Health("degraded", f"reports {label!r}" + (f": {detail}" if detail else ""))
    if said in _FAILING:
        return Health("error", f"reports {label!r}" + (f": {detail}" if detail else ""))
    if said in _OFF:
        return Health("off", f"reports {label!r}" + (f": {detail}" if detail else ""))
    return Health("degraded", f"reports an unknown status {label!r}")


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
        http_status: int | None = None
        try:
            async with asyncio.timeout(limit):
                if config.address.startswith(("redis://", "rediss://")):
                    health = await self._ping_redis(config.address)
                else:
                    health, http_status = await self._get_health(config)
        except asyncio.CancelledError:
            raise
        except aiohttp.ConnectionTimeoutError:
            health = Health("error", f"unreachable: no connection within {self.connect_timeout:g} s")
        except aiohttp.ServerTimeoutError:
            health = Health("error", f"no answer within {self.timeout:g} s")
        except TimeoutError:
            health = Health("error", f"no answer within {limit:g} s")
        except aiohttp.ClientSSLError:  # before its base class: its errno says nothing useful
            health = Health("error", "failed the TLS handshake")
        except aiohttp.ClientConnectorError as exc:
            health = Health("error", f"unreachable: {connect_reason(exc)}")
        except (aiohttp.ClientError, OSError, RedisError) as exc:
            health = Health("error", shorten(f"health check failed: {type(exc).__name__}", REASON_MAX))
        except Exception:  # isolation boundary: one odd module must not stop the round
            log.exception("service_probe_error", service=config.name)
            health = Health("error", "health check failed unexpectedly")
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        if health.ok and latency_ms > self.slow_ms:
            health = Health("degraded", f"slow: answered in {latency_ms:.0f} ms (over {self.slow_ms:g} ms)")
        answered = health.status != "error" or http_status is not None
        return Probe(health, latency_ms if answered else None, datetime.now(UTC), http_status)

    async def _get_health(self, config: ServiceConfig) -> tuple[Health, int | None]:
        """What ``GET <address><health path>`` says, and its HTTP status."""
        assert config.address is not None
        url = config.address.rstrip("/") + config.health_path
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.timeout)
        async with self._http.get(url, timeout=timeout, allow_redirects=False,
                                  headers={"Accept": "application/json"}) as resp:
            body = await resp.content.read(MAX_HEALTH_BODY)
            said = _verdict_of_body(body)
            if not 200 <= resp.status < 300:
                reason = f"health check answered HTTP {resp.status}"
                if said is not None and said.reason:
                    reason += f" ({said.reason})"
                return Health("degraded", reason), resp.status
            return (said if said is not None else Health.ON), resp.status

    async def _ping_redis(self, address: str) -> Health:
        client = Redis.from_url(address, socket_connect_timeout=self.connect_timeout, socket_timeout=self.timeout,
                                retry=Retry(NoBackoff(), 0))
        try:
            await client.ping()
        except AuthenticationError:
            return Health("degraded", "answers but refuses the configured credentials")
        except RedisTimeoutError:
            return Health("error", f"timed out (connect {self.connect_timeout:g} s, answer {self.timeout:g} s)")
        except ResponseError as exc:
            return Health("degraded", shorten(f"answers PING with an error: {exc}", REASON_MAX))
        except (OSError, RedisError) as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                return Health("error", f"unreachable: {connect_reason(cause)}")
            return Health("error", shorten(f"unreachable: {type(exc).__name__}", REASON_MAX))
        finally:
            await client.aclose()
        return Health.ON

"""ServiceRegistry: the VX11 modules behind the gateway, their configuration and live state.

Their health is checked by the ServiceProber (``prober``), which hands each result to the registry.

Configuration
-------------
Modules are the rows of ``service_configs`` (name, role, base address, health path, enabled).
``TENTACULO_SERVICE_<NAME>_URL`` overrides a row's address (a dash in the name becomes ``_``).
The registry keeps the rows and the topology edges in memory and reloads them every
``TENTACULO_SERVICES_RELOAD_SECONDS``, and at once when a change is announced on the PostgreSQL
channel ``tentaculo_service_configs`` (``tentaculo service set`` does), so modules are added,
changed and disabled without a restart.

Health
------
The prober's checks and verdicts are described in ``prober``; the registry turns its last
result, the module's configuration and its circuit into the effective status.
``tentaculo_link`` is this gateway: it reports from the instance's own state and is never probed;
its latency and check time are those of the instance's last check of PostgreSQL and Redis.
``redis`` with no address of its own is the gateway's Redis (``TENTACULO_REDIS_URL``,
``address_source: "gateway"``): it is not probed again, it shows the instance's own check of that
Redis. On a fresh install the system's Redis is the gateway's, and showing it ``off`` beside the
gateway's working Redis told two stories about one server.
Each module also has a circuit breaker that the reverse proxy drives; an open circuit makes the
module ``error`` and a half-open one ``degraded``. Every change of a module's effective status
(or circuit state) is published as a ``service_status`` event by the instance that saw it.

For the reverse proxy
---------------------
``registry.get(name)`` returns the :class:`ServiceEntry` (``None`` for an unknown module):
``entry.address`` is the base URL to forward to (credentials included: never show or log it;
``entry.public_address`` is the shareable form), ``entry.enabled``, and
``registry.status_of(name)`` the effective :class:`~tentaculo.health.Health`. Before forwarding, ask
``entry.breaker.allow()``; afterwards call ``registry.proxy_succeeded(name)`` or
``registry.proxy_failed(name, reason)`` (or ``registry.proxy_released(name)`` when the call ended
without a verdict), which update the circuit, the status and publish the change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

from tentaculo.chat.registry import CircuitBreaker
from tentaculo.db import DB_FAILURES, queries
from tentaculo.db.listener import ChannelListener
from tentaculo.health import Health, Status, shorten
from tentaculo.http.errors import failure_reason
from tentaculo.settings import Settings, service_key
from tentaculo.status.dependencies import NOT_CHECKED, DependencyCheck
from tentaculo.tasks import Periodic

log = structlog.get_logger("tentaculo.services")

GATEWAY = "tentaculo_link"
SYSTEM_REDIS = "redis"
REASON_MAX = 200


def public_address(address: str | None) -> str | None:
    """``address`` without credentials, query or fragment: what operators may see."""
    if not address:
        return None
    parts = urlsplit(address)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def unconfigured_detail(name: str) -> str:
    """Why module ``name`` cannot be called, and the setting or command that gives it an address."""
    return (f"module {name!r} has no address: set TENTACULO_SERVICE_{service_key(name).upper()}_URL, "
            f"or run `tentaculo service set {name} --url http://HOST:PORT`")


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """One module's configuration as the registry applies it (row + environment override)."""

    name: str
    display_name: str
    role: str
    address: str | None
    address_source: str | None  # "env", "database", "instance" (this gateway) or None
    health_path: str
    enabled: bool
    description: str
    shown_address: str | None = None  # ``address`` without credentials (computed once)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shown_address", public_address(self.address))

    @property
    def probe_key(self) -> tuple[str | None, str, bool]:
        """What a health result depends on: a change of any of these makes the last result stale."""
        return (self.address, self.health_path, self.enabled)


@dataclass(frozen=True, slots=True)
class Probe:
    """One health check's outcome."""

    health: Health
    latency_ms: float | None
    checked_at: datetime
    http_status: int | None = None


class ServiceEntry:
    """A module: its configuration, last health result and circuit breaker."""

    __slots__ = ("breaker", "changed_at", "config", "last_proxy_error", "probe", "published")

    def __init__(self, config: ServiceConfig, breaker: CircuitBreaker) -> None:
        self.config = config
        self.probe: Probe | None = None
        self.breaker = breaker
        self.last_proxy_error: str | None = None
        self.published: tuple[Status, str] | None = None  # (status, circuit) last told to on_status_change
        self.changed_at: datetime | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def address(self) -> str | None:
        """The base URL to forward to; may hold credentials: never show or log it."""
        return self.config.address

    @property
    def public_address(self) -> str | None:
        return self.config.shown_address

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def probed(self) -> bool:
        """Whether the prober checks this module."""
        c = self.config
        return c.enabled and c.address is not None and c.name != GATEWAY and c.address_source != "gateway"


@dataclass(frozen=True, slots=True)
class Edge:
    """A dependency between two modules."""

    source: str
    target: str
    kind: str


StatusCallback = Callable[[Mapping[str, Any]], Any]


class ServiceRegistry:
    """The modules of ``service_configs`` with their live state; see the module docstring."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        self_status: Callable[[], Health] = lambda: Health.ON,
        self_check: Callable[[], tuple[float | None, datetime | None]] = lambda: (None, None),
        redis_check: Callable[[], DependencyCheck] = lambda: NOT_CHECKED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self.settings = settings
        self._self_status = self_status
        self._self_check = self_check
        self._redis_check = redis_check
        self._clock = clock
        self._entries: dict[str, ServiceEntry] = {}
        self.edges: list[Edge] = []
        self.loaded_at: datetime | None = None
        self.load_error: str | None = None
        # Set when a configuration change needs a health check now (the prober waits on it).
        self.changed = asyncio.Event()
        self.on_status_change: list[StatusCallback] = []
        self._notified = asyncio.Event()
        # Configuration changes are announced on a channel: reload at once, and after reconnecting.
        self._listener = ChannelListener(settings.database_url, queries.SERVICE_CONFIGS_CHANNEL, self._notified)
        self._reloading = Periodic("service-registry", self._reload_and_listen, settings.services_reload_seconds,
                                   wake=self._notified)
        self._unmatched_warned: set[str] = set()

    # ----------------------------------------------------------------- lifecycle

    async def start(self, wait: float = 5.0) -> None:
        """Load the modules (waiting up to ``wait`` s for PostgreSQL) and keep them fresh in the background."""
        try:
            async with asyncio.timeout(wait):
                await self._listener.ensure()
                await self.reload()
        except DB_FAILURES as exc:
            self._load_failed(exc)
        self._notified.clear()
        self._reloading.start()

    async def close(self) -> None:
        await self._reloading.stop()
        await self._listener.close()

    async def _reload_and_listen(self) -> None:
        try:
            async with asyncio.timeout(10):
                await self.reload()
        except DB_FAILURES as exc:
            self._load_failed(exc)
        await self._listener.ensure()  # the periodic reload carries on while it cannot

    def _load_failed(self, exc: BaseException) -> None:
        reason = shorten(failure_reason(exc), REASON_MAX)
        if self.load_error is None:
            log.warning("services_reload_failed", error=reason, keeping=len(self._entries))
        self.load_error = reason

    # ----------------------------------------------------------------- configuration

    async def reload(self) -> None:
        """Read ``service_configs`` and ``topology_edges`` and apply them."""
        async with self._pool.acquire() as conn:
            rows = await queries.list_service_configs(conn)
            edges = await queries.list_topology_edges(conn)
        self.apply([self._config(row) for row in rows], [Edge(e["source"], e["target"], e["kind"]) for e in edges])
        if self.load_error is not None:
            log.info("services_reload_recovered")
        self.load_error = None
        self.loaded_at = datetime.now(UTC)

    def _config(self, row: Mapping[str, Any]) -> ServiceConfig:
        name = row["name"]
        override = self.settings.service_urls.get(service_key(name))
        if override:
            address, source = override, "env"
        elif row["base_url"]:
            address, source = row["base_url"], "database"
        elif name == GATEWAY:
            address, source = f"http://{self.settings.host}:{self.settings.port}", "instance"
        elif name == SYSTEM_REDIS and self.settings.redis_sentinels:
            # Shown (the first sentinel), never dialled: the gateway's own check stands for it.
            first = self.settings.redis_sentinels[0]
            address, source = f"redis+sentinel://{first}/{self.settings.redis_sentinel_master}", "gateway"
        elif name == SYSTEM_REDIS and self.settings.redis_url:
            address, source = self.settings.redis_url, "gateway"
        else:
            address, source = None, None
        path = row["health_path"] or "/health"
        return ServiceConfig(
            name=name,
            display_name=row["display_name"],
            role=row["role"],
            address=address,
            address_source=source,
            health_path=path if path.startswith("/") else "/" + path,
            enabled=bool(row["enabled"]),
            description=row["description"] or "",
        )

    def apply(self, configs: Iterable[ServiceConfig], edges: Iterable[Edge]) -> None:
        """Replace the configuration: new modules appear, changed ones are re-checked, removed ones go."""
        fresh = {c.name: c for c in configs}
        needs_probe = False
        for name in list(self._entries):
            if name not in fresh:
                del self._entries[name]
                log.info("service_removed", service=name)
        for name, config in fresh.items():
            entry = self._entries.get(name)
            if entry is None:
                entry = self._entries[name] = ServiceEntry(config, self._breaker())
                needs_probe |= entry.probed
            elif entry.config != config:
                if entry.config.probe_key != config.probe_key:
                    entry.probe = None
                    entry.breaker = self._breaker()
                    entry.last_proxy_error = None
                    needs_probe |= entry.probed
                    log.info("service_reconfigured", service=name, address=config.shown_address,
                             enabled=config.enabled, health_path=config.health_path)
                entry.config = config
            self._observe(entry)
        unmatched = set(self.settings.service_urls) - {service_key(n) for n in fresh} - self._unmatched_warned
        for key in sorted(unmatched):
            log.warning("service_url_for_unknown_module", variable=f"TENTACULO_SERVICE_{key.upper()}_URL")
        self._unmatched_warned |= unmatched
        self.edges = list(edges)
        if needs_probe:
            self.changed.set()

    def _breaker(self) -> CircuitBreaker:
        return CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_reset_seconds, self._clock)

    # ----------------------------------------------------------------- lookups

    def get(self, name: str) -> ServiceEntry | None:
        """The module called ``name`` (for the reverse proxy), or None."""
        return self._entries.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entries(self) -> list[ServiceEntry]:
        """Every module, by name."""
        return [self._entries[n] for n in sorted(self._entries)]

    def probe_targets(self) -> list[ServiceEntry]:
        """The modules the prober checks."""
        return [e for e in self._entries.values() if e.probed]

    def status_of(self, name: str) -> Health:
        """A module's effective health; KeyError for an unknown module."""
        return self._effective(self._entries[name])

    def _effective(self, entry: ServiceEntry) -> Health:
        config = entry.config
        if not config.enabled:
            return Health("off", "disabled in service_configs")
        if config.name == GATEWAY:
            return self._self_status()
        if config.address_source == "gateway":
            check = self._redis_check()
            return Health(check.status, check.reason)
        if config.address is None:
            return Health("off", "not configured")
        state = entry.breaker.state
        if state == "open":
            why = f"circuit open after {entry.breaker.failures} consecutive proxied failures"
            return Health("error", f"{why}: {entry.last_proxy_error}" if entry.last_proxy_error else why)
        probe = entry.probe
        if probe is None:
            return Health("degraded", "health not checked yet")
        if probe.health.ok and state == "half_open":
            return Health("degraded", "circuit half-open: the next proxied call is a trial")
        return probe.health

    # ----------------------------------------------------------------- health and circuit

    def record_probe(self, entry: ServiceEntry, config: ServiceConfig, probe: Probe) -> None:
        """Keep a health result, unless the module was reconfigured while it was being checked."""
        if self._entries.get(config.name) is not entry or entry.config.probe_key != config.probe_key:
            return
        entry.probe = probe
        self._observe(entry)

    def proxy_succeeded(self, name: str) -> None:
        """A proxied call reached the module: close its circuit."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.breaker.success()
            entry.last_proxy_error = None
            self._observe(entry)

    def proxy_failed(self, name: str, reason: str) -> None:
        """A proxied call could not reach the module (refused, timed out, 5xx): count it on the circuit."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.breaker.failure()
            entry.last_proxy_error = shorten(reason, REASON_MAX)
            self._observe(entry)

    def proxy_released(self, name: str) -> None:
        """A proxied call ended without a verdict (the client went away): free the half-open trial."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.breaker.release()

    def refresh(self) -> None:
        """Publish changes that come with time alone (a circuit going half-open, the gateway draining)."""
        for entry in self._entries.values():
            self._observe(entry)

    def _observe(self, entry: ServiceEntry) -> None:
        health = self._effective(entry)
        circuit = entry.breaker.state
        if entry.published == (health.status, circuit):
            return
        if entry.probed and entry.probe is None and circuit == "closed":
            return  # "not checked yet" is a placeholder, not news: the first result is published
        if entry.published is None and not entry.probed:
            # A module that is never probed (off, or this gateway) starts out known: no event.
            entry.published = (health.status, circuit)
            entry.changed_at = datetime.now(UTC)
            return
        previous = entry.published
        entry.published = (health.status, circuit)
        entry.changed_at = datetime.now(UTC)
        probe = entry.probe
        change = {
            "service": entry.name,
            "status": health.status,
            "reason": health.reason,
            "previous_status": previous[0] if previous else None,
            "latency_ms": probe.latency_ms if probe is not None else None,
            "checked_at": probe.checked_at if probe is not None else None,
            "circuit": circuit,
        }
        if previous is not None and previous[0] != health.status:
            log.info("service_status_changed", service=entry.name, status=health.status, reason=health.reason,
                     previous_status=previous[0])
        for callback in list(self.on_status_change):
            try:
                callback(change)
            except Exception:  # isolation boundary: a listener must not break the prober
                log.exception("service_status_callback_failed")

    # ----------------------------------------------------------------- views

    def _checked(self, entry: ServiceEntry) -> tuple[float | None, datetime | None]:
        """(latency in ms, time) of a module's last health check; the gateway's is its own last self-check."""
        if entry.config.name == GATEWAY:
            return self._self_check()
        if entry.config.address_source == "gateway":
            check = self._redis_check()
            return check.latency_ms, check.checked_at
        probe = entry.probe
        return (probe.latency_ms, probe.checked_at) if probe is not None else (None, None)

    def snapshot(self, entry: ServiceEntry) -> dict[str, Any]:
        """One module as ``/operator/api/modules`` shows it (never its credentials)."""
        health = self._effective(entry)
        config, probe = entry.config, entry.probe
        latency_ms, checked_at = self._checked(entry)
        return {
            "name": config.name,
            "display_name": config.display_name,
            "role": config.role,
            "description": config.description,
            "enabled": config.enabled,
            "address": config.shown_address,
            "address_source": config.address_source,
            "health_path": config.health_path,
            "status": health.status,
            "reason": health.reason,
            "latency_ms": latency_ms,
            "checked_at": checked_at,
            "http_status": probe.http_status if probe is not None else None,
            "changed_at": entry.changed_at,
            "circuit": entry.breaker.snapshot(),
        }

    def summary(self) -> list[dict[str, Any]]:
        """Every module's live state in brief (what ``/operator/api/status`` lists), by name."""
        out = []
        for entry in self.entries():
            health = self._effective(entry)
            latency_ms, checked_at = self._checked(entry)
            out.append({
                "name": entry.config.name,
                "role": entry.config.role,
                "enabled": entry.config.enabled,
                "address_source": entry.config.address_source,
                "status": health.status,
                "reason": health.reason,
                "latency_ms": latency_ms,
                "checked_at": checked_at,
                "circuit": entry.breaker.state,
            })
        return out

    def modules(self) -> list[dict[str, Any]]:
        """Every module with its live state, by name."""
        return [self.snapshot(e) for e in self.entries()]

    def topology(self) -> dict[str, Any]:
        """Nodes (modules with live status) and edges, from the configuration last loaded."""
        nodes = []
        for entry in self.entries():
            health = self._effective(entry)
            config = entry.config
            nodes.append({
                "name": config.name,
                "display_name": config.display_name,
                "role": config.role,
                "enabled": config.enabled,
                "status": health.status,
                "reason": health.reason,
                "entrypoint": config.name == GATEWAY,
            })
        edges = [{"source": e.source, "target": e.target, "kind": e.kind} for e in self.edges]
        return {"nodes": nodes, "edges": edges, "entrypoint": GATEWAY}

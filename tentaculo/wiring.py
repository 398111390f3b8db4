"""How the gateway's parts are connected, beside ``create_app`` which calls it: which changes become
events, what each built-in feature's status depends on, and the background chores that tie two
parts together (revoked tokens' streams, tokens' last use).

Every function here knows the real classes on both sides; the parts themselves do not know each
other (the provider registry and the module registry offer hooks, feature flags take checks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from tentaculo.auth.tokens import TokenStore, TokenStoreUnavailable
from tentaculo.chat.registry import ProviderRegistry, StatusChange
from tentaculo.db import DB_FAILURES
from tentaculo.events.fanout import DISABLED
from tentaculo.events.hub import EventHub
from tentaculo.files.sandbox import Sandbox
from tentaculo.health import Health, Status
from tentaculo.http.errors import failure_reason
from tentaculo.status.dependencies import DependencyMonitor
from tentaculo.status.features import Check, FeatureFlags, Flag
from tentaculo.status.services import ServiceRegistry
from tentaculo.tasks import Periodic

log = structlog.get_logger("tentaculo.wiring")

# The severity of a status-change event (service_status, provider_status).
STATUS_SEVERITY: dict[Status, str] = {"on": "info", "off": "info", "degraded": "warning", "error": "error"}


# ----------------------------------------------------------------- changes that become events


def publish_provider_status(hub: EventHub, change: StatusChange) -> bool:
    """Publish a provider registry ``StatusChange`` as ``provider_status``."""
    return hub.publish(
        "provider_status",
        {
            "provider": change.provider,
            "status": change.status,
            "reason": change.reason,
            "circuit": change.circuit,
            "previous_status": change.previous_status,
            "previous_circuit": change.previous_circuit,
        },
        severity=STATUS_SEVERITY.get(change.status, "warning"),
    )


def publish_chat(hub: EventHub, info: Mapping[str, Any]) -> bool:
    """Publish one chat's metadata (``ChatRecord.metadata``, never its text) as ``chat``, under its correlation id."""
    status = info.get("status")
    severity = "error" if status == "error" else "warning" if info.get("degraded") or status == "cancelled" else "info"
    data = {name: value for name, value in info.items() if name != "correlation_id"}
    return hub.publish("chat", data, correlation_id=info.get("correlation_id"), severity=severity)


def publish_service_status(hub: EventHub, change: Mapping[str, Any]) -> bool:
    """Publish a module registry status change as a ``service_status`` event."""
    return hub.publish("service_status", change, severity=STATUS_SEVERITY.get(change["status"], "warning"))


def hook_provider_events(hub: EventHub, registry: ProviderRegistry) -> None:
    """Make the provider registry's status changes and chats events (its ``on_*`` hooks)."""
    registry.on_status_change.append(lambda change: publish_provider_status(hub, change))
    registry.on_chat.append(lambda info: publish_chat(hub, info))


def hook_service_events(hub: EventHub, registry: ServiceRegistry) -> None:
    """Make the module registry's status changes ``service_status`` events."""
    registry.on_status_change.append(lambda change: publish_service_status(hub, change))


def connect_flags(flags: FeatureFlags, hub: EventHub) -> None:
    """Feature flag changes go out as ``feature_toggle`` events and come back from every instance;
    turning ``events`` off ends the open streams."""
    flags.publish = lambda _name, data: hub.publish(
        "feature_toggle", data, severity="warning" if data["status"] != "on" else "info"
    )

    def obey(flag: Flag, previous: Flag | None) -> None:
        if flag.name == "events" and flag.status == "off":
            hub.end_streams(DISABLED)

    flags.on_change.append(obey)
    hub.listeners.append(flags.on_event)


def disconnect_flags(flags: FeatureFlags, hub: EventHub) -> None:
    hub.listeners.remove(flags.on_event)


# ----------------------------------------------------------------- what the built-in features depend on


def describe_failures(items: Iterable[tuple[str, Health]]) -> str:
    """``name status (reason)`` items joined for a reason text."""
    return "; ".join(f"{n} {h.status}" + (f" ({h.reason})" if h.reason else "") for n, h in items)


def events_check(hub: EventHub) -> Check:
    """``events`` is broken while the event hub has lost Redis."""

    def check() -> Health | None:
        if hub.status == "on":
            return None
        return Health("error", f"the event hub is offline: {hub.reason or 'Redis unreachable'}")

    return check


def chat_check(registry: ProviderRegistry) -> Check:
    """``chat`` is broken when no registered provider can answer."""

    def check() -> Health | None:
        states = []
        for name in registry.names():
            slot = registry.get(name)
            if slot is None:
                continue
            health = slot.effective()
            if health.status in ("on", "degraded"):
                return None
            states.append((name, health))
        if not states:
            return Health("error", "no chat provider is installed")
        return Health("error", "no usable chat provider: " + describe_failures(states))

    return check


def database_check(monitor: DependencyMonitor, consequence: str) -> Check:
    """A feature that reads PostgreSQL is ``degraded`` while the dependency monitor cannot reach it."""

    def check() -> Health | None:
        pg = monitor.results["postgresql"]
        if pg.status == "on" or pg.checked_at is None:
            return None
        return Health("degraded", f"PostgreSQL unreachable ({pg.reason}): {consequence}")

    return check


def registry_check(registry: ServiceRegistry) -> Check:
    """``proxy`` is broken while the module configuration could never be read."""

    def check() -> Health | None:
        if registry.loaded_at is None and registry.load_error:
            return Health("error", f"the module configuration could not be read: {registry.load_error}")
        return None

    return check


def sandbox_check(sandbox: Sandbox) -> Check:
    """``file_explorer`` is as its sandbox says (``off`` with no roots)."""

    def check() -> Health | None:
        health = sandbox.health()
        return None if health.ok else health

    return check


def check_builtin_features(flags: FeatureFlags, hub: EventHub, providers: ProviderRegistry,
                           monitor: DependencyMonitor, sandbox: Sandbox) -> None:
    """What ``events``, ``chat``, ``metrics`` and ``file_explorer`` depend on (``proxy``: :func:`registry_check`)."""
    flags.add_check("events", events_check(hub))
    flags.add_check("chat", chat_check(providers))
    flags.add_check("metrics", database_check(monitor, "figures of other instances are missing"))
    flags.add_check("file_explorer", sandbox_check(sandbox))


# ----------------------------------------------------------------- chores between two parts


def revoked_streams_ender(hub: EventHub, tokens: TokenStore, interval: float) -> Periodic:
    """Every ``interval`` seconds, end the open streams whose token was revoked since they opened.

    This catches revocations made on another instance or with ``tentaculo token revoke``; the
    revoking instance ends its own streams at once. ``tokens.is_active`` is the store's cached
    check, so this asks PostgreSQL at most once per token per cache period. While PostgreSQL
    cannot answer, streams are left open and the next round asks again.
    """
    failing = False

    async def sweep() -> None:
        nonlocal failing
        revoked = []
        try:
            for token_id in hub.token_ids():
                if not await tokens.is_active(token_id):
                    revoked.append(token_id)
        except TokenStoreUnavailable:
            if not failing:
                log.warning("revocation_check_failing", reason="the token database is unreachable")
            failing = True
            return
        if failing:
            log.info("revocation_check_recovered")
            failing = False
        if revoked:
            log.info("streams_of_revoked_tokens_ended", streams=hub.end_streams_of(revoked))

    return Periodic("revoked-streams", sweep, interval)


def token_usage_writer(tokens: TokenStore, interval: float) -> Periodic:
    """Every ``interval`` s, one UPDATE sets last_used_at of the tokens used meanwhile."""
    failing = False

    async def write() -> None:
        nonlocal failing
        try:
            await tokens.flush_usage()
        except DB_FAILURES as exc:
            if not failing:
                log.warning("token_usage_not_written", error=failure_reason(exc))
            failing = True
            return
        failing = False

    return Periodic("token-usage", write, interval)

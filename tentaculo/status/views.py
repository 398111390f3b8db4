"""The operator's overview, served from memory: ``/operator/api/status``, ``/modules``, ``/topology``.

Nothing here does I/O: the prober, the service registry, the feature flags, the provider
registry, the audit writer, the event hub and the dependency monitor already know, so these
answer in the same time whether every module is healthy or one hangs.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tentaculo import __version__, keys
from tentaculo.auth.tokens import requires
from tentaculo.health import Status
from tentaculo.http.jsonio import json_response
from tentaculo.status.health_views import audit_check
from tentaculo.status.policies import policies

_TROUBLE = ("degraded", "error")


def _dependencies(app: web.Application) -> dict[str, dict[str, Any]]:
    deps = app[keys.DEPENDENCIES].snapshot()
    schema = app[keys.SCHEMA]
    pg = deps["postgresql"]
    if pg["status"] == "on" and not schema.ok:
        deps["postgresql"] = {**pg, "status": "degraded", "reason": f"schema: {schema.reason}"}
    hub = app[keys.EVENTS].snapshot()
    deps["events"] = {
        "status": hub["status"],
        "reason": hub["reason"] or (f"publishing failing: {hub['publish_error']}" if hub["publish_error"] else None),
        "clients": hub["clients"],
        "queued": hub["publish_queued"],
        "dropped": hub["publish_dropped"],
    }
    if deps["events"]["status"] == "on" and hub["publish_error"]:
        deps["events"]["status"] = "degraded"
    deps["audit"] = audit_check(app)
    return deps


def overall(
    draining: bool,
    services: list[dict[str, Any]],
    features: dict[str, dict[str, Any]],
    providers: list[dict[str, Any]],
    dependencies: dict[str, dict[str, Any]],
) -> tuple[Status, list[str]]:
    """The instance's status and why: ``error`` without PostgreSQL, ``degraded`` while anything
    enabled is failing, ``off`` while draining, else ``on``."""
    if draining:
        return "off", ["draining: the instance is shutting down"]
    reasons = []
    for name, dep in dependencies.items():
        if dep["status"] in _TROUBLE:
            reasons.append(f"{name} {dep['status']}: {dep['reason']}")
    for svc in services:
        # The gateway's own Redis standing in for the system's is told once, as the dependency.
        if svc["enabled"] and svc["status"] in _TROUBLE and svc.get("address_source") != "gateway":
            reasons.append(f"module {svc['name']} {svc['status']}: {svc['reason']}")
    for name, feat in features.items():
        if feat["status"] in _TROUBLE:
            reasons.append(f"feature {name} {feat['status']}: {feat['reason']}")
    for prov in providers:
        if prov["in_chain"] and prov["status"] in _TROUBLE:
            reasons.append(f"provider {prov['name']} {prov['status']}: {prov['reason']}")
    if dependencies["postgresql"]["status"] == "error":
        return "error", reasons
    return ("degraded" if reasons else "on"), reasons


@requires("read")
async def status(request: web.Request) -> web.Response:
    """The whole instance at a glance: services, features, providers, dependencies and policies, from memory."""
    app = request.app
    settings = app[keys.SETTINGS]
    lifecycle = app[keys.LIFECYCLE]
    registry = app[keys.SERVICES]
    services = registry.summary()
    features = app[keys.FEATURES].statuses()
    providers = app[keys.PROVIDERS].snapshot()
    dependencies = _dependencies(app)
    state, reasons = overall(lifecycle.draining, services, features, providers, dependencies)
    return json_response({
        "status": state,
        "reason": "; ".join(reasons) or None,
        "reasons": reasons,
        "version": __version__,
        "instance": settings.instance,
        "uptime_s": round(time.monotonic() - lifecycle.started_monotonic, 3),
        "services": services,
        "features": features,
        "providers": providers,
        "dependencies": dependencies,
        "policies": policies(app),
    })


@requires("read")
async def modules(request: web.Request) -> web.Response:
    """The VX11 modules of ``service_configs`` with their live health."""
    registry = request.app[keys.SERVICES]
    prober = request.app[keys.PROBER]
    return json_response({
        "modules": registry.modules(),
        "loaded_at": registry.loaded_at,
        "load_error": registry.load_error,
        "probe": {
            "interval_s": prober.interval,
            "rounds": prober.rounds,
            "last_round_ms": prober.last_round_ms,
        },
    })


@requires("read")
async def topology(request: web.Request) -> web.Response:
    """Modules as nodes with live status, the edges between them, and the entrypoint."""
    registry = request.app[keys.SERVICES]
    return json_response({**registry.topology(), "loaded_at": registry.loaded_at})

"""Policies as data: every rule the gateway enforces now, with its value and where it comes from.

``policies(app)`` is what ``GET /operator/api/policies`` answers and what ``/operator/api/status``
lists under ``policies``: sections (auth, limits, proxy, chat, events, audit, files, cors, risk)
of stable keys (docs/operations.md, "Policies", names each), each ``{"value", "source"}`` where
``source`` is ``default`` (the shipped value), ``environment`` (a ``TENTACULO_*`` variable changed
it) or ``database`` (a row an admin wrote). Nothing here is a secret or an address: file roots are
told by name, modules by name, secrets only by whether one is set.

Served from memory, like the rest of status. ``publish_change`` tells every instance (and every
open console) that a rule changed, as a ``policy_change`` event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from tentaculo import keys
from tentaculo.auth.confirm import HEADER as CONFIRM_HEADER, Confirmations
from tentaculo.auth.risk import GATEWAY_RULES, LOCKED_DEFAULT_RULES, RiskRules
from tentaculo.auth.tokens import MAX_EXPIRES_IN, MAX_REQUESTS_PER_MINUTE
from tentaculo.settings import Settings, service_key
from tentaculo.status.policy_notices import PolicyNotices
from tentaculo.status.rollup import RETENTION as METRICS_RETENTION
from tentaculo.status.services import GATEWAY

SECTIONS = ("auth", "limits", "proxy", "chat", "events", "audit", "files", "cors", "risk")
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _default(name: str) -> Any:
    f = _FIELDS[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[operator]


def setting_source(settings: Settings, *names: str) -> str:
    """``environment`` when a variable set any of the settings ``names``, or (settings built in code)
    when one differs from its shipped default; ``default`` otherwise."""
    if any(n in settings.from_environment or getattr(settings, n) != _default(n) for n in names):
        return "environment"
    return "default"


def _from(settings: Settings, name: str, value: Any = None) -> dict[str, Any]:
    """One setting as a policy entry (``value`` overrides how it is shown)."""
    return {"value": getattr(settings, name) if value is None else value, "source": setting_source(settings, name)}


def _fixed(value: Any) -> dict[str, Any]:
    return {"value": value, "source": "default"}


def _auth(s: Settings) -> dict[str, Any]:
    return {
        "schemes": _fixed(["X-VX11-Token", "Authorization: Bearer"]),
        "query_string_tokens": _fixed("refused; only event streams accept a short-lived ?ticket="),
        "route_scopes": {"value": [
            {"routes": "GET /health, GET /ready", "scope": "none"},
            {"routes": "GET /metrics", "scope": "none" if s.metrics_public else "read"},
            {"routes": "every other GET and HEAD, proxied GET and HEAD, POST /operator/api/events/ticket",
             "scope": "read"},
            {"routes": "POST /operator/api/chat, /v1/chat/completions, /v1/models", "scope": "chat"},
            {"routes": "proxied calls other than GET and HEAD; WebSocket upgrades outside a module's read-only paths",
             "scope": "operate"},
            {"routes": "/operator/api/tokens, PUT /operator/api/features/{name}, /operator/api/policies/rules",
             "scope": "admin"},
        ], "source": setting_source(s, "metrics_public")},
        "token_expiry": _fixed({"default_s": None, "max_s": MAX_EXPIRES_IN}),
        "token_cache_s": _from(s, "token_cache_seconds"),
        "token_outage_grace_s": _from(s, "token_grace_seconds"),
        "bootstrap_admin_token": {"value": s.admin_token is not None, "source": setting_source(s, "admin_token")},
        "confirmation": _fixed({"header": CONFIRM_HEADER, "ttl_s": 60, "required_for": "high-risk calls",
                                "one_time": True, "bound_to": ["token", "method", "path", "body"]}),
    }


def _limits(s: Settings) -> dict[str, Any]:
    return {
        "auth_failures": {"value": {"burst": s.auth_failure_burst, "per_second": s.auth_failure_rate},
                          "source": setting_source(s, "auth_failure_burst", "auth_failure_rate")},
        "token_requests_per_minute": _fixed({"default": None, "max": MAX_REQUESTS_PER_MINUTE}),
        "event_streams_per_token": _from(s, "events_max_streams_per_token"),
        "event_streams_total": _from(s, "events_max_clients"),
        "body_bytes": _from(s, "max_body_bytes"),
        "proxy_body_bytes": _from(s, "proxy_max_body_bytes"),
        "header_timeout_s": _from(s, "header_timeout"),
        "idle_timeout_s": _from(s, "header_timeout"),
        "body_timeout_s": _from(s, "body_timeout"),
        "body_min_rate_bytes_s": _from(s, "body_min_rate"),
        "connections_per_client": _from(s, "max_connections_per_client"),
    }


def _module(s: Settings, name: str, rules: RiskRules) -> dict[str, Any]:
    key = service_key(name)
    allow = s.service_allow.get(key)
    timeouts = s.service_timeouts.get(key)
    upgrades = s.service_read_upgrades.get(key)
    module_rules = [r.view() for r in rules.for_module(name)]
    return {
        "allow": {"value": None if allow is None else [
            {"methods": sorted(r.methods) if r.methods is not None else "*", "prefixes": list(r.prefixes)}
            for r in allow], "source": "environment" if allow is not None else "default"},
        "read_upgrades": {"value": list(upgrades) if upgrades is not None else [],
                          "source": "environment" if upgrades is not None else "default"},
        "timeouts_s": {"value": {"connect": (timeouts and timeouts.connect) or s.proxy_connect_timeout,
                                 "read": (timeouts and timeouts.read) or s.proxy_read_timeout},
                       "source": "environment" if timeouts is not None
                       else setting_source(s, "proxy_connect_timeout", "proxy_read_timeout")},
        "retries": _from(s, "proxy_retries"),
        "own_credential": {"value": key in s.service_tokens,
                           "source": "environment" if key in s.service_tokens else "default"},
        "risk_rules": {"value": module_rules,
                       "source": rules.source if rules.loaded_at is None
                       else "database" if any(r["source"] == "database" for r in module_rules) else "default"},
    }


def _proxy(s: Settings, modules: list[str], rules: RiskRules) -> dict[str, Any]:
    return {
        "connect_timeout_s": _from(s, "proxy_connect_timeout"),
        "read_timeout_s": _from(s, "proxy_read_timeout"),
        "retries": {"value": {"count": s.proxy_retries, "when": "idempotent calls without a body, before an answer"},
                    "source": setting_source(s, "proxy_retries")},
        "pool": {"value": {"size": s.proxy_pool_size, "per_module": s.proxy_pool_per_module,
                           "wait_s": s.proxy_pool_wait},
                 "source": setting_source(s, "proxy_pool_size", "proxy_pool_per_module", "proxy_pool_wait")},
        "modules": {name: _module(s, name, rules) for name in modules},
    }


def _chat(s: Settings) -> dict[str, Any]:
    return {
        "provider_chain": _from(s, "provider_chain", list(s.provider_chain)),
        "providers_allowed": _from(s, "providers", list(s.providers) or "every installed plugin"),
        "fallback": {"value": {"retries": s.provider_retries, "retry_backoff_s": s.provider_retry_backoff,
                               "rule": "auto walks the chain until one answers, only before the first delta; "
                                       "the mock provider is never an implicit fallback"},
                     "source": setting_source(s, "provider_retries", "provider_retry_backoff")},
        "circuit_breaker": {"value": {"failures": s.breaker_failures, "reset_s": s.breaker_reset_seconds},
                            "source": setting_source(s, "breaker_failures", "breaker_reset_seconds")},
        "time_limits_s": {"value": {"connect": s.provider_connect_timeout, "read": s.provider_read_timeout,
                                    "start": s.provider_start_timeout},
                          "source": setting_source(s, "provider_connect_timeout", "provider_read_timeout",
                                                   "provider_start_timeout")},
        "max_chars": _from(s, "chat_max_chars"),
        "max_messages": _from(s, "chat_max_messages"),
    }


def _events(s: Settings) -> dict[str, Any]:
    return {
        "retention": {"value": {"seconds": s.events_history_seconds, "max_events": s.events_history_max},
                      "source": setting_source(s, "events_history_seconds", "events_history_max")},
        "ticket_lifetime_s": _from(s, "event_ticket_seconds"),
        "ping_s": _from(s, "events_ping_seconds"),
        "client_queue": _from(s, "events_client_queue"),
    }


def _audit(s: Settings) -> dict[str, Any]:
    return {
        "buffer": {"value": {"rows": s.audit_buffer, "batch": s.audit_batch, "flush_s": s.audit_flush_seconds},
                   "source": setting_source(s, "audit_buffer", "audit_batch", "audit_flush_seconds")},
        "retention": _fixed({"audit_logs": "kept until deleted by the operator",
                             "performance_logs_s": METRICS_RETENTION}),
    }


def _files(s: Settings) -> dict[str, Any]:
    return {
        "roots": _from(s, "fs_roots", sorted(s.fs_roots)),  # names only: a host path is never shown
        "list_max": _from(s, "fs_list_max"),
    }


def _risk(rules: RiskRules) -> dict[str, Any]:
    table = [r.view() for r in rules.rules]
    if rules.loaded_at is None:  # the shipped rules stand in: say so, and why
        source = rules.source
    else:
        source = "database" if any(r["source"] == "database" for r in table) else "default"
    return {
        "rules": {"value": table, "source": source},
        "locked_floor": _fixed([r.view() for r in LOCKED_DEFAULT_RULES]),
        "gateway_rules": _fixed([r.view() for r in GATEWAY_RULES]),
        "evaluation": _fixed("a call's risk is the highest of the rules matching it (none: low); low passes, "
                             "medium passes and publishes operator_action, high waits for a confirmation"),
        "loaded_at": _fixed(rules.loaded_at),
        "load_error": _fixed(rules.load_error),
    }


def policies(app: Mapping[Any, Any]) -> dict[str, Any]:
    """Every section of the gateway's policies, from memory."""
    settings: Settings = app[keys.SETTINGS]
    rules: RiskRules = app[keys.RISK_RULES]
    modules = [e.name for e in app[keys.SERVICES].entries() if e.name != GATEWAY]
    return {
        "auth": _auth(settings),
        "limits": _limits(settings),
        "proxy": _proxy(settings, modules, rules),
        "chat": _chat(settings),
        "events": _events(settings),
        "audit": _audit(settings),
        "files": _files(settings),
        "cors": {"origins": _from(settings, "cors_origins", list(settings.cors_origins))},
        "risk": _risk(rules),
    }


def publish_change(app: web.Application, what: str, change: str, data: Mapping[str, Any]) -> None:
    """Tell every instance and open console that a policy changed (``policy_change``)."""
    app[keys.EVENTS].publish("policy_change", {"what": what, "change": change, **data}, severity="warning")


def on_policy_event(rules: RiskRules) -> Any:
    """An event hub listener: a rule changed anywhere, so this instance re-reads the rules."""

    def listen(event: Any) -> None:
        if event.type == "policy_change":
            rules.reload_soon()

    return listen


async def policies_ctx(app: web.Application) -> AsyncIterator[None]:
    """Risk rules (read at start, re-read on ``policy_change``, on a ``tentaculo policy`` notice and
    periodically) and confirmations."""
    settings = app[keys.SETTINGS]
    rules = RiskRules(app[keys.DB_POOL], reload_seconds=settings.policy_reload_seconds)
    app[keys.RISK_RULES] = rules
    app[keys.CONFIRMATIONS] = Confirmations(app[keys.DB_POOL], app[keys.REDIS], prefix=settings.redis_prefix)
    hub = app[keys.EVENTS]
    listener = on_policy_event(rules)
    hub.listeners.append(listener)
    await rules.start()
    notices = PolicyNotices(settings, rules, app[keys.REDIS], hub)
    app[keys.POLICY_NOTICES] = notices
    notices.start()
    yield
    await notices.close()
    hub.listeners.remove(listener)
    await rules.close()

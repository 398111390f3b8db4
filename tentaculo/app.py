"""create_app(): wiring only. Resources open and close in cleanup contexts, in dependency order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from tentaculo import __version__, console, keys
from tentaculo.auth import views as tokens
from tentaculo.auth.limits import AuthFailureLimiter, SharedGcra
from tentaculo.auth.tickets import EventTickets
from tentaculo.auth.tokens import TokenStore
from tentaculo.chat import openai_views as openai_compat, provider_views, views as chat
from tentaculo.chat.log import ChatActionLog
from tentaculo.chat.registry import ProviderRegistry
from tentaculo.db import DB_FAILURES, DB_UNREACHABLE
from tentaculo.db.audit import AuditWriter
from tentaculo.db.migrate import MigrationError, migrate
from tentaculo.db.pool import create_pool
from tentaculo.db.redisconn import redis_client
from tentaculo.events import views as events
from tentaculo.events.hub import EventHub
from tentaculo.files import views as fs
from tentaculo.files.sandbox import Sandbox
from tentaculo.health import Health
from tentaculo.http import spec
from tentaculo.http.cors import cors_headers
from tentaculo.http.middlewares import add_correlation_header, add_rate_limit_headers, middleware_chain
from tentaculo.http.trusted import TrustedProxies
from tentaculo.proxy import views as proxy_views
from tentaculo.proxy.transport import ModuleProxy
from tentaculo.settings import Settings
from tentaculo.status import (
    feature_views,
    health_views as health,
    metrics_views,
    policy_views,
    trace_views as trace,
    views as status_views,
)
from tentaculo.status.dependencies import DependencyMonitor
from tentaculo.status.features import FeatureFlags
from tentaculo.status.metrics import RequestMetrics
from tentaculo.status.policies import policies_ctx
from tentaculo.status.prober import ServiceProber
from tentaculo.status.rollup import MetricsRollup
from tentaculo.status.services import ServiceRegistry
from tentaculo.tasks import stop_task
from tentaculo.wiring import (
    check_builtin_features,
    connect_flags,
    disconnect_flags,
    hook_provider_events,
    hook_service_events,
    registry_check,
    revoked_streams_ender,
    token_usage_writer,
)

log = structlog.get_logger("tentaculo.app")

MIGRATION_RETRY_MAX = 10.0


def create_app(settings: Settings) -> web.Application:
    """Build the gateway application for ``settings``; performs no I/O."""
    if not settings.database_url or not (settings.redis_url or settings.redis_sentinels):
        raise ValueError("create_app needs database_url and redis_url or redis_sentinels "
                         "(the CLI starts embedded servers otherwise)")
    app = web.Application(middlewares=middleware_chain(settings), client_max_size=settings.max_body_bytes)
    app[keys.SETTINGS] = settings
    app[keys.LIFECYCLE] = keys.Lifecycle(flush_budget=settings.shutdown_flush_seconds)
    app[keys.SCHEMA] = keys.SchemaState()
    app[keys.METRICS] = RequestMetrics()
    app[keys.SANDBOX] = Sandbox(settings.fs_roots, max_entries=settings.fs_list_max)
    app.on_response_prepare.append(add_correlation_header)
    app.on_response_prepare.append(cors_headers(settings.cors_origins))
    app.on_response_prepare.append(add_rate_limit_headers)
    app.on_shutdown.append(_start_draining)
    app.on_startup.append(_publish_provider_events)  # runs after every cleanup context started
    app.on_shutdown.append(_end_event_streams)
    app.cleanup_ctx.extend([database_ctx, redis_ctx, tokens_ctx, audit_ctx, events_ctx, http_client_ctx, providers_ctx])
    app.cleanup_ctx.extend([dependencies_ctx, features_ctx, services_ctx])
    app.cleanup_ctx.append(metrics_ctx)
    app.cleanup_ctx.append(proxy_ctx)
    app.cleanup_ctx.append(limits_ctx)
    app.cleanup_ctx.append(policies_ctx)
    _add_routes(app)
    return app


def _add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health.health)
    app.router.add_get("/operator/api/events", events.events)
    app.router.add_post("/operator/api/events/ticket", events.ticket)
    app.router.add_get("/ready", health.ready)
    app.router.add_get("/operator/api/openapi.json", spec.openapi)
    app.router.add_get("/operator/api/whoami", tokens.whoami)
    app.router.add_get("/operator/api/tokens", tokens.list_tokens)
    app.router.add_post("/operator/api/tokens", tokens.create_token)
    app.router.add_delete("/operator/api/tokens/{name}", tokens.revoke_token)
    app.router.add_get("/operator/api/providers", provider_views.list_providers)
    app.router.add_post("/operator/api/chat", chat.chat)
    app.router.add_post("/v1/chat/completions", openai_compat.chat_completions)
    app.router.add_get("/v1/models", openai_compat.list_models)
    app.router.add_get("/v1/models/{model:.+}", openai_compat.get_model)
    app.router.add_get("/operator/api/status", status_views.status)
    app.router.add_get("/operator/api/modules", status_views.modules)
    app.router.add_get("/operator/api/topology", status_views.topology)
    app.router.add_get("/operator/api/features", feature_views.list_features)
    app.router.add_put("/operator/api/features/{name}", feature_views.set_feature)
    app.router.add_get("/operator/api/metrics", metrics_views.metrics)
    app.router.add_get("/metrics", metrics_views.prometheus)
    app.router.add_get("/operator/api/fs/list", fs.list_dir)
    app.router.add_get("/operator/api/trace/{correlation_id}", trace.trace)
    app.router.add_get("/operator/api/policies", policy_views.list_policies)
    app.router.add_get("/operator/api/policies/rules", policy_views.list_rules)
    app.router.add_post("/operator/api/policies/rules", policy_views.set_rule)
    app.router.add_delete("/operator/api/policies/rules/{id}", policy_views.remove_rule)
    app.router.add_route("*", "/operator/api/proxy/{service}/{path:.*}", proxy_views.proxy)
    console.setup(app)  # last: its view addresses must not shadow any /operator/api/ route


async def _start_draining(app: web.Application) -> None:
    app[keys.LIFECYCLE].draining = True


async def _publish_provider_events(app: web.Application) -> None:
    """Provider status changes and chats become ``provider_status`` and ``chat`` events."""
    hook_provider_events(app[keys.EVENTS], app[keys.PROVIDERS])


async def _end_event_streams(app: web.Application) -> None:
    """Close SSE streams before the server waits for handlers, so a restart takes seconds."""
    hub = app.get(keys.EVENTS)
    if hub is not None:
        hub.close_streams()


async def _migrate_until_done(app: web.Application, pool: asyncpg.Pool) -> None:
    """Apply migrations, retrying with backoff while PostgreSQL is unreachable."""
    state = app[keys.SCHEMA]
    delay = 0.5
    while True:
        try:
            async with pool.acquire() as conn:
                state.applied = await migrate(conn)
        except DB_UNREACHABLE as exc:
            state.ok, state.reason = False, f"waiting for PostgreSQL: {type(exc).__name__}"
            log.warning("migrations_waiting", error=type(exc).__name__, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MIGRATION_RETRY_MAX)
            continue
        state.ok, state.reason = True, "up to date"
        if state.applied:
            log.info("migrations_applied", versions=state.applied)
        return


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """The PostgreSQL pool; migrations at start-up (retried in the background if PostgreSQL is away)."""
    settings = app[keys.SETTINGS]
    # min_size=0: start even while PostgreSQL is down; the pool connects on first use.
    pool = await create_pool(settings.database_url or "", min_size=0, max_size=settings.db_pool_max,
                             deadline=settings.db_timeout)
    app[keys.DB_POOL] = pool
    retry: asyncio.Task[None] | None = None
    if settings.migrate_on_start:
        try:
            async with asyncio.timeout(15):
                await _migrate_until_done(app, pool)
        except TimeoutError:
            retry = asyncio.create_task(_migrate_until_done(app, pool), name="migrations")
        except MigrationError:
            await pool.close()
            raise
    else:
        app[keys.SCHEMA].ok, app[keys.SCHEMA].reason = True, "not managed by this instance"
    yield
    await stop_task(retry)
    try:
        async with asyncio.timeout(5):
            await pool.close()
    except TimeoutError:
        pool.terminate()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Redis client; it connects lazily and reconnects by itself."""
    client = redis_client(
        app[keys.SETTINGS],
        socket_timeout=2,
        socket_connect_timeout=2,
        health_check_interval=15,
    )
    app[keys.REDIS] = client
    yield
    await client.aclose()


async def limits_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shared rate counter (Redis, per instance while Redis is away) and the failed-auth limiter."""
    settings = app[keys.SETTINGS]
    counter = SharedGcra(app[keys.REDIS], settings.redis_prefix)
    app[keys.RATE_COUNTER] = counter
    app[keys.AUTH_LIMITER] = AuthFailureLimiter(
        counter,
        burst=settings.auth_failure_burst,
        rate=settings.auth_failure_rate,
        trusted=TrustedProxies(settings.trusted_proxies),
    )
    yield
    await counter.close()


async def tokens_ctx(app: web.Application) -> AsyncIterator[None]:
    """The token store over the pool; tokens' last_used_at written in batches, last at shutdown."""
    settings = app[keys.SETTINGS]
    store = TokenStore(app[keys.DB_POOL], admin_token=settings.admin_token, cache_seconds=settings.token_cache_seconds,
                       grace_seconds=settings.token_grace_seconds, deadline=settings.db_timeout)
    app[keys.TOKENS] = store
    writer = token_usage_writer(store, settings.token_last_used_seconds)
    writer.start()
    yield
    await writer.stop()
    with contextlib.suppress(*DB_FAILURES):
        async with asyncio.timeout(settings.shutdown_timeout):
            await store.flush_usage()


def _row_writer_limits(settings: Settings) -> dict[str, Any]:
    """Buffer, batch and flush period of the row writers (the audit and chat action logs share them)."""
    return {"capacity": settings.audit_buffer, "batch_size": settings.audit_batch,
            "flush_seconds": settings.audit_flush_seconds}


async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """The audit writer; on shutdown it flushes before the pool closes."""
    settings = app[keys.SETTINGS]
    writer = AuditWriter(app[keys.DB_POOL], **_row_writer_limits(settings))
    app[keys.AUDIT] = writer
    writer.start()
    yield
    await writer.close(timeout=app[keys.LIFECYCLE].flush_timeout())


async def http_client_ctx(app: web.Application) -> AsyncIterator[None]:
    """The one outgoing HTTP client session (providers); per-call timeouts are set by its users."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, limit_per_host=100, ttl_dns_cache=60),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=app[keys.SETTINGS].provider_connect_timeout),
        headers={"User-Agent": f"tentaculo/{__version__}"},
        trust_env=False,
    )
    app[keys.HTTP_CLIENT] = session
    yield
    await session.close()


async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
    """The reverse proxy's own connection pool to the modules, bounded apart from the providers' session."""
    transport = ModuleProxy(app[keys.SETTINGS])
    await transport.start()
    app[keys.PROXY] = transport
    yield
    await transport.close()


async def providers_ctx(app: web.Application) -> AsyncIterator[None]:
    """The provider registry and the chat action log; the log is flushed before the pool closes."""
    settings = app[keys.SETTINGS]
    chat_log = ChatActionLog(app[keys.DB_POOL], **_row_writer_limits(settings))
    registry = ProviderRegistry(settings, app[keys.HTTP_CLIENT])
    app[keys.CHAT_LOG] = chat_log
    app[keys.PROVIDERS] = registry
    chat_log.start()
    await registry.start()
    yield
    await registry.close()
    await chat_log.close(timeout=app[keys.LIFECYCLE].flush_timeout())


async def events_ctx(app: web.Application) -> AsyncIterator[None]:
    """The event hub (its own Redis connections, one reader) and the event ticket signer."""
    settings = app[keys.SETTINGS]
    tickets = EventTickets(
        app[keys.DB_POOL],
        secret=settings.event_ticket_secret,
        ttl_seconds=settings.event_ticket_seconds,
        tokens=app[keys.TOKENS],
    )
    app[keys.TICKETS] = tickets
    hub = EventHub.from_settings(settings)
    app[keys.EVENTS] = hub
    await hub.start()
    # A revoked token's open streams end: at once on the revoking instance, within about two cache
    # periods on the others (the check is the token store's cached one).
    interval = settings.token_cache_seconds if settings.token_cache_seconds > 0 else 1.0
    sweeper = revoked_streams_ender(hub, app[keys.TOKENS], interval)
    sweeper.start()
    yield
    await sweeper.stop()
    await hub.close()


async def dependencies_ctx(app: web.Application) -> AsyncIterator[None]:
    """PostgreSQL and Redis checked in the background, so status never waits on them."""
    interval = app[keys.SETTINGS].dependency_check_seconds
    monitor = DependencyMonitor(app[keys.DB_POOL], app[keys.REDIS], interval=interval)
    app[keys.DEPENDENCIES] = monitor
    await monitor.start()
    yield
    await monitor.close()


async def features_ctx(app: web.Application) -> AsyncIterator[None]:
    """Feature flags: read at start, kept in step by ``feature_toggle`` events and a periodic re-read."""
    hub = app[keys.EVENTS]
    flags = FeatureFlags(app[keys.DB_POOL], reload_seconds=app[keys.SETTINGS].features_reload_seconds)
    check_builtin_features(flags, hub, app[keys.PROVIDERS], app[keys.DEPENDENCIES], app[keys.SANDBOX])
    connect_flags(flags, hub)
    app[keys.FEATURES] = flags
    await flags.start()
    yield
    disconnect_flags(flags, hub)
    await flags.close()


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    """The module registry (reloaded from PostgreSQL) and its health prober."""
    settings = app[keys.SETTINGS]
    lifecycle = app[keys.LIFECYCLE]
    hub = app[keys.EVENTS]

    def own_status() -> Health:
        return Health("off", "draining: the instance is shutting down") if lifecycle.draining else Health.ON

    dependencies = app[keys.DEPENDENCIES]
    registry = ServiceRegistry(app[keys.DB_POOL], settings, self_status=own_status,
                               self_check=dependencies.last_check, redis_check=dependencies.redis_check)
    hook_service_events(hub, registry)
    prober = ServiceProber(
        registry,
        app[keys.HTTP_CLIENT],
        interval=settings.probe_interval_seconds,
        connect_timeout=settings.probe_connect_timeout,
        timeout=settings.probe_timeout,
        slow_ms=settings.probe_slow_ms,
    )
    app[keys.SERVICES] = registry
    app[keys.PROBER] = prober
    app[keys.FEATURES].add_check("proxy", registry_check(registry))
    await registry.start()
    await prober.start()
    yield
    await prober.close()
    await registry.close()


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """Metric rollups to performance_logs and the periodic ``metrics`` event; the last bucket is
    written at shutdown, before the pool closes. Also tells feature flags whether the file
    explorer has roots."""
    settings = app[keys.SETTINGS]
    rollup = MetricsRollup(
        app[keys.METRICS],
        app[keys.DB_POOL],
        instance=settings.instance,
        bucket_seconds=settings.metrics_flush_seconds,
        backlog=settings.metrics_backlog,
        hub=app[keys.EVENTS],
        redis=app[keys.REDIS],
        redis_prefix=settings.redis_prefix,
        event_seconds=settings.metrics_event_seconds,
    )
    app[keys.ROLLUP] = rollup
    rollup.start()
    yield
    await rollup.close(timeout=app[keys.LIFECYCLE].flush_timeout())

"""Every typed key of the application and of its requests, in one place."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from tentaculo.auth.confirm import Confirmations
from tentaculo.auth.limits import AuthFailureLimiter, BudgetFigures, SharedGcra
from tentaculo.auth.risk import RiskRules
from tentaculo.auth.tickets import EventTickets
from tentaculo.auth.tokens import Principal, TokenStore
from tentaculo.chat.log import ChatActionLog
from tentaculo.chat.registry import ProviderRegistry
from tentaculo.db.audit import AuditWriter
from tentaculo.events.hub import EventHub
from tentaculo.files.sandbox import Sandbox
from tentaculo.proxy.transport import ModuleProxy
from tentaculo.settings import Settings
from tentaculo.status.dependencies import DependencyMonitor
from tentaculo.status.features import FeatureFlags
from tentaculo.status.metrics import RequestMetrics
from tentaculo.status.policy_notices import PolicyNotices
from tentaculo.status.prober import ServiceProber
from tentaculo.status.rollup import MetricsRollup
from tentaculo.status.services import ServiceRegistry


@dataclass(slots=True)
class Lifecycle:
    """Process-level facts: when the instance started, whether it is draining, and its shutdown's clocks.

    Streamed answers that must end with a word to the client when the server stops (streamed
    chats) register their task in ``streams``; ``cut_streams()`` cancels them in a way they can
    tell from a client leaving (the task is in ``cut``). ``flush_timeout()`` shares one budget
    between every buffer flushed at shutdown, so the whole stop stays bounded.
    """

    started_monotonic: float = field(default_factory=time.monotonic)
    draining: bool = False
    flush_budget: float = 5.0
    streams: set[asyncio.Task[Any]] = field(default_factory=set)
    cut: set[asyncio.Task[Any]] = field(default_factory=set)
    _flush_until: float | None = None

    def cut_streams(self) -> int:
        """End every registered streamed answer now (shutdown deadline); returns how many."""
        for task in self.streams:
            self.cut.add(task)
            task.cancel()
        return len(self.streams)

    def is_cut(self) -> bool:
        """Whether the current task is being ended by the server's shutdown (not by its client)."""
        return asyncio.current_task() in self.cut

    def flush_timeout(self) -> float:
        """Seconds left of the shutdown flush budget, which starts at the first call."""
        now = time.monotonic()
        if self._flush_until is None:
            self._flush_until = now + self.flush_budget
        return max(0.05, self._flush_until - now)


@dataclass(slots=True)
class SchemaState:
    """Outcome of the start-up migration run."""

    ok: bool = False
    reason: str = "migrations not run yet"
    applied: list[int] = field(default_factory=list)


SETTINGS = web.AppKey("settings", Settings)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
SCHEMA = web.AppKey("schema", SchemaState)
DB_POOL = web.AppKey("db_pool", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
TOKENS = web.AppKey("tokens", TokenStore)
AUDIT = web.AppKey("audit", AuditWriter)
METRICS = web.AppKey("metrics", RequestMetrics)
ROLLUP = web.AppKey("metrics_rollup", MetricsRollup)
SANDBOX = web.AppKey("sandbox", Sandbox)
HTTP_CLIENT = web.AppKey("http_client", aiohttp.ClientSession)
PROXY = web.AppKey("proxy", ModuleProxy)
PROVIDERS = web.AppKey("providers", ProviderRegistry)
CHAT_LOG = web.AppKey("chat_log", ChatActionLog)
EVENTS = web.AppKey("events", EventHub)
TICKETS = web.AppKey("event_tickets", EventTickets)
SERVICES = web.AppKey("services", ServiceRegistry)
PROBER = web.AppKey("service_prober", ServiceProber)
FEATURES = web.AppKey("features", FeatureFlags)
DEPENDENCIES = web.AppKey("dependencies", DependencyMonitor)
RATE_COUNTER = web.AppKey("rate_counter", SharedGcra)
AUTH_LIMITER = web.AppKey("auth_limiter", AuthFailureLimiter)
RISK_RULES = web.AppKey("risk_rules", RiskRules)
CONFIRMATIONS = web.AppKey("confirmations", Confirmations)
POLICY_NOTICES = web.AppKey("policy_notices", PolicyNotices)

CORRELATION_ID = web.RequestKey("correlation_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
STARTED = web.RequestKey("started", float)
SERVICE = web.RequestKey("service", str)
# The status a streamed response (SSE, WebSocket, chunked) sent with its headers.
SENT_STATUS = web.RequestKey("sent_status", int)
# The budget figures of a token with requests_per_minute, written as RateLimit-* headers.
RATE_LIMIT = web.RequestKey("rate_limit", BudgetFigures)

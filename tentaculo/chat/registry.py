"""The provider registry: it discovers provider plugins by entry point, checks their options,
isolates the broken ones, and runs chats through them with retries, a fallback chain and a
circuit breaker per provider.

The contract a plugin implements is documented once, in :mod:`tentaculo.chat.plugin`; the names
of that module are importable from here too.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from tentaculo.chat.breaker import CircuitBreaker
from tentaculo.chat.options import OptionError, declared_options, secret_option_values, settings_options
from tentaculo.chat.plugin import (
    ENTRY_POINT_GROUP,
    INTERFACE_VERSION,
    ROLES,
    STATUSES,
    Answer,
    BaseProvider,
    ChatRequest,
    Chunk,
    Message,
    Provider,
    ProviderAuthError,
    ProviderContext,
    ProviderError,
    ProviderFactory,
    ProviderOff,
    ProviderProtocolError,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderTimeouts,
    ProviderUnavailable,
    Usage,
    collect,
)
from tentaculo.chat.stream import MAX_ANSWER_CHARS, ChatStream
from tentaculo.health import Health, Status, shorten
from tentaculo.logging import redact_also
from tentaculo.settings import Settings, secret_values

__all__ = [
    "ENTRY_POINT_GROUP", "INTERFACE_VERSION", "MAX_ANSWER_CHARS", "ROLES", "STATUSES", "AllProvidersFailed", "Answer",
    "Attempt", "BaseProvider", "ChatRequest", "ChatStream", "Chunk", "CircuitBreaker", "Message", "Provider",
    "ProviderAuthError", "ProviderContext", "ProviderError", "ProviderFactory", "ProviderOff",
    "ProviderProtocolError", "ProviderQuotaError", "ProviderRateLimited", "ProviderRegistry", "ProviderRejected",
    "ProviderSlot", "ProviderTimeout", "ProviderTimeouts", "ProviderUnavailable", "StatusChange", "Usage", "collect",
]

log = structlog.get_logger("tentaculo.providers")


class AllProvidersFailed(Exception):
    """No provider produced a first delta; ``attempts`` says what each did."""

    def __init__(self, attempts: list[Attempt], last: ProviderError | None) -> None:
        super().__init__("no provider could answer")
        self.attempts = attempts
        self.last = last


@dataclass(slots=True)
class Attempt:
    """One try of one provider during a chat."""

    provider: str
    status: str  # ok | error | skipped
    error: str | None
    latency_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "status": self.status, "error": self.error, "latency_ms": self.latency_ms}


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A provider's effective status or circuit state changed."""

    provider: str
    status: Status
    reason: str | None
    circuit: str
    previous_status: Status | None
    previous_circuit: str | None


StatusCallback = Callable[[StatusChange], Any]
ChatCallback = Callable[[Mapping[str, Any]], Any]


@dataclass(slots=True)
class ProviderSlot:
    """A registered plugin: the provider object (None when it failed to load) and its breaker."""

    name: str
    breaker: CircuitBreaker
    provider: Provider | None = None
    distribution: str | None = None
    distribution_version: str | None = None
    load_error: str | None = None
    calls: int = 0
    failures: int = 0
    last_error: str | None = None
    published: tuple[Status, str] | None = None  # (status, circuit) last told to on_status_change
    # The gateway's secrets and every plugin's secret options: kept out of its reason, never in a repr.
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def models(self) -> list[str]:
        return list(self.provider.models) if self.provider is not None else []

    def serves(self, model: str) -> bool:
        models = self.models
        return not models or model in models

    def effective(self) -> Health:
        """The provider as operators see it: its own status, refined by its breaker."""
        if self.provider is None:
            return Health("error", self.load_error)
        own = self.provider.status
        reason = shorten(self.provider.reason, secrets=self.secrets) if self.provider.reason else None
        if own not in STATUSES:  # a plugin may report anything, whatever its type says
            return Health("error", f"plugin reported an invalid status {own!r}")
        if own == "off":
            return Health("off", reason or "disabled")
        state = self.breaker.state
        if state == "open":
            why = f"circuit open after {self.breaker.failures} consecutive failures"
            return Health("error", f"{why}: {self.last_error}" if self.last_error else why)
        if own == "error":
            return Health("error", reason)
        if state == "half_open":
            return Health("degraded", "circuit half-open: the next call is a trial")
        if self.breaker.failures:
            return Health("degraded", f"{self.breaker.failures} recent failure(s): {self.last_error}")
        return Health(own, reason)

    def snapshot(self, chain: Sequence[str]) -> dict[str, Any]:
        health = self.effective()
        p = self.provider
        return {
            "name": self.name,
            "version": (p.version if p is not None else None) or self.distribution_version,
            "distribution": self.distribution,
            "interface_version": getattr(p, "interface_version", None),
            "models": self.models,
            "default_model": p.default_model if p is not None else None,
            "status": health.status,
            "reason": health.reason,
            "circuit": self.breaker.snapshot(),
            "in_chain": self.name in chain,
            "calls": self.calls,
            "failures": self.failures,
        }


class ProviderRegistry:
    """Discovers provider plugins by entry point, isolates the broken ones, and runs chats
    through them with retries, a fallback chain and a circuit breaker per provider.

    Hooks: ``on_status_change`` callbacks receive a :class:`StatusChange`; ``on_chat``
    callbacks receive each chat's metadata (never its text). A callback may be a coroutine
    function; it must not block. A failing callback is logged and ignored.
    """

    def __init__(
        self,
        settings: Settings,
        http: aiohttp.ClientSession,
        *,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._http = http
        self._entry_points = entry_points
        self._clock = clock
        self._sleep = sleep
        self._slots: dict[str, ProviderSlot] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.chain: tuple[str, ...] = settings.provider_chain
        self.on_status_change: list[StatusCallback] = []
        self.on_chat: list[ChatCallback] = []
        self._secrets = tuple(secret_values(settings))
        self.timeouts = ProviderTimeouts(settings.provider_connect_timeout, settings.provider_read_timeout,
                                         settings.provider_start_timeout)

    # ----------------------------------------------------------------- lifecycle

    def _discover(self) -> list[importlib.metadata.EntryPoint]:
        if self._entry_points is not None:
            return list(self._entry_points)
        return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))

    async def start(self) -> None:
        """Load and start every allowed plugin; a broken one is marked ``error``, never fatal."""
        allowed = set(self.settings.providers)
        for ep in self._discover():
            if allowed and ep.name not in allowed:
                log.info("provider_not_allowed", provider=ep.name)
                continue
            if ep.name in self._slots:
                log.error("provider_name_taken", provider=ep.name, value=ep.value)
                continue
            slot = ProviderSlot(ep.name, CircuitBreaker(self.settings.breaker_failures,
                                                        self.settings.breaker_reset_seconds, self._clock))
            dist = getattr(ep, "dist", None)
            if dist is not None:
                slot.distribution, slot.distribution_version = dist.metadata["Name"], dist.version
            self._slots[ep.name] = slot
            self._load(slot, ep)
        for slot in self._slots.values():  # every plugin's secret is kept out of every plugin's text
            slot.secrets = self._secrets
        for name in allowed - set(self._slots):
            log.warning("provider_not_installed", provider=name)
        await asyncio.gather(*(self._start(slot) for slot in self._slots.values() if slot.provider is not None))
        for name in self.chain:
            if name not in self._slots:
                log.warning("provider_chain_names_unknown", provider=name)
        for slot in self._slots.values():
            health = slot.effective()
            log.info("provider_loaded", provider=slot.name, status=health.status, reason=health.reason,
                     version=slot.snapshot(self.chain)["version"])
            self._observe(slot)

    def _load(self, slot: ProviderSlot, ep: importlib.metadata.EntryPoint) -> None:
        try:
            factory = ep.load()
        except Exception as exc:  # isolation boundary: a plugin that cannot even be imported
            slot.load_error = shorten(f"failed to import: {type(exc).__name__}: {exc}", secrets=self._secrets)
            log.exception("provider_import_failed", provider=ep.name, value=ep.value)
            return
        try:
            declared = declared_options(factory)
        except TypeError as exc:
            slot.load_error = shorten(str(exc), secrets=self._secrets)
            log.error("provider_options_invalid", provider=ep.name, error=slot.load_error)
            return
        # Before any of its code runs (an option's check is its code): whatever it or an error
        # says, the values given for its secret options are scrubbed from logs and reasons.
        self._remember_secrets(secret_option_values(ep.name, declared, self.settings))
        try:
            options = settings_options(ep.name, declared, self.settings)
        except OptionError as exc:
            slot.load_error = shorten(str(exc), secrets=self._secrets)
            log.error("provider_options_invalid", provider=ep.name, error=slot.load_error)
            return
        except Exception as exc:  # isolation boundary: declarations the checks cannot apply
            slot.load_error = shorten(f"its options could not be checked: {type(exc).__name__}: {exc}",
                                      secrets=self._secrets)
            log.error("provider_options_invalid", provider=ep.name, error=slot.load_error)
            return
        self._remember_secrets(options.secret_values())  # as typed, when that reads otherwise
        context = ProviderContext(ep.name, self._http, options, timeouts=self.timeouts)
        try:
            provider = factory(context)
        except Exception as exc:  # isolation boundary
            slot.load_error = shorten(f"failed to create: {type(exc).__name__}: {exc}", secrets=self._secrets)
            log.exception("provider_create_failed", provider=ep.name)
            return
        version = getattr(provider, "interface_version", None)
        if version != INTERFACE_VERSION:
            slot.load_error = f"interface version {version!r} is not supported (this gateway speaks {INTERFACE_VERSION})"
            log.error("provider_interface_mismatch", provider=ep.name, interface_version=version)
            return
        missing = [a for a in ("version", "models", "default_model", "status", "reason", "start", "stream", "close")
                   if not hasattr(provider, a)]
        if missing:
            slot.load_error = f"not a provider: missing {', '.join(missing)}"
            log.error("provider_incomplete", provider=ep.name, missing=missing)
            return
        slot.provider = provider

    def _remember_secrets(self, values: Sequence[str]) -> None:
        fresh = [value for value in values if value and value not in self._secrets]
        if fresh:
            self._secrets = (*self._secrets, *fresh)
            redact_also(fresh)

    async def _start(self, slot: ProviderSlot) -> None:
        assert slot.provider is not None
        limit = self.settings.provider_start_timeout
        try:
            async with asyncio.timeout(limit):
                await slot.provider.start()
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            slot.load_error = f"did not start within {limit} s"
            await self._close_one(slot)
            slot.provider = None
            log.error("provider_start_timeout", provider=slot.name, seconds=limit)
        except Exception as exc:  # isolation boundary
            slot.load_error = shorten(f"failed to start: {type(exc).__name__}: {exc}", secrets=self._secrets)
            log.exception("provider_start_failed", provider=slot.name)
            await self._close_one(slot)
            slot.provider = None

    async def _close_one(self, slot: ProviderSlot) -> None:
        if slot.provider is None:
            return
        try:
            async with asyncio.timeout(5):
                await slot.provider.close()
        except asyncio.CancelledError:
            raise
        except Exception:  # isolation boundary
            log.exception("provider_close_failed", provider=slot.name)

    async def close(self) -> None:
        """Close every provider and wait for callback tasks."""
        await asyncio.gather(*(self._close_one(slot) for slot in self._slots.values()))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    # ----------------------------------------------------------------- lookups

    def __contains__(self, name: object) -> bool:
        return name in self._slots

    def get(self, name: str) -> ProviderSlot | None:
        return self._slots.get(name)

    def names(self) -> list[str]:
        """Registered provider names, chain order first."""
        ordered = [n for n in self.chain if n in self._slots]
        return ordered + sorted(n for n in self._slots if n not in ordered)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every registered provider as ``/operator/api/providers`` shows it."""
        return [self._slots[n].snapshot(self.chain) for n in self.names()]

    def catalogue(self) -> list[tuple[str, str]]:
        """(id, owner) of every name a client may ask for: ``auto``, each provider, each model it lists.

        A provider's status does not change which names exist: a model of a provider that is off
        or failing is still a model, and a chat with it answers 503 saying why.
        """
        seen: dict[str, str] = {"auto": "tentaculo"}
        for name in self.names():
            seen.setdefault(name, name)
            for model in self._slots[name].models:
                seen.setdefault(model, name)
        return list(seen.items())

    # ----------------------------------------------------------------- hooks

    def _observe(self, slot: ProviderSlot) -> None:
        health = slot.effective()
        circuit = slot.breaker.state
        if slot.published == (health.status, circuit):
            return
        previous = slot.published
        slot.published = (health.status, circuit)
        change = StatusChange(slot.name, health.status, health.reason, circuit,
                              previous[0] if previous else None, previous[1] if previous else None)
        if previous is not None:
            log.info("provider_status_changed", provider=slot.name, status=health.status, reason=health.reason,
                     circuit=circuit, previous_status=previous[0], previous_circuit=previous[1])
        self._fire(self.on_status_change, change)

    def notify_chat(self, info: Mapping[str, Any]) -> None:
        """Tell ``on_chat`` listeners that a chat ended (metadata only)."""
        self._fire(self.on_chat, info)

    def _fire(self, callbacks: Sequence[Callable[[Any], Any]], payload: Any) -> None:
        for callback in list(callbacks):
            try:
                result = callback(payload)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._callback_done)
            except Exception:  # isolation boundary: one listener must not break chats
                log.exception("provider_callback_failed", callback=getattr(callback, "__qualname__", repr(callback)))

    def _callback_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("provider_callback_failed", error=repr(task.exception()))

    # ----------------------------------------------------------------- chat

    async def open(self, request: ChatRequest, provider: str = "auto") -> ChatStream:
        """Find a provider that produces a first delta: the chain for ``"auto"``, else the one named.

        Retries (with backoff) and fallback happen here, before the first delta only. Raises
        :class:`AllProvidersFailed` with every attempt, or KeyError for an unknown name.
        """
        if provider == "auto":
            names: Sequence[str] = self.chain
        else:
            if provider not in self._slots:
                raise KeyError(provider)
            names = (provider,)
        attempts: list[Attempt] = []
        last: ProviderError | None = None
        troubled = False  # an earlier link failed or was unusable: a later answer is degraded
        retries = self.settings.provider_retries
        for name in names:
            slot = self._slots.get(name)
            if slot is None:
                attempts.append(Attempt(name, "skipped", "not loaded (not installed or not allowed)", 0.0))
                troubled = True
                continue
            if slot.provider is None:
                attempts.append(Attempt(name, "skipped", slot.load_error, 0.0))
                troubled = True
                continue
            if slot.provider.status == "off":
                attempts.append(Attempt(name, "skipped", f"off: {slot.effective().reason}", 0.0))
                continue
            if request.model and provider == "auto" and not slot.serves(request.model):
                attempts.append(Attempt(name, "skipped", f"does not serve model {request.model!r}", 0.0))
                continue
            for try_no in range(retries + 1):
                if not slot.breaker.allow():
                    attempts.append(Attempt(name, "skipped", "circuit open", 0.0))
                    troubled = True
                    break
                started = self._clock()
                try:
                    stream = await self._first_delta(slot, request)
                except ProviderError as exc:
                    latency = round((self._clock() - started) * 1000, 3)
                    attempts.append(Attempt(name, "error", self.describe(exc), latency))
                    self._failed(slot, exc)
                    last = exc
                    if exc.retryable and try_no < retries:
                        await self._sleep(self._backoff(try_no, exc.retry_after))
                        continue
                    troubled = True  # this link is given up: a later one answering is degraded
                    break
                except BaseException:
                    slot.breaker.release()
                    raise
                latency = round((self._clock() - started) * 1000, 3)
                attempts.append(Attempt(name, "ok", None, latency))
                stream.attempts = attempts
                stream.degraded = provider == "auto" and troubled
                return stream
        raise AllProvidersFailed(attempts, last)

    def describe(self, exc: ProviderError) -> str:
        """``kind: message`` of a provider error, fit to show and store (no secret, no control character)."""
        return f"{exc.kind}: {shorten(str(exc), secrets=self._secrets)}"

    def _backoff(self, try_no: int, retry_after: float | None) -> float:
        delay = self.settings.provider_retry_backoff * 2.0**try_no
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.settings.provider_read_timeout, 5.0)

    def _failed(self, slot: ProviderSlot, exc: ProviderError) -> None:
        slot.calls += 1
        slot.failures += 1
        slot.last_error = self.describe(exc)
        if exc.trips_breaker:
            slot.breaker.failure()
        else:
            slot.breaker.release()
        log.warning("provider_failed", provider=slot.name, kind=exc.kind, error=slot.last_error,
                    circuit=slot.breaker.state)
        self._observe(slot)

    def _succeeded(self, slot: ProviderSlot) -> None:
        slot.calls += 1
        slot.breaker.success()
        self._observe(slot)

    async def _first_delta(self, slot: ProviderSlot, request: ChatRequest) -> ChatStream:
        assert slot.provider is not None
        try:
            stream = ChatStream(self, slot, request)
        except Exception as exc:  # isolation boundary: stream() itself raised, before any await
            if isinstance(exc, ProviderError):
                raise
            log.exception("provider_plugin_error", provider=slot.name)
            raise ProviderError(f"{slot.name} failed: {type(exc).__name__}") from exc
        try:
            await stream.prime()
        except BaseException:
            await stream.aclose()
            raise
        return stream

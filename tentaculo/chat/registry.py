"""Chat providers: the interface every provider plugin implements, and the registry that runs them.

The provider contract (``INTERFACE_VERSION = 1``)
=================================================

A provider plugin is any installed distribution that declares an entry point in the group
``tentaculo.providers``. The entry point's *name* is the provider's name (what clients put in
``"provider"`` and what every answer says it came from); its *value* is a factory::

    [options.entry_points]
    tentaculo.providers =
        echo = tentaculo_echo:EchoProvider

The registry calls ``factory(context)`` once at start-up with a :class:`ProviderContext`
(the provider's name, the gateway settings, the gateway's one shared ``aiohttp.ClientSession``
and the plugin's options from ``TENTACULO_PLUGIN_<NAME>__<OPTION>`` variables). The object
returned must satisfy :class:`Provider`:

``interface_version: int``
    Must equal :data:`INTERFACE_VERSION`; anything else is refused at load time.
``version: str``
    The plugin's own version, shown in ``/operator/api/providers``.
``models: Sequence[str]``
    Model ids it serves. Empty means "any model the caller names". May change after ``start()``.
``default_model: str | None``
    Used when the request names no model.
``status: str`` and ``reason: str | None``
    One of ``on | off | degraded | error`` with a human reason when not ``on``. ``off`` means
    deliberately disabled (no API key, not configured): the registry never calls ``stream()``
    on an ``off`` provider. A provider may update these at any time (e.g. ``error`` when its
    server is unreachable, ``on`` again after a success); the registry reads them, it does not
    poll.
``async start() -> None``
    One-time set-up (read options, probe a server). Raising marks the provider ``error`` with
    the exception's message; the gateway still starts. It runs under a time limit.
``stream(request: ChatRequest) -> AsyncIterator[Chunk]``
    The one way to chat: usually an ``async def ... yield`` generator. Streaming comes first;
    a non-streaming answer is this stream collected (:func:`collect`).

    * Yield :class:`Chunk` objects whose ``content`` and/or ``reasoning`` are *deltas* (the new
      text only). Chunks with neither are allowed (e.g. to report ``model``) and are not
      deltas.
    * The last chunk carries ``finish_reason`` (``"stop"``, ``"length"``, ...) and, when the
      backend reports it, ``usage``; the stream then ends. A stream that ends without a
      ``finish_reason`` is treated as cut off.
    * Failures raise a :class:`ProviderError` subclass, before or after the first delta. Pick
      the subclass by cause (unreachable, timeout, rejected credentials, ...): it decides
      retries, the circuit breaker and the problem code clients see. Messages are shown to
      operators, so never put a secret in them. Any other exception is treated as a plugin
      bug: logged with its traceback and reported as a plain ``ProviderError``.
    * Cancellation: the registry may stop reading at any point and close the generator (or
      cancel the task awaiting it) -- when the client went away, on a timeout, or after the
      finish chunk. The provider must then release what it holds (close its upstream
      request) promptly and must not swallow ``asyncio.CancelledError``.
    * ``request.correlation_id`` should be sent to any upstream as ``X-Correlation-ID``.
    * Time limits are the registry's job: it fails a stream that is silent for longer than
      ``TENTACULO_PROVIDER_READ_TIMEOUT`` (before or between chunks), so a provider need not
      add its own, but may.
``async close() -> None``
    Release resources at shutdown. The shared HTTP session is not the provider's to close.

``tentaculo.testing.ProviderConformance`` is a test suite a plugin package can run against its
provider to check all of the above.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import aiohttp
import structlog

from tentaculo.health import shorten
from tentaculo.settings import Settings

log = structlog.get_logger("tentaculo.providers")

INTERFACE_VERSION = 1
ENTRY_POINT_GROUP = "tentaculo.providers"
STATUSES = ("on", "off", "degraded", "error")
ROLES = ("system", "user", "assistant")
# An answer longer than this is refused rather than held in memory.
MAX_ANSWER_CHARS = 4_000_000


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a provider is asked. ``metadata`` is free-form and provider-specific."""

    messages: tuple[Message, ...]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    correlation_id: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the backend reports them."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True)  # not frozen: a stream makes many, and frozen instances cost 3x to create
class Chunk:
    """One piece of a streamed answer: text deltas, or the final chunk with ``finish_reason``."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None

    @property
    def is_delta(self) -> bool:
        return bool(self.content or self.reasoning)


@dataclass(slots=True)
class Answer:
    """A stream collected into one answer."""

    content: str = ""
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None


async def collect(chunks: AsyncIterator[Chunk]) -> Answer:
    """Collect a stream of chunks into one :class:`Answer` (the non-streaming answer)."""
    content: list[str] = []
    reasoning: list[str] = []
    answer = Answer()
    async for chunk in chunks:
        if chunk.content:
            content.append(chunk.content)
        if chunk.reasoning:
            reasoning.append(chunk.reasoning)
        if chunk.model:
            answer.model = chunk.model
        if chunk.usage is not None:
            answer.usage = chunk.usage
        if chunk.finish_reason:
            answer.finish_reason = chunk.finish_reason
    answer.content = "".join(content)
    answer.reasoning = "".join(reasoning)
    return answer


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What a provider factory receives."""

    name: str
    settings: Settings
    http: aiohttp.ClientSession
    options: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """A chat backend. The full contract is in this module's docstring."""

    interface_version: int
    version: str
    models: Sequence[str]
    default_model: str | None
    status: str
    reason: str | None

    async def start(self) -> None: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]: ...

    async def close(self) -> None: ...


ProviderFactory = Callable[[ProviderContext], Provider]


# --------------------------------------------------------------------------- errors


class ProviderError(Exception):
    """A provider could not answer. Subclasses say why; the registry maps them to problem codes.

    ``retryable``: worth another try (before the first delta). ``trips_breaker``: counts
    towards opening the provider's circuit. ``kind``: short label shown in attempts.
    """

    code = "provider_unavailable"
    kind = "error"
    retryable = False
    trips_breaker = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderOff(ProviderError):
    """The provider is deliberately disabled (no API key, not configured)."""

    kind = "off"
    trips_breaker = False


class ProviderUnavailable(ProviderError):
    """The backend cannot be reached, dropped the connection, or answered 5xx."""

    kind = "unavailable"
    retryable = True


class ProviderTimeout(ProviderError):
    """The backend went silent for too long."""

    code = "upstream_timeout"
    kind = "timeout"
    retryable = True


class ProviderRateLimited(ProviderError):
    """The backend asked us to slow down (HTTP 429); ``retry_after`` in seconds when known."""

    kind = "rate_limited"
    retryable = True


class ProviderAuthError(ProviderError):
    """The backend refused our credentials (HTTP 401/403)."""

    kind = "auth"


class ProviderQuotaError(ProviderError):
    """The account behind the key cannot pay for more (HTTP 402)."""

    kind = "quota"


class ProviderRejected(ProviderError):
    """The backend refused this request itself (HTTP 400/404/422): another request may work."""

    kind = "rejected"
    trips_breaker = False


class ProviderProtocolError(ProviderError):
    """The backend answered something that is not its wire format."""

    kind = "protocol"


class AllProvidersFailed(Exception):
    """No provider produced a first delta; ``attempts`` says what each did."""

    def __init__(self, attempts: list[Attempt], last: ProviderError | None) -> None:
        super().__init__("no provider could answer")
        self.attempts = attempts
        self.last = last


# --------------------------------------------------------------------------- circuit breaker


class CircuitBreaker:
    """Per-provider breaker: ``closed`` -> ``open`` after N consecutive failures -> ``half_open``
    after ``reset_seconds`` (one trial call) -> ``closed`` on success, ``open`` again on failure."""

    def __init__(self, failures: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._state = "closed"
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self._state == "open" and self.opened_at is not None:
            if self._clock() - self.opened_at >= self.reset_seconds:
                self._state = "half_open"
                self._trial = False
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In ``half_open`` only one trial call at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self._state, self.failures, self.opened_at, self._trial = "closed", 0, None, False

    def failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.threshold:
            self._state, self.opened_at, self._trial = "open", self._clock(), False

    def release(self) -> None:
        """A call ended without a verdict (cancelled): let another trial through."""
        self._trial = False

    def snapshot(self) -> dict[str, Any]:
        state = self.state
        retry_in = None
        if state == "open" and self.opened_at is not None:
            retry_in = round(max(0.0, self.reset_seconds - (self._clock() - self.opened_at)), 3)
        return {"state": state, "failures": self.failures, "retry_in_s": retry_in}


# --------------------------------------------------------------------------- registry


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
    status: str
    reason: str | None
    circuit: str
    previous_status: str | None
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
    published: tuple[str, str] | None = None

    @property
    def models(self) -> list[str]:
        return list(self.provider.models) if self.provider is not None else []

    def serves(self, model: str) -> bool:
        models = self.models
        return not models or model in models

    def effective(self) -> tuple[str, str | None]:
        """Status and reason as operators see them: the provider's own, refined by its breaker."""
        if self.provider is None:
            return "error", self.load_error
        own, reason = self.provider.status, self.provider.reason
        if own not in STATUSES:
            return "error", f"plugin reported an invalid status {own!r}"
        if own == "off":
            return "off", reason or "disabled"
        state = self.breaker.state
        if state == "open":
            why = f"circuit open after {self.breaker.failures} consecutive failures"
            return "error", f"{why}: {self.last_error}" if self.last_error else why
        if own == "error":
            return "error", reason
        if state == "half_open":
            return "degraded", "circuit half-open: the next call is a trial"
        if self.breaker.failures:
            return "degraded", f"{self.breaker.failures} recent failure(s): {self.last_error}"
        return own, reason

    def snapshot(self, chain: Sequence[str]) -> dict[str, Any]:
        status, reason = self.effective()
        p = self.provider
        return {
            "name": self.name,
            "version": (p.version if p is not None else None) or self.distribution_version,
            "distribution": self.distribution,
            "interface_version": getattr(p, "interface_version", None),
            "models": self.models,
            "default_model": p.default_model if p is not None else None,
            "status": status,
            "reason": reason,
            "circuit": self.breaker.snapshot(),
            "in_chain": self.name in chain,
            "calls": self.calls,
            "failures": self.failures,
        }


def _option_key(name: str) -> str:
    return name.replace("-", "_").lower()


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
        self._secrets = tuple(s for s in (settings.deepseek_api_key, settings.admin_token) if s)

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
        for name in allowed - set(self._slots):
            log.warning("provider_not_installed", provider=name)
        await asyncio.gather(*(self._start(slot) for slot in self._slots.values() if slot.provider is not None))
        for name in self.chain:
            if name not in self._slots:
                log.warning("provider_chain_names_unknown", provider=name)
        for slot in self._slots.values():
            status, reason = slot.effective()
            log.info("provider_loaded", provider=slot.name, status=status, reason=reason,
                     version=slot.snapshot(self.chain)["version"])
            self._observe(slot)

    def _load(self, slot: ProviderSlot, ep: importlib.metadata.EntryPoint) -> None:
        options = self.settings.provider_options.get(_option_key(ep.name), {})
        context = ProviderContext(ep.name, self.settings, self._http, options)
        try:
            factory = ep.load()
        except Exception as exc:  # isolation boundary: a plugin that cannot even be imported
            slot.load_error = shorten(f"failed to import: {type(exc).__name__}: {exc}", secrets=self._secrets)
            log.exception("provider_import_failed", provider=ep.name, value=ep.value)
            return
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
        status, reason = slot.effective()
        circuit = slot.breaker.state
        if slot.published == (status, circuit):
            return
        previous = slot.published
        slot.published = (status, circuit)
        change = StatusChange(slot.name, status, reason, circuit,
                              previous[0] if previous else None, previous[1] if previous else None)
        if previous is not None:
            log.info("provider_status_changed", provider=slot.name, status=status, reason=reason, circuit=circuit,
                     previous_status=previous[0], previous_circuit=previous[1])
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
                attempts.append(Attempt(name, "skipped", shorten(f"off: {slot.provider.reason or 'disabled'}"), 0.0))
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
        delay = self.settings.provider_retry_backoff * (2**try_no)
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


async def _aclose(iterator: AsyncIterator[Chunk]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except (ProviderError, RuntimeError, StopAsyncIteration):
        pass
    except Exception:  # isolation boundary: a plugin failing while being closed
        log.exception("provider_aclose_failed")


class ChatStream:
    """A provider's answer in progress, from its first delta on.

    Iterate it for the chunks (the first one included). It enforces the read timeout, caps the
    answer's size, turns plugin bugs into :class:`ProviderError` and reports the outcome to the
    provider's circuit breaker. ``aclose()`` stops the upstream call. It is read by the task that
    opened it (the request's handler): that is the task its read timeout cancels.
    """

    def __init__(self, registry: ProviderRegistry, slot: ProviderSlot, request: ChatRequest) -> None:
        self._registry = registry
        self._slot = slot
        assert slot.provider is not None
        self.provider = slot.name
        self.model: str | None = request.model or slot.provider.default_model
        self.attempts: list[Attempt] = []
        self.degraded = False
        self.finished = False
        self._iterator = slot.provider.stream(request).__aiter__()
        self._pending: list[Chunk] = []
        self._chars = 0
        self._closed = False
        self._verdict = False
        # The read timeout is one lazily re-armed timer per stream, not one per chunk: a chunk
        # only stamps the time, and the timer cancels a read that has waited too long.
        self._timeout = registry.settings.provider_read_timeout
        self._loop = asyncio.get_running_loop()
        self._owner = asyncio.current_task()
        self._reading = False
        self._read_since = 0.0
        self._expired = False
        self._timer: asyncio.TimerHandle | None = None
        self._priming = False

    def _watch(self) -> None:
        self._timer = None
        if not self._reading or self._closed or self._owner is None:
            return  # not reading now: the next read re-arms
        due = self._read_since + self._timeout
        if self._loop.time() >= due:
            self._expired = True
            self._owner.cancel()
        else:
            self._timer = self._loop.call_at(due, self._watch)

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> Chunk:
        """The next chunk: one coroutine per chunk, since a long answer has hundreds of them."""
        if self.finished or self._closed:
            raise StopAsyncIteration
        if self._pending:
            chunk = self._pending.pop(0)
        else:
            self._reading = True
            self._read_since = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(self._read_since + self._timeout, self._watch)
            try:
                chunk = await self._iterator.__anext__()
            except BaseException as exc:
                self._reading = False
                error = self._error_for(exc)
                raise await self._settle(error) from error.__cause__
            self._reading = False
            if not isinstance(chunk, Chunk):
                raise await self._settle(ProviderProtocolError(
                    f"{self.provider} yielded {type(chunk).__name__}, not a Chunk"))
            if chunk.model:
                self.model = chunk.model
            self._chars += len(chunk.content) + len(chunk.reasoning)
            if self._chars > MAX_ANSWER_CHARS:
                raise await self._settle(ProviderProtocolError(
                    f"{self.provider}'s answer exceeds {MAX_ANSWER_CHARS} characters"))
        if chunk.finish_reason and not self._priming:
            self._done()
            await self.aclose()
        return chunk

    def _error_for(self, exc: BaseException) -> BaseException:
        """What a failed read raises: a ProviderError, or ``exc`` itself when it is not the provider's.

        A plugin's own bug becomes the new error's ``__cause__``; the caller raises ``from`` it.
        """
        error: BaseException
        if isinstance(exc, asyncio.CancelledError):
            if not (self._expired and self._owner is not None and self._owner.uncancel() == 0):
                return exc
            self._expired = False
            error = ProviderTimeout(f"{self.provider} sent nothing for {self._timeout:g} s")
        elif isinstance(exc, StopAsyncIteration):
            error = ProviderUnavailable(f"{self.provider}'s stream ended before the answer finished")
        elif isinstance(exc, ProviderError) or not isinstance(exc, Exception):
            return exc
        else:  # isolation boundary: a plugin bug
            log.error("provider_plugin_error", provider=self.provider, exc_info=exc)
            error = ProviderError(f"{self.provider} failed: {type(exc).__name__}")
            error.__cause__ = exc
        return error

    async def _settle(self, exc: BaseException) -> BaseException:
        """``exc``, to raise; a provider error after the first delta also counts against the provider.

        While priming, the registry does the counting instead (it may retry or fall back).
        """
        if isinstance(exc, ProviderError) and not self._priming:
            self._verdict = True
            self._registry._failed(self._slot, exc)
            await self.aclose()
        return exc

    async def prime(self) -> None:
        """Read until the first delta (or an immediate finish); failures raise ProviderError."""
        self._priming = True
        try:
            while True:
                chunk = await self.__anext__()
                self._pending.append(chunk)
                if chunk.is_delta or chunk.finish_reason:
                    return
        finally:
            self._priming = False

    def _done(self) -> None:
        self.finished = True
        self._verdict = True
        self._registry._succeeded(self._slot)

    async def aclose(self) -> None:
        """Stop reading and close the provider's stream (cancels the upstream call)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._verdict:
            self._slot.breaker.release()
        await _aclose(self._iterator)

"""The provider contract: what a chat provider plugin is, receives and must do.

The provider contract (``INTERFACE_VERSION = 1``)
=================================================

A provider plugin is any installed distribution that declares an entry point in the group
``tentaculo.providers``. The entry point's *name* is the provider's name (what clients put in
``"provider"`` and what every answer says it came from); its *value* is a factory::

    [options.entry_points]
    tentaculo.providers =
        echo = tentaculo_echo:EchoProvider

The factory may declare ``options``: a sequence of :class:`tentaculo.chat.options.Option` (name,
type, default, whether it is secret). The registry reads each from the variable
``TENTACULO_PLUGIN_<NAME>__<OPTION>``, checks it against the declaration (a refused value is a
load error naming the variable) and calls ``factory(context)`` once at start-up with a
:class:`ProviderContext`: the provider's name, its checked options, the gateway's one shared
``aiohttp.ClientSession``, a logger bound to the provider's name and the gateway's time limits
for providers. A plugin sees nothing else of the gateway's configuration. The values of secret
options are kept out of every repr, log line, status and error the gateway writes.

The object returned must satisfy :class:`Provider` (:class:`BaseProvider` supplies the defaults):

``interface_version: int``
    Must equal :data:`INTERFACE_VERSION`; anything else is refused at load time.
``version: str``
    The plugin's own version, shown in ``/operator/api/providers``.
``models: Sequence[str]``
    Model ids it serves. Empty means "any model the caller names". May change after ``start()``.
``default_model: str | None``
    Used when the request names no model.
``status: Status`` and ``reason: str | None``
    One of ``on | off | degraded | error`` (:data:`tentaculo.health.Status`) with a human reason
    when not ``on``; any other value is shown as ``error``. ``off`` means deliberately disabled
    (no API key, not configured): the registry never calls ``stream()`` on an ``off`` provider.
    A provider may update these at any time (e.g. ``error`` when its server is unreachable,
    ``on`` again after a success); the registry reads them, it does not poll.
``async start() -> None``
    One-time set-up (probe a server). Raising marks the provider ``error`` with the exception's
    message; the gateway still starts. It runs under a time limit.
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
      add its own, but may (``context.timeouts``).
``async close() -> None``
    Release resources at shutdown. The shared HTTP session is not the provider's to close.

``tentaculo.testing.ProviderConformance`` is a test suite a plugin package can run against its
provider to check all of the above.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import aiohttp
import structlog

from tentaculo.chat.options import Option, PluginOptions
from tentaculo.health import STATUSES as STATUSES, Status  # STATUSES: part of the contract, importable from here

INTERFACE_VERSION = 1
ENTRY_POINT_GROUP = "tentaculo.providers"
ROLES = ("system", "user", "assistant")


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


# --------------------------------------------------------------------------- what a plugin gets and is


@dataclass(frozen=True, slots=True)
class ProviderTimeouts:
    """The gateway's time limits for providers, in seconds: connecting, silence while reading, ``start()``."""

    connect: float = 5.0
    read: float = 60.0
    start: float = 10.0


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """What a provider factory receives: its name, its checked options, the shared HTTP session, a logger."""

    name: str
    http: aiohttp.ClientSession
    options: PluginOptions = field(default_factory=PluginOptions)
    log: Any = None  # a structlog logger bound to provider=<name>; made from the name when not given
    timeouts: ProviderTimeouts = field(default_factory=ProviderTimeouts)

    def __post_init__(self) -> None:
        if self.log is None:
            object.__setattr__(self, "log", structlog.get_logger("tentaculo.providers").bind(provider=self.name))


@runtime_checkable
class Provider(Protocol):
    """A chat backend. The full contract is in this module's docstring."""

    interface_version: int
    version: str
    models: Sequence[str]
    default_model: str | None
    status: Status
    reason: str | None

    async def start(self) -> None: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]: ...

    async def close(self) -> None: ...


ProviderFactory = Callable[[ProviderContext], Provider]


class BaseProvider:
    """The defaults of a provider: subclass it, set ``version`` and ``models``, declare ``options``
    and write ``stream()``.

    It starts ``on``; with ``needs_key`` naming an option that is unset it is ``off`` ("no API
    key") instead, and the registry never calls it. ``start()`` and ``close()`` do nothing.
    ``self.context`` (with the checked ``options``) and ``self.log`` are set.
    """

    interface_version: ClassVar[int] = INTERFACE_VERSION
    version: str  # the plugin's own version: each plugin sets it
    models: Sequence[str] = ()
    default_model: str | None = None
    options: ClassVar[Sequence[Option]] = ()
    needs_key: ClassVar[str | None] = None

    def __init__(self, context: ProviderContext) -> None:
        self.context = context
        self.log = context.log
        self.status: Status = "on"
        self.reason: str | None = None
        if self.needs_key is not None and not context.options.get(self.needs_key):
            self.status, self.reason = "off", "no API key"

    async def start(self) -> None:
        """Nothing to set up."""

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        raise NotImplementedError(f"{type(self).__name__} must define stream()")

    async def close(self) -> None:
        """Nothing to release (the shared HTTP session is the gateway's)."""


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

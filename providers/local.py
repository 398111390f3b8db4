"""A local OpenAI-compatible model server: Ollama, llama.cpp server, vLLM, LM Studio.

Options: ``base_url`` (``TENTACULO_PLUGIN_LOCAL__BASE_URL`` or ``TENTACULO_LOCAL_BASE_URL``; default
Ollama's ``http://127.0.0.1:11434/v1``) and ``model`` (``TENTACULO_PLUGIN_LOCAL__MODEL`` or
``TENTACULO_LOCAL_MODEL``; default: the first model the server lists). An unreachable server
makes the provider ``error`` -- the chain moves on -- and a later success makes it ``on`` again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from providers.openai_wire import OpenAIWireClient, models_or
from tentaculo import __version__
from tentaculo.chat.options import Option, http_url
from tentaculo.chat.plugin import (
    BaseProvider,
    ChatRequest,
    Chunk,
    ProviderContext,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)

PROBE_TIMEOUT = 3.0


class LocalProvider(BaseProvider):
    """The ``local`` provider."""

    version = __version__
    options = (
        Option("base_url", default="http://127.0.0.1:11434/v1", check=http_url),
        Option("model"),
    )

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        model: str | None = context.options["model"]
        self._configured = model
        self.default_model = model
        self.models: list[str] = models_or([model], [])
        self._client = OpenAIWireClient(
            label=context.name,
            http=context.http,
            base_url=context.options["base_url"],
            api_key=None,
            connect_timeout=context.timeouts.connect,
            read_timeout=context.timeouts.read,
        )
        self._probe_timeout = min(PROBE_TIMEOUT, context.timeouts.start)

    async def start(self) -> None:
        """Ask the server which models it has; unreachable is ``error``, not a start-up failure."""
        await self._discover()

    async def _discover(self) -> ProviderError | None:
        """Ask the server for its models; the error that left no model to use, if any."""
        try:
            listed = await self._client.list_models(self._probe_timeout)
        except ProviderError as exc:
            self.status, self.reason = "error", str(exc)
            return exc
        self.models = models_or([self._configured], listed)
        self.default_model = self._configured or (self.models[0] if self.models else None)
        if self.default_model is None:
            self.status, self.reason = "error", "the server lists no model; set TENTACULO_LOCAL_MODEL"
            return ProviderUnavailable(f"local: {self.reason}")
        self.status, self.reason = "on", None
        return None

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        model = request.model or self.default_model
        if model is None:
            # The discovery's own error already names the provider: raised as it is.
            error = await self._discover()
            model = self.default_model
            if model is None:
                raise error or ProviderUnavailable("local: no model to use; set TENTACULO_LOCAL_MODEL")
        answered = False
        try:
            async for chunk in self._client.stream(request, model):
                if not answered:
                    answered = True
                    self.status, self.reason = "on", None
                yield chunk
        except (ProviderUnavailable, ProviderTimeout) as exc:
            if not answered:
                self.status, self.reason = "error", str(exc)
            raise
        self.status, self.reason = "on", None

"""DeepSeek through its OpenAI-compatible API: ``deepseek-chat`` and ``deepseek-reasoner``
(whose thinking streams as ``reasoning_content``).

Options: ``api_key`` (secret; ``TENTACULO_PLUGIN_DEEPSEEK__API_KEY`` or ``DEEPSEEK_API_KEY``) enables
it; without a key it is ``off`` ("no API key") and never called. ``base_url``
(``TENTACULO_PLUGIN_DEEPSEEK__BASE_URL`` or ``DEEPSEEK_BASE_URL``) points it elsewhere (a proxy, or
a test server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from providers.openai_wire import OpenAIWireClient
from tentaculo import __version__
from tentaculo.chat.options import Option, http_url
from tentaculo.chat.plugin import (
    BaseProvider,
    ChatRequest,
    Chunk,
    ProviderAuthError,
    ProviderContext,
    ProviderOff,
    ProviderQuotaError,
)

MODELS = ("deepseek-chat", "deepseek-reasoner")


class DeepSeekProvider(BaseProvider):
    """The ``deepseek`` provider."""

    version = __version__
    models = MODELS
    default_model: str | None = "deepseek-chat"
    options = (
        Option("api_key", secret=True),
        Option("base_url", default="https://api.deepseek.com", check=http_url),
    )
    needs_key = "api_key"

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._client: OpenAIWireClient | None = None
        if self.status == "off":
            return
        self._client = OpenAIWireClient(
            label=context.name,
            http=context.http,
            base_url=context.options["base_url"],
            api_key=context.options["api_key"],
            connect_timeout=context.timeouts.connect,
            read_timeout=context.timeouts.read,
        )

    async def start(self) -> None:
        """Nothing to probe: a call costs money, so the key is checked by the first chat."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        if self._client is None:
            raise ProviderOff("deepseek has no API key")
        try:
            async for chunk in self._client.stream(request, request.model or self.default_model or MODELS[0]):
                yield chunk
        except ProviderAuthError:
            self.status, self.reason = "error", "the API key was rejected (HTTP 401)"
            raise
        except ProviderQuotaError:
            self.status, self.reason = "error", "insufficient balance (HTTP 402)"
            raise
        if self.status == "error":
            self.status, self.reason = "on", None

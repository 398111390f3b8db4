"""DeepSeek through its OpenAI-compatible API: ``deepseek-chat`` and ``deepseek-reasoner``
(whose thinking streams as ``reasoning_content``).

``DEEPSEEK_API_KEY`` enables it; without a key it is ``off`` ("no API key") and never called.
``DEEPSEEK_BASE_URL`` points it elsewhere (a proxy, or a test server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from providers.openai_wire import OpenAIWireClient
from tentaculo import __version__
from tentaculo.chat.registry import (
    INTERFACE_VERSION,
    ChatRequest,
    Chunk,
    ProviderAuthError,
    ProviderContext,
    ProviderOff,
    ProviderQuotaError,
)

MODELS = ("deepseek-chat", "deepseek-reasoner")


class DeepSeekProvider:
    """The ``deepseek`` provider."""

    interface_version = INTERFACE_VERSION
    version = __version__
    models = MODELS
    default_model: str | None = "deepseek-chat"

    def __init__(self, context: ProviderContext) -> None:
        settings = context.settings
        self.status = "on"
        self.reason: str | None = None
        self._client: OpenAIWireClient | None = None
        if not settings.deepseek_api_key:
            self.status, self.reason = "off", "no API key"
            return
        self._client = OpenAIWireClient(
            label=context.name,
            http=context.http,
            base_url=settings.deepseek_base_url,
            api_key=settings.deepseek_api_key,
            connect_timeout=settings.provider_connect_timeout,
            read_timeout=settings.provider_read_timeout,
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

    async def close(self) -> None:
        """The HTTP session is the gateway's."""

"""``echo``: a chat provider that answers with the user's last message, word by word.

Options (environment of the gateway):
    TENTACULO_PLUGIN_ECHO__PREFIX     text put before the echo (default "echo: ")
    TENTACULO_PLUGIN_ECHO__DELAY_MS   pause between words (default 0)
    TENTACULO_PLUGIN_ECHO__MAX_WORDS  longest message it accepts (default 1000)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tentaculo.chat.registry import INTERFACE_VERSION, ChatRequest, Chunk, ProviderContext, ProviderRejected, Usage

__version__ = "0.1.0"


class EchoProvider:
    """Streams the last user message back."""

    interface_version = INTERFACE_VERSION
    version = __version__
    models = ("echo-1",)
    default_model = "echo-1"

    def __init__(self, context: ProviderContext) -> None:
        self.status = "on"
        self.reason: str | None = None
        self.prefix = context.options.get("prefix", "echo: ")
        self.delay = float(context.options.get("delay_ms", "0")) / 1000
        self.max_words = int(context.options.get("max_words", "1000"))

    async def start(self) -> None:
        """Nothing to connect to. A real plugin would check its backend here."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        said = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        words = said.split()
        if len(words) > self.max_words:
            raise ProviderRejected(f"echo: at most {self.max_words} words, got {len(words)}")
        pieces = [self.prefix] + [w if i == 0 else " " + w for i, w in enumerate(words)]
        for i, piece in enumerate(pieces):
            if i and self.delay:
                await asyncio.sleep(self.delay)
            yield Chunk(content=piece, model="echo-1")
        prompt = sum(len(m.content.split()) for m in request.messages)
        yield Chunk(finish_reason="stop", usage=Usage(prompt, len(words)), model="echo-1")

    async def close(self) -> None:
        """Nothing to release."""

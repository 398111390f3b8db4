"""``echo``: a chat provider that answers with the user's last message, word by word.

Options (environment of the gateway):
    TENTACULO_PLUGIN_ECHO__PREFIX     text put before the echo (default "echo: ")
    TENTACULO_PLUGIN_ECHO__DELAY_MS   pause between words (default 0)
    TENTACULO_PLUGIN_ECHO__MAX_WORDS  longest message it accepts (default 1000)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tentaculo.chat.options import Option
from tentaculo.chat.plugin import BaseProvider, ChatRequest, Chunk, ProviderRejected, Usage

__version__ = "0.1.0"


class EchoProvider(BaseProvider):
    """Streams the last user message back."""

    version = __version__
    models = ("echo-1",)
    default_model = "echo-1"
    options = (
        Option("prefix", default="echo: "),
        Option("delay_ms", float, default=0.0, minimum=0),
        Option("max_words", int, default=1000, minimum=0),
    )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        options = self.context.options
        said = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        words = said.split()
        if len(words) > options["max_words"]:
            raise ProviderRejected(f"echo: at most {options['max_words']} words, got {len(words)}")
        pieces = [options["prefix"]] + [w if i == 0 else " " + w for i, w in enumerate(words)]
        for i, piece in enumerate(pieces):
            if i and options["delay_ms"]:
                await asyncio.sleep(options["delay_ms"] / 1000)
            yield Chunk(content=piece, model="echo-1")
        prompt = sum(len(m.content.split()) for m in request.messages)
        yield Chunk(finish_reason="stop", usage=Usage(prompt, len(words)), model="echo-1")

"""The mock provider: deterministic answers for tests, demos and benchmarks.

The answer is a function of the model and the messages only (SHA-256, never ``hash()``), so it
is the same in every process and after every restart. It streams word by word and always
answers as ``mock``: it is never an implicit fallback (it is in the chain only when an operator
puts it there).

It can be told to misbehave, per request through ``metadata.mock`` or for every request through
its options (``TENTACULO_PLUGIN_MOCK__DELAY_MS`` and ``TENTACULO_PLUGIN_MOCK__FAIL``, also read as
``TENTACULO_MOCK_DELAY_MS`` and ``TENTACULO_MOCK_FAIL``)::

    {"metadata": {"mock": {"delay_ms": 20, "fail": "midstream", "words": 50}}}

``delay_ms`` waits before each chunk; ``words`` sets the answer's length (``max_tokens`` shortens it,
with ``finish_reason: "length"``); ``fail`` is one of
``before`` (unavailable before answering), ``midstream`` (unavailable after the first delta),
``stall`` (silent after the first delta), ``hang`` (silent from the start), ``rate_limited``,
``auth``, or ``bug`` (raises a non-provider exception, as a broken plugin would).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from tentaculo import __version__
from tentaculo.auth.digest import sha256
from tentaculo.chat.options import Option
from tentaculo.chat.plugin import (
    BaseProvider,
    ChatRequest,
    Chunk,
    ProviderAuthError,
    ProviderContext,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    Usage,
)

MODELS = ("mock", "mock-reasoner")
DEFAULT_WORDS = 12
MAX_WORDS = 4096
MAX_DELAY_MS = 30_000.0
FAILURES = ("before", "midstream", "stall", "hang", "rate_limited", "auth", "bug")
VOCABULARY = (
    "amber", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor",
    "indigo", "juniper", "kelp", "lagoon", "meadow", "nectar", "onyx", "pebble",
    "quartz", "river", "saffron", "tundra", "umber", "violet", "willow", "xenon",
    "yarrow", "zephyr", "acorn", "breeze", "coral", "dune", "echo", "fern",
    "glacier", "heron", "island", "jasper", "kestrel", "lichen", "maple", "nimbus",
    "orchid", "prairie", "quill", "reef", "sierra", "thistle", "upland", "vale",
    "wren", "yew", "azure", "birch", "canyon", "dawn", "estuary", "flint",
    "grove", "hollow", "iris", "jade", "knoll", "lark", "mesa", "north",
)  # fmt: skip


def _digest_bytes(seed: bytes, count: int) -> bytes:
    """``count`` bytes derived from ``seed``: the seed itself, then SHA-256 in counter mode."""
    out = seed
    counter = 0
    while len(out) < count:
        out += sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:count]


def answer_text(request: ChatRequest, model: str, words: int = DEFAULT_WORDS) -> tuple[list[str], list[str]]:
    """The deterministic answer: (content pieces, reasoning pieces), each piece one streamed delta."""
    seed = sha256(model.encode())
    for m in request.messages:
        seed.update(m.role.encode() + b"\x00" + m.content.encode() + b"\x00")
    digest = seed.digest()
    chosen = [VOCABULARY[b % len(VOCABULARY)] for b in _digest_bytes(digest, words)]
    content = [f"Mock answer {digest.hex()[:8]}: "] + [w + " " for w in chosen[:-1]] + [chosen[-1] + "."]
    reasoning: list[str] = []
    if model == "mock-reasoner":
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        reasoning = ["Considering ", f"{prompt_words} ", "word " if prompt_words == 1 else "words ", "of ", "input."]
    return content, reasoning


class MockProvider(BaseProvider):
    """The ``mock`` provider."""

    version = __version__
    models = MODELS
    default_model: str | None = "mock"
    options = (
        Option("delay_ms", float, default=0.0, minimum=0),  # pause before each chunk
        Option("fail", str, default="", choices=FAILURES),  # misbehave on every request
    )

    def __init__(self, context: ProviderContext) -> None:
        super().__init__(context)
        self._delay_ms: float = context.options["delay_ms"]
        self._fail: str = context.options["fail"]

    def _behaviour(self, metadata: Mapping[str, Any]) -> tuple[float, str, int]:
        told = metadata.get("mock") or {}
        if not isinstance(told, dict):
            raise ProviderRejected("mock: metadata.mock must be an object")
        delay = told.get("delay_ms", self._delay_ms)
        fail = told.get("fail", self._fail) or ""
        words = told.get("words", DEFAULT_WORDS)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= MAX_DELAY_MS:
            raise ProviderRejected(f"mock: metadata.mock.delay_ms must be a number from 0 to {MAX_DELAY_MS:g}")
        if fail and fail not in FAILURES:
            raise ProviderRejected(f"mock: metadata.mock.fail must be one of {', '.join(FAILURES)}")
        if isinstance(words, bool) or not isinstance(words, int) or not 1 <= words <= MAX_WORDS:
            raise ProviderRejected(f"mock: metadata.mock.words must be an integer from 1 to {MAX_WORDS}")
        return float(delay), fail, words

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        delay_ms, fail, words = self._behaviour(request.metadata)
        model = request.model or "mock"
        if model not in MODELS:
            raise ProviderRejected(f"mock: no model {model!r}; it serves {', '.join(MODELS)}")
        if fail == "hang":
            await asyncio.Event().wait()
        if fail == "before":
            raise ProviderUnavailable("mock: told to fail before answering")
        if fail == "rate_limited":
            raise ProviderRateLimited("mock: told to be rate limited", retry_after=0.01)
        if fail == "auth":
            raise ProviderAuthError("mock: told to reject the credentials")
        if fail == "bug":
            raise RuntimeError("mock: a deliberate plugin bug")
        finish = "stop"
        if request.max_tokens is not None and request.max_tokens < words:
            words, finish = request.max_tokens, "length"
        content, reasoning = answer_text(request, model, words)
        first = True
        for piece, is_reasoning in [(p, True) for p in reasoning] + [(p, False) for p in content]:
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            yield Chunk(reasoning=piece, model=model) if is_reasoning else Chunk(content=piece, model=model)
            if first:
                first = False
                if fail == "midstream":
                    raise ProviderUnavailable("mock: told to fail mid-answer")
                if fail == "stall":
                    await asyncio.Event().wait()
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        yield Chunk(finish_reason=finish, usage=Usage(prompt_tokens, len(content) + len(reasoning)), model=model)

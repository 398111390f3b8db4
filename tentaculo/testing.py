"""A conformance suite for provider plugins, to run in the plugin package's own tests.

Subclass :class:`ProviderConformance` in a module pytest collects, with a name starting with
``Test``, and provide three fixtures; every test of the suite then runs against your provider::

    import aiohttp
    import pytest
    from tentaculo.testing import ProviderConformance, make_context

    from tentaculo_echo import EchoProvider

    class TestEchoConformance(ProviderConformance):
        @pytest.fixture
        async def provider(self):
            # a started provider that answers normally
            async with aiohttp.ClientSession() as http:
                provider = EchoProvider(make_context("echo", http, EchoProvider))
                await provider.start()
                yield provider
                await provider.close()

        @pytest.fixture
        async def failing_provider(self):
            ...  # one whose stream() fails before its first delta (e.g. its server answers 503)

        @pytest.fixture
        async def stalling_provider(self):
            ...  # one that yields a first delta and then goes silent (until cancelled)

Optional fixtures: ``upstream_released`` (an ``asyncio.Event`` your fake upstream sets when the
provider's request to it ends; the cancellation tests then check the provider really let go),
``correlation_ids_seen`` (a list your fake upstream appends each ``X-Correlation-ID`` to) and
``conformance_request`` (the :class:`~tentaculo.chat.plugin.ChatRequest` used).

It needs pytest and pytest-asyncio (pytest-aiohttp brings both); the tests are marked for
pytest-asyncio, and in its strict mode async fixtures are declared with ``@pytest_asyncio.fixture``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from tentaculo.chat.options import declared_options, resolve_options
from tentaculo.chat.plugin import (
    INTERFACE_VERSION,
    STATUSES,
    Answer,
    ChatRequest,
    Chunk,
    Message,
    Provider,
    ProviderContext,
    ProviderError,
    ProviderTimeouts,
    collect,
)
from tentaculo.http.errors import PROBLEMS

CORRELATION_ID = "conformance-0001"
STEP_TIMEOUT = 5.0


def make_context(
    name: str,
    http: aiohttp.ClientSession,
    factory: object = None,
    *,
    timeouts: ProviderTimeouts | None = None,
    **options: Any,
) -> ProviderContext:
    """A :class:`ProviderContext` as the registry would build it.

    ``options`` are given as in the environment (``max_words="3"``) or already typed; with the
    plugin's ``factory``, they are checked against its declared options (defaults filled in, a
    refused value raises :class:`~tentaculo.chat.options.OptionError`), as the registry does.
    """
    return ProviderContext(name=name, http=http, options=resolve_options(name, declared_options(factory), options),
                           timeouts=timeouts or ProviderTimeouts())


async def stream_all(provider: Provider, request: ChatRequest, *, timeout: float = STEP_TIMEOUT) -> list[Chunk]:
    """Every chunk of one stream, with a time limit per chunk."""
    chunks: list[Chunk] = []
    iterator = provider.stream(request).__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(iterator.__anext__(), timeout)
        except StopAsyncIteration:
            return chunks
        chunks.append(chunk)


async def _first_delta(iterator: AsyncIterator[Chunk]) -> Chunk:
    while True:
        chunk = await asyncio.wait_for(iterator.__anext__(), STEP_TIMEOUT)
        if chunk.is_delta:
            return chunk


@pytest.mark.asyncio
class ProviderConformance:
    """The provider contract of :mod:`tentaculo.providers`, as tests."""

    @pytest.fixture
    def conformance_request(self) -> ChatRequest:
        return ChatRequest(
            messages=(Message("system", "You are terse."), Message("user", "Name three rivers.")),
            correlation_id=CORRELATION_ID,
        )

    @pytest.fixture
    def upstream_released(self) -> asyncio.Event | None:
        return None

    @pytest.fixture
    def correlation_ids_seen(self) -> list[str] | None:
        return None

    async def test_declares_the_interface(self, provider: Provider) -> None:
        assert provider.interface_version == INTERFACE_VERSION
        assert isinstance(provider, Provider)
        assert isinstance(provider.version, str) and provider.version
        assert all(isinstance(m, str) and m for m in provider.models)
        if provider.default_model is not None and provider.models:
            assert provider.default_model in provider.models

    async def test_reports_a_valid_status(self, provider: Provider) -> None:
        assert provider.status in STATUSES
        assert provider.status != "off", "the provider fixture must be enabled"
        if provider.status != "on":
            assert isinstance(provider.reason, str) and provider.reason

    async def test_streams_deltas_then_one_final_chunk(self, provider: Provider, conformance_request: ChatRequest) -> None:
        chunks = await stream_all(provider, conformance_request)
        assert chunks and all(isinstance(c, Chunk) for c in chunks)
        finals = [i for i, c in enumerate(chunks) if c.finish_reason]
        assert finals == [len(chunks) - 1], "exactly one chunk carries finish_reason, and it is the last"
        assert any(c.is_delta for c in chunks[:-1]) or chunks[-1].is_delta, "the answer has text"

    async def test_reports_usage_on_the_final_chunk(self, provider: Provider, conformance_request: ChatRequest) -> None:
        chunks = await stream_all(provider, conformance_request)
        usage = chunks[-1].usage
        assert usage is not None, "usage comes with the final chunk"
        assert isinstance(usage.prompt_tokens, int) and usage.prompt_tokens >= 0
        assert isinstance(usage.completion_tokens, int) and usage.completion_tokens >= 1

    async def test_collects_into_one_answer(self, provider: Provider, conformance_request: ChatRequest) -> None:
        answer = await asyncio.wait_for(collect(provider.stream(conformance_request)), STEP_TIMEOUT * 4)
        assert isinstance(answer, Answer)
        assert answer.content or answer.reasoning
        assert answer.finish_reason

    async def test_sends_the_correlation_id(
        self, provider: Provider, conformance_request: ChatRequest, correlation_ids_seen: list[str] | None
    ) -> None:
        if correlation_ids_seen is None:
            pytest.skip("no correlation_ids_seen fixture: the provider has no upstream to check")
        await stream_all(provider, conformance_request)
        assert conformance_request.correlation_id in correlation_ids_seen

    async def test_failure_raises_a_provider_error(self, failing_provider: Provider, conformance_request: ChatRequest) -> None:
        with pytest.raises(ProviderError) as caught:
            await stream_all(failing_provider, conformance_request)
        assert str(caught.value), "the error says what went wrong"
        assert caught.value.code in PROBLEMS

    async def test_cancelling_a_pending_read_releases_the_upstream(
        self, stalling_provider: Provider, conformance_request: ChatRequest, upstream_released: asyncio.Event | None
    ) -> None:
        iterator = stalling_provider.stream(conformance_request).__aiter__()
        await _first_delta(iterator)
        pending = asyncio.ensure_future(iterator.__anext__())
        for _ in range(5):  # let the read reach its await
            await asyncio.sleep(0)
        assert not pending.done(), "the stalling provider must not produce a second chunk"
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(pending, STEP_TIMEOUT)
        await asyncio.wait_for(_aclose(iterator), STEP_TIMEOUT)
        if upstream_released is not None:
            await asyncio.wait_for(upstream_released.wait(), STEP_TIMEOUT)

    async def test_closing_after_the_first_delta_releases_the_upstream(
        self, stalling_provider: Provider, conformance_request: ChatRequest, upstream_released: asyncio.Event | None
    ) -> None:
        iterator = stalling_provider.stream(conformance_request).__aiter__()
        await _first_delta(iterator)
        await asyncio.wait_for(_aclose(iterator), STEP_TIMEOUT)
        if upstream_released is not None:
            await asyncio.wait_for(upstream_released.wait(), STEP_TIMEOUT)


async def _aclose(iterator: AsyncIterator[Chunk]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def chat_request(text: str = "hello", *, metadata: Mapping[str, Any] | None = None, **kwargs: Any) -> ChatRequest:
    """A one-message request, for tests."""
    return ChatRequest((Message("user", text),), metadata=metadata or {}, **kwargs)

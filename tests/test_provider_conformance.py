"""The plugin conformance kit, run against the three built-in providers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from providers.deepseek import DeepSeekProvider
from providers.local import LocalProvider
from providers.mock import MockProvider
from tentaculo.chat.plugin import ProviderTimeouts
from tentaculo.testing import ProviderConformance, make_context
from tests.openai_server import Hang, OpenAIWireServer, Stall, Status

FAST = ProviderTimeouts(connect=2.0, read=5.0)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIWireServer]:
    server = OpenAIWireServer(api_key="sk-conformance-key-0001", prefix="/v1")
    await server.start()
    yield server
    await server.close()


async def _started(provider):
    await provider.start()
    return provider


class TestMockConformance(ProviderConformance):
    @pytest.fixture
    async def provider(self, http):
        return await _started(MockProvider(make_context("mock", http, MockProvider, timeouts=FAST)))

    @pytest.fixture
    async def failing_provider(self, http):
        return await _started(MockProvider(make_context("mock", http, MockProvider, fail="before")))

    @pytest.fixture
    async def stalling_provider(self, http):
        return await _started(MockProvider(make_context("mock", http, MockProvider, fail="stall")))


class TestDeepSeekConformance(ProviderConformance):
    @pytest.fixture
    def context(self, http, upstream):
        return make_context("deepseek", http, DeepSeekProvider, timeouts=FAST, api_key=upstream.api_key,
                            base_url=upstream.base_url)

    @pytest.fixture
    async def provider(self, context):
        return await _started(DeepSeekProvider(context))

    @pytest.fixture
    async def failing_provider(self, context, upstream):
        upstream.default = Status(503, "Server overloaded, please try again later")
        return await _started(DeepSeekProvider(context))

    @pytest.fixture
    async def stalling_provider(self, context, upstream):
        upstream.default = Stall(after=1)
        return await _started(DeepSeekProvider(context))

    @pytest.fixture
    def upstream_released(self, upstream):
        return upstream.released

    @pytest.fixture
    def correlation_ids_seen(self, upstream):
        return upstream.correlation_ids


class TestLocalConformance(ProviderConformance):
    @pytest.fixture
    async def local_upstream(self):
        server = OpenAIWireServer(dialect="openai", models=("qwen2.5:0.5b",), prefix="/v1")
        await server.start()
        yield server
        await server.close()

    @pytest.fixture
    def context(self, http, local_upstream):
        return make_context("local", http, LocalProvider, timeouts=FAST, base_url=local_upstream.base_url)

    @pytest.fixture
    async def provider(self, context):
        return await _started(LocalProvider(context))

    @pytest.fixture
    async def failing_provider(self, context, local_upstream):
        provider = await _started(LocalProvider(context))
        local_upstream.default = Status(500, "model failed to load")
        return provider

    @pytest.fixture
    async def stalling_provider(self, context, local_upstream):
        local_upstream.default = Stall(after=1)
        return await _started(LocalProvider(context))

    @pytest.fixture
    def upstream_released(self, local_upstream):
        return local_upstream.released

    @pytest.fixture
    def correlation_ids_seen(self, local_upstream):
        return local_upstream.correlation_ids


async def test_conformance_failure_is_caught_for_a_hanging_upstream(http, upstream) -> None:
    """The kit's own timeout turns a provider that never answers into a failed test, not a hang."""
    upstream.default = Hang()
    context = make_context("deepseek", http, DeepSeekProvider, timeouts=FAST, api_key=upstream.api_key,
                           base_url=upstream.base_url)
    provider = await _started(DeepSeekProvider(context))
    from tentaculo import testing

    with pytest.raises(TimeoutError):
        await testing.stream_all(provider, testing.chat_request("hi"), timeout=0.3)
    await upstream.released.wait()

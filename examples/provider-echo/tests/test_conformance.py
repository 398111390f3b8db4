"""Run tentaculo's provider conformance suite against the echo provider."""

import aiohttp
import pytest

from tentaculo.testing import ProviderConformance, make_context
from tentaculo_echo import EchoProvider


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


class TestEchoConformance(ProviderConformance):
    @pytest.fixture
    async def provider(self, http):
        provider = EchoProvider(make_context("echo", http, EchoProvider))
        await provider.start()
        yield provider
        await provider.close()

    @pytest.fixture
    async def failing_provider(self, http):
        return EchoProvider(make_context("echo", http, EchoProvider, max_words="0"))  # every message is too long

    @pytest.fixture
    async def stalling_provider(self, http):
        return EchoProvider(make_context("echo", http, EchoProvider, delay_ms="600000"))  # one word, then silence


async def test_echoes_the_last_user_message(http):
    from tentaculo.chat.plugin import collect
    from tentaculo.testing import chat_request

    provider = EchoProvider(make_context("echo", http, EchoProvider, prefix="> "))
    answer = await collect(provider.stream(chat_request("hello out there")))
    assert answer.content == "> hello out there"
    assert answer.usage.completion_tokens == 3

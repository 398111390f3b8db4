"""ProviderRegistry: discovery, isolation of broken plugins, allow-list, circuit breaker, hooks."""

from __future__ import annotations

import dataclasses
import importlib
import io
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from providers.mock import answer_text
from tentaculo.chat.registry import (
    ENTRY_POINT_GROUP,
    AllProvidersFailed,
    CircuitBreaker,
    ProviderRegistry,
    StatusChange,
    collect,
)
from tentaculo.settings import Settings, SettingsError
from tentaculo.testing import chat_request
from tests.chat_helpers import chat_gateway
from tests.plugin_samples import ep

BASE = Settings(provider_start_timeout=0.5, provider_retry_backoff=0.0)


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def registry_of(http, *entry_points: EntryPoint, **changes) -> ProviderRegistry:
    settings = dataclasses.replace(BASE, **changes)
    registry = ProviderRegistry(settings, http, entry_points=entry_points)
    await registry.start()
    return registry


async def test_built_in_providers_register_through_entry_points() -> None:
    found = {e.name: e.value for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert found["mock"] == "providers.mock:MockProvider"
    assert found["deepseek"] == "providers.deepseek:DeepSeekProvider"
    assert found["local"] == "providers.local:LocalProvider"


async def test_broken_plugins_are_isolated_with_reasons(http) -> None:
    with capture_logs() as logs:
        registry = await registry_of(
        http,
            ep("good", "tests.plugin_samples:Working"),
            ep("missing", "tests.no_such_module:Provider"),
            ep("nostart", "tests.plugin_samples:FailsToStart"),
            ep("slow", "tests.plugin_samples:StartsForever"),
            ep("noinit", "tests.plugin_samples:FailsToConstruct"),
            ep("future", "tests.plugin_samples:FutureInterface"),
            ep("thing", "tests.plugin_samples:NotAProvider"),
            provider_chain=("good",),
        )
    logged = {e["event"] for e in logs if e["log_level"] == "error"}
    assert {"provider_import_failed", "provider_start_failed", "provider_start_timeout", "provider_create_failed",
            "provider_interface_mismatch", "provider_incomplete"} <= logged
    states = {p["name"]: (p["status"], p["reason"]) for p in registry.snapshot()}
    assert states["good"] == ("on", None)
    assert states["missing"][0] == "error" and "failed to import: ModuleNotFoundError" in states["missing"][1]
    assert states["nostart"] == ("error", "failed to start: ConnectionError: license server unreachable")
    assert states["slow"] == ("error", "did not start within 0.5 s")
    assert states["noinit"][0] == "error" and states["noinit"][1].startswith("failed to create: KeyError")
    assert states["future"] == ("error", "interface version 2 is not supported (this gateway speaks 1)")
    assert states["thing"][0] == "error" and "missing version" in states["thing"][1]
    stream = await registry.open(chat_request("hi"))
    assert (await collect(stream)).content == "hi"
    with pytest.raises(AllProvidersFailed) as failed:
        await registry.open(chat_request("hi"), "nostart")
    assert failed.value.attempts[0].status == "skipped"
    await registry.close()


async def test_plugin_options_come_from_settings(http) -> None:
    settings = Settings.from_env({"TENTACULO_PLUGIN_MY_PLUGIN__GREETING": "ahoy"})
    registry = ProviderRegistry(dataclasses.replace(settings, provider_chain=("my-plugin",)), http,
                                entry_points=[ep("my-plugin", "tests.plugin_samples:Working")])
    await registry.start()
    assert (await collect(await registry.open(chat_request("x")))).content == "ahoy"
    await registry.close()


async def test_allow_list_limits_what_loads(http) -> None:
    registry = await registry_of(http, ep("good", "tests.plugin_samples:Working"),
                                 ep("missing", "tests.no_such_module:Provider"), providers=("good",))
    assert registry.names() == ["good"]
    await registry.close()


async def test_stream_that_raises_when_called_is_a_provider_error(http) -> None:
    registry = await registry_of(http, ep("odd", "tests.plugin_samples:RaisesOnCall"), provider_chain=("odd",))
    with pytest.raises(AllProvidersFailed) as failed:
        await registry.open(chat_request("x"))
    assert failed.value.attempts[0].error == "error: odd failed: ValueError"
    await registry.close()


async def test_a_chunk_that_is_not_a_chunk_is_a_provider_error(http) -> None:
    registry = await registry_of(http, ep("odd", "tests.plugin_samples:YieldsStrings"), provider_chain=("odd",))
    with pytest.raises(AllProvidersFailed) as failed:
        await registry.open(chat_request("x"))
    assert failed.value.attempts[0].error == "protocol: odd yielded str, not a Chunk"
    await registry.close()


def test_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, reset_seconds=10, clock=lambda: now[0])
    assert breaker.allow() and breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    assert breaker.snapshot()["retry_in_s"] == 10
    now[0] = 10.0
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.failure()
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.failures == 0


async def test_status_changes_reach_listeners(http) -> None:
    now = [0.0]
    settings = dataclasses.replace(BASE, provider_chain=("mock",), breaker_failures=2, breaker_reset_seconds=5,
                                   provider_retries=0)
    registry = ProviderRegistry(settings, http, entry_points=[ep("mock", "providers.mock:MockProvider")],
                                clock=lambda: now[0])
    changes: list[StatusChange] = []
    registry.on_status_change.append(changes.append)
    registry.on_status_change.append(lambda change: 1 / 0)  # a broken listener must not break chats
    with capture_logs() as logs:
        await registry.start()
        assert [(c.status, c.circuit, c.previous_status) for c in changes] == [("on", "closed", None)]
        failing = chat_request("x", metadata={"mock": {"fail": "before"}})
        for _ in range(2):
            with pytest.raises(AllProvidersFailed):
                await registry.open(failing)
    assert any(e["event"] == "provider_callback_failed" for e in logs)
    now[0] = 5.0
    await collect(await registry.open(chat_request("x")))
    assert [(c.status, c.circuit) for c in changes] == [
        ("on", "closed"), ("degraded", "closed"), ("error", "open"), ("on", "closed")]
    assert changes[2].reason.startswith("circuit open after 2 consecutive failures")
    await registry.close()


async def test_cancelled_call_leaves_the_breaker_alone(http) -> None:
    registry = await registry_of(http, ep("mock", "providers.mock:MockProvider"), provider_chain=("mock",),
                                 breaker_failures=1)
    stream = await registry.open(chat_request("x", metadata={"mock": {"fail": "stall"}}))
    await stream.aclose()
    assert registry.get("mock").breaker.state == "closed"
    await registry.close()


def test_mock_answers_are_the_same_in_another_process() -> None:
    request = chat_request("Is this deterministic?")
    here = "".join(answer_text(request, "mock")[0])
    code = textwrap.dedent("""
        from providers.mock import answer_text
        from tentaculo.testing import chat_request
        print("".join(answer_text(chat_request("Is this deterministic?"), "mock")[0]))
    """)
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": "", "PYTHONPATH": ":".join(sys.path)}).stdout
    assert there.strip() == here
    assert here != "".join(answer_text(chat_request("Is this deterministic!"), "mock")[0])


def test_provider_settings_are_validated() -> None:
    env = {"TENTACULO_PROVIDERS": "mock, local", "TENTACULO_PROVIDER_CHAIN": "local,mock",
           "DEEPSEEK_API_KEY": "sk-abc", "DEEPSEEK_BASE_URL": "http://127.0.0.1:9/"}
    settings = Settings.from_env(env)
    assert settings.providers == ("mock", "local") and settings.provider_chain == ("local", "mock")
    assert settings.provider_options["deepseek"]["api_key"] == "sk-abc" and "sk-abc" not in repr(settings)
    for var, value in (("TENTACULO_PROVIDER_READ_TIMEOUT", "0"), ("TENTACULO_BREAKER_FAILURES", "0")):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({var: value})
        assert caught.value.variable == var


async def test_installed_broken_plugin_shows_error_and_gateway_serves(aiohttp_client, settings, admin_headers,
                                                                       tmp_path: Path, monkeypatch,
                                                                       unused_tcp_port) -> None:
    """A third-party distribution whose module raises at import: the gateway starts regardless."""
    dist = tmp_path / "broken_tentaculo_plugin-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-tentaculo-plugin\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[tentaculo.providers]\nbroken = broken_tentaculo_plugin:Provider\n")
    (tmp_path / "broken_tentaculo_plugin.py").write_text("raise RuntimeError('needs a GPU driver')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    gw = await chat_gateway(aiohttp_client, settings, providers=(),
                            provider_options={"local": {"base_url": f"http://127.0.0.1:{unused_tcp_port}/v1"}})
    listing = await (await gw.get("/operator/api/providers", headers=admin_headers)).json()
    broken = next(p for p in listing["providers"] if p["name"] == "broken")
    assert broken["status"] == "error" and broken["distribution"] == "broken-tentaculo-plugin"
    assert broken["version"] == "0.3" and "RuntimeError: needs a GPU driver" in broken["reason"]
    resp = await gw.post("/operator/api/chat", json={"message": "hi", "provider": "mock"}, headers=admin_headers)
    assert resp.status == 200


async def test_cli_lists_providers_with_status(unused_tcp_port) -> None:
    from tentaculo.cli import list_providers

    out = io.StringIO()
    settings = Settings(providers=("mock", "deepseek", "local"), provider_chain=("local", "mock"),
                        provider_options={"local": {"base_url": f"http://127.0.0.1:{unused_tcp_port}/v1"}})
    assert await list_providers(settings, out) == 0
    lines = {line.split()[0]: line for line in out.getvalue().splitlines()[1:-1]}
    assert lines["deepseek"].split()[1] == "off" and lines["deepseek"].endswith("no API key")
    assert lines["local"].split()[1] == "error" and "cannot connect" in lines["local"]
    assert lines["mock"].split()[1:3] == ["on", "closed"]
    assert out.getvalue().splitlines()[-1] == 'chain (provider "auto"): local, mock'

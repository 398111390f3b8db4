"""Plugin options: declared by each plugin, read from TENTACULO_PLUGIN_<NAME>__<OPTION> (or an alias),
checked at load time, secret ones never shown; a plugin's context holds nothing else of the gateway."""

from __future__ import annotations

import dataclasses
import io
import json
from importlib.metadata import EntryPoint
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from tentaculo.chat.options import OptionError
from tentaculo.chat.registry import ProviderRegistry, collect
from tentaculo.logging import shared_processors
from tentaculo.settings import Settings
from tentaculo.testing import chat_request, make_context
from tests.chat_helpers import chat_gateway
from tests.conftest import ADMIN_TOKEN
from tests.plugin_samples import Declares, ep

LICENCE = "lic-7f3a9c0e1b2d4f68"  # a secret whose option name ("licence") does not sound like one


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def started(http, env: dict[str, str], *entry_points: EntryPoint, **changes) -> ProviderRegistry:
    settings = dataclasses.replace(Settings.from_env(env), provider_start_timeout=2.0, **changes)
    registry = ProviderRegistry(settings, http, entry_points=entry_points)
    await registry.start()
    return registry


def states(registry: ProviderRegistry) -> dict[str, tuple[str, str | None]]:
    return {p["name"]: (p["status"], p["reason"]) for p in registry.snapshot()}


async def test_declared_options_arrive_typed(http) -> None:
    env = {"TENTACULO_PLUGIN_TYPED__GREETING": "ahoy", "TENTACULO_PLUGIN_TYPED__RETRIES": "5"}
    registry = await started(http, env, ep("typed", "tests.plugin_samples:Declares"), provider_chain=("typed",))
    assert (await collect(await registry.open(chat_request("x")))).content == "ahoy x5"
    await registry.close()
    defaults = await started(http, {}, ep("typed", "tests.plugin_samples:Declares"), provider_chain=("typed",))
    assert (await collect(await defaults.open(chat_request("x")))).content == "hello x2"
    await defaults.close()


async def test_a_bad_value_is_a_load_error_naming_the_variable(http) -> None:
    env = {"TENTACULO_PLUGIN_MY_PLUGIN__RETRIES": "abc", "TENTACULO_PLUGIN_OTHER__RETRIES": "-1",
           "TENTACULO_PLUGIN_TYPO__GRETING": "hi"}
    with capture_logs() as logs:
        registry = await started(http, env, ep("my-plugin", "tests.plugin_samples:Declares"),
                                 ep("other", "tests.plugin_samples:Declares"),
                                 ep("typo", "tests.plugin_samples:Declares"), ep("mock", "providers.mock:MockProvider"))
    found = states(registry)
    assert found["my-plugin"] == ("error", "TENTACULO_PLUGIN_MY_PLUGIN__RETRIES: expected an integer, got 'abc'")
    assert found["other"] == ("error", "TENTACULO_PLUGIN_OTHER__RETRIES: must be at least 0")
    assert found["typo"] == ("error", "TENTACULO_PLUGIN_TYPO__GRETING: typo has no such option "
                                      "(its options: greeting, retries, licence)")
    assert found["mock"] == ("on", None)  # one plugin's bad option stops no other
    invalid = [e for e in logs if e["event"] == "provider_options_invalid"]
    assert {e["provider"] for e in invalid} == {"my-plugin", "other", "typo"}
    assert all(e["log_level"] == "error" for e in invalid)
    await registry.close()


async def test_the_cli_shows_a_bad_option_as_the_providers_error() -> None:
    from tentaculo.cli import list_providers

    out = io.StringIO()
    settings = Settings.from_env({"TENTACULO_PROVIDERS": "mock", "TENTACULO_PLUGIN_MOCK__DELAY_MS": "slow"})
    await list_providers(settings, out)
    [mock] = [line for line in out.getvalue().splitlines() if line.startswith("mock ")]
    assert mock.split()[1] == "error"
    assert mock.endswith("TENTACULO_PLUGIN_MOCK__DELAY_MS: expected a number, got 'slow'")


async def test_a_refused_secret_is_not_quoted(http) -> None:
    with pytest.raises(OptionError) as refused:
        make_context("x", http, Declares, retries="1", licence=12345)
    assert refused.value.variable == "TENTACULO_PLUGIN_X__LICENCE" and "12345" not in str(refused.value)


async def test_aliases_set_the_built_in_plugins_options(http, unused_tcp_port) -> None:
    base = f"http://127.0.0.1:{unused_tcp_port}/v1"
    env = {"DEEPSEEK_API_KEY": "sk-alias-0123456789", "TENTACULO_LOCAL_BASE_URL": base,
           "TENTACULO_LOCAL_MODEL": "llama3.2:1b", "TENTACULO_MOCK_FAIL": "before", "TENTACULO_MOCK_DELAY_MS": "1"}
    registry = await started(http, env, ep("deepseek", "providers.deepseek:DeepSeekProvider"),
                             ep("local", "providers.local:LocalProvider"), ep("mock", "providers.mock:MockProvider"))
    assert states(registry)["deepseek"] == ("on", None)
    local = registry.get("local").snapshot(registry.chain)
    assert local["default_model"] == "llama3.2:1b" and f"127.0.0.1:{unused_tcp_port}" in local["reason"]
    mock = registry.get("mock").provider
    assert mock is not None and (mock.context.options["fail"], mock.context.options["delay_ms"]) == ("before", 1.0)
    await registry.close()


async def test_a_bad_alias_names_the_alias_and_the_plugin_variable_wins(http) -> None:
    env = {"DEEPSEEK_API_KEY": "sk-alias-0123456789", "DEEPSEEK_BASE_URL": "ftp://x", "TENTACULO_MOCK_FAIL": "sometimes"}
    entry_points = (ep("deepseek", "providers.deepseek:DeepSeekProvider"), ep("mock", "providers.mock:MockProvider"))
    registry = await started(http, env, *entry_points)
    assert states(registry)["deepseek"] == ("error", "DEEPSEEK_BASE_URL: must be an http:// or https:// URL")
    assert states(registry)["mock"] == ("error", "TENTACULO_MOCK_FAIL: must be one of before, midstream, stall, "
                                                 "hang, rate_limited, auth, bug")
    await registry.close()
    env["TENTACULO_PLUGIN_DEEPSEEK__BASE_URL"] = "http://127.0.0.1:9/"
    registry = await started(http, env, *entry_points)
    assert states(registry)["deepseek"] == ("on", None)
    await registry.close()


async def test_the_context_holds_the_plugins_options_and_nothing_of_the_gateway(http) -> None:
    env = {"TENTACULO_ADMIN_TOKEN": ADMIN_TOKEN, "TENTACULO_PLUGIN_D__LICENCE": LICENCE,
           "TENTACULO_EVENT_TICKET_SECRET": "t" * 40}
    registry = await started(http, env, ep("d", "tests.plugin_samples:Declares"))
    provider = registry.get("d").provider
    assert provider is not None
    context = provider.context
    assert context.name == "d" and context.http is http and context.options["licence"] == LICENCE
    assert not hasattr(context, "settings") and not any("admin" in name or "token" in name for name in dir(context))
    assert not any(isinstance(getattr(context, f.name), Settings) for f in dataclasses.fields(context))
    assert set(context.options) == {"greeting", "retries", "licence"}
    for shown in (repr(context), str(context), repr(context.options), repr(provider.__dict__)):
        assert LICENCE not in shown and ADMIN_TOKEN not in shown
    assert "licence=[redacted]" in repr(context.options) and "greeting='hello'" in repr(context.options)
    await registry.close()


async def test_a_declared_secret_never_shows_in_status_providers_chats_or_logs(
        aiohttp_client, settings, admin_headers, tmp_path: Path, monkeypatch) -> None:
    dist = tmp_path / "careless_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: careless-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tentaculo.providers]\ncareless = tests.plugin_samples:SpillsItsSecret\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with capture_logs(processors=shared_processors([])) as logs:
        gw = await chat_gateway(aiohttp_client, settings, providers=("careless", "mock"),
                                provider_chain=("careless", "mock"), provider_retries=0,
                                provider_options={"careless": {"licence": LICENCE}})
        chat = await gw.post("/operator/api/chat", json={"message": "hi"}, headers=admin_headers)
        refused = await gw.post("/operator/api/chat", json={"message": "hi", "provider": "careless"},
                                headers=admin_headers)
        status = await gw.get("/operator/api/status", headers=admin_headers)
        providers = await gw.get("/operator/api/providers", headers=admin_headers)
    bodies = {"chat": await chat.text(), "refused": await refused.text(), "status": await status.text(),
              "providers": await providers.text()}
    careless = next(p for p in json.loads(bodies["providers"])["providers"] if p["name"] == "careless")
    assert careless["status"] == "degraded" and "licence [redacted] refused" in careless["reason"]
    assert json.loads(bodies["chat"])["provider"] == "mock"
    assert any(e["event"] == "licence_in_use" and e["detail"] == "licence [redacted]" for e in logs)
    for name, text in {**bodies, "logs": json.dumps(logs, default=str)}.items():
        assert LICENCE not in text, name

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
import structlog
from structlog.testing import capture_logs

from tentaculo.chat.options import Option, OptionError
from tentaculo.chat.registry import ProviderRegistry, collect
from tentaculo.logging import shared_processors
from tentaculo.settings import Settings
from tentaculo.testing import chat_request, make_context
from tests.chat_helpers import chat_gateway
from tests.conftest import ADMIN_TOKEN
from tests.plugin_samples import Declares, TakesANumber, ep

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


SECRET = "hunter2-SECRET-4b1d"  # a secret option's value, in tests of what a refusal may say


def as_written() -> list:
    """The log processors of a running gateway up to rendering: scrubbed, tracebacks as scrubbed text."""
    pre = shared_processors([])
    return [*pre, structlog.processors.format_exc_info, pre[-1]]


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **plugins: str) -> None:
    """Install a distribution whose entry points are ``plugins`` (name -> object reference)."""
    dist = tmp_path / "odd_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: odd-plugins\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in plugins.items())
    (dist / "entry_points.txt").write_text(f"[tentaculo.providers]\n{lines}")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize(("sample", "option", "reason"), [
    ("SecretCheckQuotes", "credential", "the value is not valid"),  # its ValueError quotes the value
    ("SecretCheckBreaks", "credential", "rejected by the plugin's check"),  # a KeyError holding the value
    ("SecretNumber", "pin", "expected an integer"),  # text for a secret int
])
async def test_a_refused_secret_is_a_load_error_that_never_shows_it(
        aiohttp_client, settings, admin_headers, tmp_path: Path, monkeypatch, sample, option, reason) -> None:
    install(tmp_path, monkeypatch, p1=f"tests.plugin_samples:{sample}")
    with capture_logs(processors=as_written()) as logs:
        gw = await chat_gateway(aiohttp_client, settings, providers=("p1", "mock"),
                                provider_options={"p1": {option: SECRET}})
        chat = await gw.post("/operator/api/chat", json={"message": "hi"}, headers=admin_headers)
        status = await gw.get("/operator/api/status", headers=admin_headers)
        providers = await gw.get("/operator/api/providers", headers=admin_headers)
    assert chat.status == 200 and (await chat.json())["provider"] == "mock"  # the gateway still serves
    bodies = {"status": await status.text(), "providers": await providers.text()}
    p1 = next(p for p in json.loads(bodies["providers"])["providers"] if p["name"] == "p1")
    assert (p1["status"], p1["reason"]) == ("error", f"TENTACULO_PLUGIN_P1__{option.upper()}: {reason}")
    assert any(e["event"] == "provider_options_invalid" and e["provider"] == "p1" for e in logs)
    for name, text in {**bodies, "logs": json.dumps(logs, default=str)}.items():
        assert "hunter2" not in text, name


async def test_a_check_that_raises_is_a_load_error_not_a_failed_start(http) -> None:
    env = {"TENTACULO_PLUGIN_P1__CREDENTIAL": SECRET, "TENTACULO_PLUGIN_P2__REGION": "eu-1",
           "TENTACULO_PLUGIN_P3__CREDENTIAL": SECRET}
    with capture_logs(processors=as_written()) as logs:
        registry = await started(http, env, ep("p1", "tests.plugin_samples:SecretCheckBreaks"),
                                 ep("p2", "tests.plugin_samples:CheckBreaks"),
                                 ep("p3", "tests.plugin_samples:SecretCheckQuotes"),
                                 ep("mock", "providers.mock:MockProvider"), provider_chain=("p1", "p2", "mock"))
    found = states(registry)
    assert found["p1"] == ("error", "TENTACULO_PLUGIN_P1__CREDENTIAL: rejected by the plugin's check")
    assert found["p2"] == ("error", "TENTACULO_PLUGIN_P2__REGION: rejected by the plugin's check: "
                                    "TypeError: cannot use eu-1")  # not a secret: what the check said helps
    assert found["p3"] == ("error", "TENTACULO_PLUGIN_P3__CREDENTIAL: the value is not valid")
    assert found["mock"] == ("on", None)
    assert (await collect(await registry.open(chat_request("x")))).content
    assert "hunter2" not in json.dumps([found, logs], default=str)
    await registry.close()


async def test_a_secret_is_scrubbed_from_the_log_before_its_check_runs(http) -> None:
    env = {"TENTACULO_PLUGIN_P1__CREDENTIAL": SECRET}
    with capture_logs(processors=as_written()) as logs:
        registry = await started(http, env, ep("p1", "tests.plugin_samples:SecretCheckLogs"))
    assert states(registry)["p1"] == ("on", None)
    assert any(e["event"] == "option_checked" and e["detail"] == "checking [redacted]" for e in logs)
    assert "hunter2" not in json.dumps(logs, default=str)
    await registry.close()


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
async def test_a_number_option_must_be_finite(http, value) -> None:
    env = {"TENTACULO_PLUGIN_MOCK__DELAY_MS": value, "TENTACULO_PLUGIN_RATIO__RATIO": value}
    registry = await started(http, env, ep("mock", "providers.mock:MockProvider"),
                             ep("ratio", "tests.plugin_samples:TakesANumber"), ep("w", "tests.plugin_samples:Working"),
                             provider_chain=("mock", "ratio", "w"))
    found = states(registry)
    assert found["mock"] == ("error", f"TENTACULO_PLUGIN_MOCK__DELAY_MS: expected a finite number, got {value!r}")
    assert found["ratio"] == ("error", f"TENTACULO_PLUGIN_RATIO__RATIO: expected a finite number, got {value!r}")
    assert (await collect(await registry.open(chat_request("x")))).content == "hi"  # w still answers
    await registry.close()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
async def test_a_typed_number_option_must_be_finite(http, value) -> None:
    with pytest.raises(OptionError) as refused:
        make_context("x", http, TakesANumber, ratio=value)
    assert str(refused.value) == "TENTACULO_PLUGIN_X__RATIO: expected a finite number"


async def test_a_declaration_that_cannot_apply_names_the_variable(http) -> None:
    class Odd(Declares):
        options = (Option("level", minimum=1, secret=True),)  # a minimum for text

    with pytest.raises(OptionError) as refused:
        make_context("x", http, Odd, level=SECRET)
    assert str(refused.value) == "TENTACULO_PLUGIN_X__LEVEL: its declaration cannot check the value (TypeError)"

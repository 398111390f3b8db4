"""Settings come from TENTACULO_* variables and a bad one is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tentaculo.settings import Settings, SettingsError


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.database_url, s.redis_url) == ("127.0.0.1", 8000, None, None)


def test_values_are_parsed_by_type() -> None:
    s = Settings.from_env(
        {
            "TENTACULO_PORT": "9001",
            "TENTACULO_AUDIT_FLUSH_SECONDS": "0.5",
            "TENTACULO_MIGRATE_ON_START": "no",
            "TENTACULO_STATE_DIR": "/var/lib/tentaculo",
            "TENTACULO_DATABASE_URL": "postgresql://u@db/tentaculo",
        }
    )
    assert s.port == 9001 and s.audit_flush_seconds == 0.5 and s.migrate_on_start is False
    assert s.state_dir == Path("/var/lib/tentaculo") and s.database_url == "postgresql://u@db/tentaculo"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TENTACULO_PORT", "eighty"),
        ("TENTACULO_PORT", "70000"),
        ("TENTACULO_MIGRATE_ON_START", "maybe"),
        ("TENTACULO_DATABASE_URL", "mysql://x"),
        ("TENTACULO_REDIS_URL", "http://x"),
        ("TENTACULO_ADMIN_TOKEN", "short"),
        ("TENTACULO_LOG_FORMAT", "xml"),
        ("TENTACULO_AUDIT_BUFFER", "0"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({variable: value})
    assert info.value.variable == variable
    assert str(info.value).startswith(variable)


def test_admin_token_is_not_in_repr() -> None:
    s = Settings.from_env({"TENTACULO_ADMIN_TOKEN": "a-very-secret-admin-token"})
    assert "a-very-secret-admin-token" not in repr(s)


def test_a_plugins_secret_option_never_shows_in_a_repr_and_is_scrubbed_from_logs() -> None:
    from tentaculo.settings import secret_values

    env = {"TENTACULO_PLUGIN_ECHO__API_KEY": "sk-echo-secret-1234567", "TENTACULO_PLUGIN_ECHO__MODEL": "echo-1"}
    settings = Settings.from_env(env)
    assert settings.provider_options["echo"]["api_key"] == "sk-echo-secret-1234567"
    assert "sk-echo-secret" not in repr(settings)
    assert "sk-echo-secret-1234567" in secret_values(settings)
    assert "echo-1" not in secret_values(settings)  # a model name is no secret


def test_workers_is_a_number_or_auto() -> None:
    from tentaculo.settings import available_cores

    assert Settings.from_env({}).workers == 1
    assert Settings.from_env({"TENTACULO_WORKERS": "4"}).workers == 4
    assert Settings.from_env({"TENTACULO_WORKERS": "AUTO"}).workers == available_cores() >= 1
    for bad in ("0", "-2", "two", "1.5", "257"):
        with pytest.raises(SettingsError) as exc:
            Settings.from_env({"TENTACULO_WORKERS": bad})
        assert exc.value.variable == "TENTACULO_WORKERS", bad

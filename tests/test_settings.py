"""Settings come from TENTACULO_* variables and a bad one is named."""

from __future__ import annotations

from dataclasses import dataclass, field
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



@dataclass(frozen=True, slots=True)
class _WithAList(Settings):
    retry_delays: list[float] = field(default_factory=list)


def test_a_field_of_a_type_it_cannot_parse_is_an_error_naming_it_not_a_raw_string() -> None:
    # Raised whether or not the variable is set: a new field of such a type fails at once, not in production.
    for env in ({"TENTACULO_RETRY_DELAYS": "1,2"}, {}):
        with pytest.raises(TypeError, match=r"'retry_delays' \(TENTACULO_RETRY_DELAYS\) has type list\[float\]"):
            _WithAList.from_env(env)


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


def test_redis_tls_files_are_paths_checked_to_exist(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.crt", "client.crt", "client.key"))
    for path in (ca, cert, key):
        path.write_text("-----")
    env = {"TENTACULO_REDIS_URL": "rediss://redis.example.com:6380/0", "TENTACULO_REDIS_TLS_CA_FILE": str(ca),
           "TENTACULO_REDIS_TLS_CERT_FILE": str(cert), "TENTACULO_REDIS_TLS_KEY_FILE": str(key)}
    s = Settings.from_env(env)
    assert (s.redis_tls_ca_file, s.redis_tls_cert_file, s.redis_tls_key_file) == (ca, cert, key)
    assert s.redis_tls_verify is True
    assert Settings.from_env({**env, "TENTACULO_REDIS_TLS_VERIFY": "false"}).redis_tls_verify is False
    for var in ("TENTACULO_REDIS_TLS_CA_FILE", "TENTACULO_REDIS_TLS_CERT_FILE", "TENTACULO_REDIS_TLS_KEY_FILE"):
        with pytest.raises(SettingsError) as err:
            Settings.from_env({**env, var: str(tmp_path / "missing.pem")})
        assert err.value.variable == var and "no such file" in str(err.value)


def test_redis_tls_files_need_a_rediss_url_and_a_key_needs_its_certificate(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----")
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"TENTACULO_REDIS_URL": "redis://127.0.0.1:6379/0", "TENTACULO_REDIS_TLS_CA_FILE": str(ca)})
    assert err.value.variable == "TENTACULO_REDIS_TLS_CA_FILE"
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"TENTACULO_REDIS_URL": "rediss://r:6380", "TENTACULO_REDIS_TLS_KEY_FILE": str(ca)})
    assert err.value.variable == "TENTACULO_REDIS_TLS_KEY_FILE"


def test_redis_sentinels_and_master_go_together() -> None:
    s = Settings.from_env({"TENTACULO_REDIS_SENTINELS": "10.0.0.1:26379, s2.example.com:26379,[::1]:26380",
                           "TENTACULO_REDIS_SENTINEL_MASTER": "mymaster"})
    assert s.redis_sentinels == ("10.0.0.1:26379", "s2.example.com:26379", "[::1]:26380")
    assert s.redis_sentinel_master == "mymaster" and s.redis_url is None
    for env, var in (
        ({"TENTACULO_REDIS_SENTINELS": "10.0.0.1:26379"}, "TENTACULO_REDIS_SENTINEL_MASTER"),
        ({"TENTACULO_REDIS_SENTINEL_MASTER": "mymaster"}, "TENTACULO_REDIS_SENTINEL_MASTER"),
        ({"TENTACULO_REDIS_SENTINELS": "10.0.0.1", "TENTACULO_REDIS_SENTINEL_MASTER": "m"}, "TENTACULO_REDIS_SENTINELS"),
        ({"TENTACULO_REDIS_SENTINELS": "h:99999", "TENTACULO_REDIS_SENTINEL_MASTER": "m"}, "TENTACULO_REDIS_SENTINELS"),
        ({"TENTACULO_REDIS_SENTINELS": "h:1", "TENTACULO_REDIS_SENTINEL_MASTER": "m",
          "TENTACULO_REDIS_URL": "unix:///run/redis.sock"}, "TENTACULO_REDIS_URL"),
    ):
        with pytest.raises(SettingsError) as err:
            Settings.from_env(env)
        assert err.value.variable == var, env


def test_workers_is_a_number_or_auto() -> None:
    from tentaculo.settings import available_cores

    assert Settings.from_env({}).workers == 1
    assert Settings.from_env({"TENTACULO_WORKERS": "4"}).workers == 4
    assert Settings.from_env({"TENTACULO_WORKERS": "AUTO"}).workers == available_cores() >= 1
    for bad in ("0", "-2", "two", "1.5", "257"):
        with pytest.raises(SettingsError) as exc:
            Settings.from_env({"TENTACULO_WORKERS": bad})
        assert exc.value.variable == "TENTACULO_WORKERS", bad

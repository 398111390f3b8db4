"""The compose stack: valid for compose itself, with health checks, named volumes, no secrets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE_DIR = Path(__file__).resolve().parent.parent / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_validates_both_profiles() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no docker compose or docker-compose on this machine")
    env = {**os.environ, "TENTACULO_ENV_FILE": ".env.example"}
    for profile in ([], ["--profile", "scale"]):
        result = subprocess.run(
            [*command, "-p", "vx11", "--env-file", str(COMPOSE_DIR / ".env.example"), "-f", str(COMPOSE_FILE),
             *profile, "config"],
            capture_output=True, text=True, env=env, cwd=COMPOSE_DIR, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        services = set(yaml.safe_load(result.stdout)["services"])
        expected = {"postgres", "redis", "gateway"} | ({"gateway-b", "lb"} if profile else set())
        assert services >= expected  # docker-compose 1.x lists profiled services in every config


def test_every_service_has_a_health_check_and_data_lives_in_named_volumes() -> None:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in doc["services"].items():
        merged = service if "healthcheck" in service else {**doc["x-gateway"], **service}
        assert "healthcheck" in merged, name
    assert set(doc["volumes"]) == {"pgdata", "redisdata"}
    assert "pgdata:/var/lib/postgresql/data" in doc["services"]["postgres"]["volumes"]


def test_no_secret_is_written_in_the_repository() -> None:
    text = COMPOSE_FILE.read_text()
    assert "${POSTGRES_PASSWORD:?" in text  # required from the env file, never written here
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=COMPOSE_DIR.parent).stdout
    assert not [f for f in tracked.splitlines() if f.endswith("/.env") or f == ".env"]
    assert (COMPOSE_DIR / ".env.example").exists()


def test_compose_gives_more_grace_than_a_stop_takes_and_trusts_only_its_balancer() -> None:
    from tentaculo.http.server import shutdown_total
    from tentaculo.settings import Settings

    stack = yaml.safe_load(COMPOSE_FILE.read_text())
    gateway = stack["x-gateway"]
    grace = float(str(gateway["stop_grace_period"]).rstrip("s"))
    assert grace > shutdown_total(Settings()), "SIGKILL would come before the final flush"
    lb_address = stack["services"]["lb"]["networks"]["default"]["ipv4_address"]
    assert gateway["environment"]["TENTACULO_TRUSTED_PROXIES"] == lb_address

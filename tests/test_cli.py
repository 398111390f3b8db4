"""The tentaculo command, run as a user runs it: a real process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tentaculo import __version__
from tentaculo.auth.tokens import TokenStore
from tentaculo.embedded import free_port


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENTACULO_", "DEEPSEEK_"))}
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tentaculo", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_version() -> None:
    result = _cli("--version", env=_env())
    assert result.returncode == 0
    assert result.stdout.strip() == f"tentaculo {__version__}"


def test_bad_setting_is_named_and_exits_2() -> None:
    result = _cli("migrate", env=_env(TENTACULO_PORT="not-a-port"))
    assert result.returncode == 2
    assert "TENTACULO_PORT" in result.stderr
    assert "Traceback" not in result.stderr


async def test_token_create_list_revoke(database_url: str) -> None:
    env = _env(TENTACULO_DATABASE_URL=database_url)
    name = f"cli-{os.getpid()}-{time.monotonic_ns() % 100000}"
    created = _cli("token", "create", name, "--scopes", "chat,read", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert re.fullmatch(r"vx11_[A-Za-z0-9_-]{40,}", token)

    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    store = TokenStore(pool, admin_token=None, cache_seconds=0)
    principal = await store.authenticate(token)
    assert principal is not None and principal.scopes == frozenset({"read", "chat"})

    assert f"created token {name!r} with scopes read,chat" in created.stderr
    listed = _cli("token", "list", env=env)
    assert name in listed.stdout and token not in listed.stdout
    [line] = [row for row in listed.stdout.splitlines() if row.startswith(name + " ")]
    assert line.split()[1] == "read,chat"

    duplicate = _cli("token", "create", name, env=env)
    assert duplicate.returncode == 1 and "revoke it first" in duplicate.stderr

    revoked = _cli("token", "revoke", name, env=env)
    assert revoked.returncode == 0
    assert revoked.stdout.startswith(f"revoked token {name!r}")
    assert await store.authenticate(token) is None
    assert _cli("token", "revoke", name, env=env).returncode == 1
    bad_scope = _cli("token", "create", "x", "--scopes", "root", env=env)
    assert bad_scope.returncode == 2 and "scopes" in bad_scope.stderr
    await pool.close()


async def test_token_create_refuses_the_bootstrap_name(database_url: str, db: asyncpg.Connection) -> None:
    before = await db.fetchval("SELECT count(*) FROM api_tokens WHERE lower(name) = 'admin'")
    for name in ("admin", "Admin"):
        refused = _cli("token", "create", name, "--scopes", "read", env=_env(TENTACULO_DATABASE_URL=database_url))
        assert refused.returncode == 2, refused.stderr
        assert "reserved" in refused.stderr and not refused.stdout
    assert await db.fetchval("SELECT count(*) FROM api_tokens WHERE lower(name) = 'admin'") == before


async def test_first_run_still_creates_the_admin_token(pg_server_dsn: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The reservation is for tokens made by hand: the first-run bootstrap token is the one named ``admin``."""
    from tentaculo.cli import ADMIN_TOKEN_FILE, _bootstrap_admin
    from tentaculo.settings import Settings
    from tests.helpers import with_database

    name = f"tentaculo_boot_{os.getpid()}_{time.monotonic_ns() % 100000}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(pg_server_dsn, name)
        await _bootstrap_admin(Settings(database_url=dsn, state_dir=tmp_path))
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT name, created_by FROM api_tokens")
        finally:
            await conn.close()
        assert [(r["name"], r["created_by"]) for r in rows] == [("admin", "bootstrap")]
        token = (tmp_path / ADMIN_TOKEN_FILE).read_text().strip()
        assert token.startswith("vx11_")
        # Shown once on the terminal, on purpose (and so read here, not left in the captured output).
        assert "First admin token" in capsys.readouterr().out
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.slow
async def test_zero_config_run_serves_and_stops_cleanly(tmp_path: Path) -> None:
    """No database or Redis configured: embedded servers start, a first admin token is printed, Ctrl-C stops all."""
    port = free_port()
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tentaculo", "run", "--host", "127.0.0.1", "--port", str(port)],
        env=_env(TENTACULO_STATE_DIR=str(state), TENTACULO_LOG_FORMAT="json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        token = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while token is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.search(r"^\s+(vx11_\S+)$", line)
            if match:
                token = match[1]
        first_run = ""
        while token is not None and "/operator/api/chat" not in first_run and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            first_run += line
        if token is None:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"no admin token printed; exit {proc.returncode}; stderr tail:\n{err[-3000:]}")
        assert (state / "admin-token").read_text().strip() == token
        assert (state / "admin-token").stat().st_mode & 0o077 == 0

        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    async with http.get(f"{base}/ready") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            async with http.get(f"{base}/ready") as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(f"{base}/operator/api/whoami", headers={"X-VX11-Token": token}) as resp:
                assert resp.status == 200
                assert (await resp.json())["name"] == "admin"
        # The token command finds the running gateway's PostgreSQL and leaves it running.
        env = _env(TENTACULO_STATE_DIR=str(state))
        created = await asyncio.to_thread(_cli, "token", "create", "ops", "--scopes", "read", env=env)
        assert created.returncode == 0, created.stderr
        assert "starting embedded PostgreSQL" not in created.stderr
        assert "using the embedded PostgreSQL running in" in created.stderr
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/operator/api/whoami",
                                headers={"X-VX11-Token": created.stdout.strip()}) as resp:
                assert resp.status == 200 and (await resp.json())["name"] == "ops"
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-2000:]
    assert token not in stderr
    # The first run says how to get a first chat answer before any provider is configured.
    assert '"provider":"mock"' in first_run and "DEEPSEEK_API_KEY" in first_run
    assert "TENTACULO_LOCAL_BASE_URL" in first_run
    assert '"event":"shutting_down"' in stderr
    # The gateway's last word; the embedded servers stopping after it may still log their own.
    assert "\ntentaculo stopped\n" in stderr
    assert not (state / "postgres" / "postmaster.pid").exists(), "embedded PostgreSQL still running"
    redis_port = re.search(r"embedded Redis at redis://127.0.0.1:(\d+)", stderr)
    assert redis_port
    with pytest.raises(OSError):
        import socket

        socket.create_connection(("127.0.0.1", int(redis_port[1])), timeout=1).close()


async def test_token_create_with_expires_in_and_a_budget(database_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    env = _env(TENTACULO_DATABASE_URL=database_url)
    name = f"cli-exp-{os.getpid()}-{time.monotonic_ns() % 100000}"
    created = _cli("token", "create", name, "--scopes", "read", "--expires-in", "30d",
                   "--requests-per-minute", "120", env=env)
    assert created.returncode == 0, created.stderr
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT expires_at, requests_per_minute FROM api_tokens WHERE name = $1", name)
    finally:
        await conn.close()
    assert abs(row["expires_at"] - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    assert row["requests_per_minute"] == 120
    listed = _cli("token", "list", env=env)
    line = next(x for x in listed.stdout.splitlines() if x.startswith(name))
    assert "active" in line and row["expires_at"].strftime("%Y-%m-%d") in line and "120" in line
    for bad in ("30x", "0d", "-5m", "d"):
        refused = _cli("token", "create", f"{name}-bad", "--expires-in", bad, env=env)
        assert refused.returncode == 2 and "--expires-in" in refused.stderr, bad


async def test_run_leaves_migrations_alone_when_told_to(pg_server_dsn: str, tmp_path: Path) -> None:
    """With TENTACULO_MIGRATE_ON_START=false, migrations are `tentaculo migrate`'s job, not `run`'s."""
    from tentaculo.cli import _bootstrap_admin
    from tentaculo.settings import Settings
    from tests.helpers import with_database

    name = f"tentaculo_nomig_{os.getpid()}_{time.monotonic_ns() % 100000}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = with_database(pg_server_dsn, name)
        await _bootstrap_admin(Settings(database_url=dsn, state_dir=tmp_path, migrate_on_start=False,
                                        admin_token="an-admin-token-from-the-environment"))
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

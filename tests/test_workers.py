"""TENTACULO_WORKERS=2: one instance serving its port from two worker processes, run as a user runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from tentaculo.db.migrate import load_migrations
from tentaculo.embedded import free_port
from tentaculo.http.server import shutdown_total
from tentaculo.settings import Settings
from tentaculo.workers import Worker, check_address, worker_environment
from tests.confirm_helpers import CONFIRM_HEADER
from tests.helpers import ADMIN_TOKEN, with_database

DRAIN, TIMEOUT, FLUSH = 0.5, 1.0, 1.0
STOP_BOUND = shutdown_total(Settings(drain_seconds=DRAIN, shutdown_timeout=TIMEOUT, shutdown_flush_seconds=FLUSH))
HEADERS = {"X-VX11-Token": ADMIN_TOKEN}


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=STOP_BOUND + 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _start(log: Path, **settings: str) -> Gateway:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TENTACULO_", "DEEPSEEK_"))}
    env.update(
        TENTACULO_PORT=str(port), TENTACULO_WORKERS="2", TENTACULO_LOG_FORMAT="json", TENTACULO_PROVIDERS="mock",
        TENTACULO_PROVIDER_CHAIN="mock", TENTACULO_DRAIN_SECONDS=str(DRAIN), TENTACULO_SHUTDOWN_TIMEOUT=str(TIMEOUT),
        TENTACULO_SHUTDOWN_FLUSH_SECONDS=str(FLUSH), TENTACULO_TOKEN_CACHE_SECONDS="0", **settings,
    )
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tentaculo", "run"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    return Gateway(proc, f"http://127.0.0.1:{port}", log)


def _fresh() -> aiohttp.ClientSession:
    """A client that opens a new connection for every request: the kernel picks a worker each time."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _instances(gw: Gateway, headers: dict[str, str], tries: int = 16) -> set[str]:
    """Instance names answering whoami over ``tries`` new connections (refused connections skipped)."""
    seen = set()
    async with _fresh() as http:
        for _ in range(tries):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"{gw.base}/operator/api/whoami", headers=headers) as resp:
                    if resp.status == 200:
                        seen.add((await resp.json())["instance"])
    return seen


async def _both_workers(gw: Gateway, headers: dict[str, str] = HEADERS, timeout: float = 60) -> set[str]:
    """Wait until two workers answer; their instance names."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert gw.proc.poll() is None, gw.output()[-3000:]
        seen = await _instances(gw, headers)
        if len(seen) == 2:
            return seen
        await asyncio.sleep(0.1)
    pytest.fail(f"two workers never answered; output:\n{gw.output()[-3000:]}")


@contextlib.asynccontextmanager
async def _pinned(gw: Gateway, instance: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose one keep-alive connection is served by ``instance``: new connections until one is."""
    for _ in range(50):
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        async with http.get(f"{gw.base}/operator/api/whoami", headers=HEADERS) as resp:
            served_by = (await resp.json())["instance"]
        if served_by == instance:
            try:
                yield http
            finally:
                await http.close()
            return
        await http.close()
    pytest.fail(f"no connection reached {instance}")


async def _same_worker(http: aiohttp.ClientSession, gw: Gateway, instance: str) -> None:
    async with http.get(f"{gw.base}/operator/api/whoami", headers=HEADERS) as resp:
        assert (await resp.json())["instance"] == instance


def _pid(instance: str) -> int:
    """A worker's pid from its default instance name, ``host:pid``."""
    return int(instance.rsplit(":", 1)[1])


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _gone(pid: int) -> bool:
    """No such process, or only its zombie left."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _log_events(text: str, event: str) -> list[dict[str, object]]:
    found = []
    for line in text.splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record = orjson.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


@pytest.fixture(scope="module")
def gateway(database_url: str, redis_url: str, redis_prefix: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One supervisor with two workers against the test database and Redis; the admin token is set."""
    gw = _start(tmp_path_factory.mktemp("workers") / "gateway.log", TENTACULO_DATABASE_URL=database_url,
                TENTACULO_REDIS_URL=redis_url, TENTACULO_REDIS_PREFIX=redis_prefix, TENTACULO_ADMIN_TOKEN=ADMIN_TOKEN)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.mark.slow
async def test_both_workers_answer_on_one_port(gateway: Gateway) -> None:
    instances = await _both_workers(gateway)
    # Each worker has its own name (its host:pid) and is a child of the supervisor.
    assert {_parent_of(_pid(i)) for i in instances} == {gateway.proc.pid}
    assert len({_pid(i) for i in instances}) == 2
    started = _log_events(gateway.output(), "worker_started")
    assert {r["pid"] for r in started} >= {_pid(i) for i in instances}


@pytest.mark.slow
async def test_a_chat_event_reaches_each_stream_once(gateway: Gateway) -> None:
    """Two event streams, one on each worker; a chat on each worker: every stream gets each chat once."""
    first, second = sorted(await _both_workers(gateway))
    cids = {first: f"w1-{uuid.uuid4().hex[:8]}", second: f"w2-{uuid.uuid4().hex[:8]}"}
    async with contextlib.AsyncExitStack() as stack:
        streams = {}
        for instance in (first, second):
            http = await stack.enter_async_context(_pinned(gateway, instance))
            resp = await stack.enter_async_context(
                http.get(f"{gateway.base}/operator/api/events", params={"types": "chat"}, headers=HEADERS))
            assert resp.status == 200
            streams[instance] = resp
        for instance, cid in cids.items():
            async with _pinned(gateway, instance) as http:
                async with http.post(f"{gateway.base}/operator/api/chat", json={"message": "hello"},
                                     headers={**HEADERS, "X-Correlation-ID": cid}) as resp:
                    assert resp.status == 200, await resp.text()

        async def read(resp: aiohttp.ClientResponse) -> str:
            text = ""
            deadline = time.monotonic() + 10
            # Both chats, then a little longer: a duplicate would arrive right behind the first copy.
            while time.monotonic() < deadline and not all(c in text for c in cids.values()):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        text += (await resp.content.readany()).decode()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    while True:
                        text += (await resp.content.readany()).decode()
            return text

        texts = await asyncio.gather(*(read(r) for r in streams.values()))
    for text in texts:
        records = [r for r in text.replace("\r\n", "\n").split("\n\n") if "event: chat" in r]
        for instance, cid in cids.items():
            mine = [orjson.loads(line[len("data: "):]) for r in records if cid in r
                    for line in r.splitlines() if line.startswith("data: ")]
            assert len(mine) == 1, text
            # Published by the worker that served the chat.
            assert mine[0]["source"] == instance


@pytest.mark.slow
async def test_a_flag_turned_off_on_one_worker_is_obeyed_by_the_other(gateway: Gateway) -> None:
    first, second = sorted(await _both_workers(gateway))
    url = f"{gateway.base}/operator/api/fs/list"

    async def disabled(http: aiohttp.ClientSession) -> bool:
        async with http.get(url, headers=HEADERS) as resp:
            return resp.status == 503 and (await resp.json())["code"] == "feature_disabled"

    async with _pinned(gateway, first) as one, _pinned(gateway, second) as other:
        assert not await disabled(other)
        try:
            # Turning a feature off is high risk: a 428 with a one-time token, then the same call confirmed.
            off = {"status": "off", "reason": "workers test"}
            step = {**HEADERS, "X-Correlation-ID": f"workers-{uuid.uuid4().hex[:8]}"}
            async with one.put(f"{gateway.base}/operator/api/features/file_explorer", headers=step, json=off) as resp:
                assert resp.status == 428, await resp.text()
                token = (await resp.json())["confirmation"]["token"]
            async with one.put(f"{gateway.base}/operator/api/features/file_explorer", json=off,
                               headers={**step, CONFIRM_HEADER: token}) as resp:
                assert resp.status == 200, await resp.text()
            turned_off = time.monotonic()
            while not await disabled(other):
                assert time.monotonic() - turned_off < 1.5, "the other worker still serves the feature"
                await asyncio.sleep(0.02)
            await _same_worker(other, gateway, second)
        finally:
            async with one.put(f"{gateway.base}/operator/api/features/file_explorer", headers=HEADERS,
                               json={"status": "on", "reason": "workers test done"}) as resp:
                assert resp.status == 200
        deadline = time.monotonic() + 5
        while await disabled(other):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(gateway: Gateway) -> None:
    before = await _both_workers(gateway)
    victim = sorted(before)[0]
    pid = _pid(victim)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not _gone(pid):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    # Every new connection is answered meanwhile, by the worker left or by the new one.
    async with _fresh() as http:
        for _ in range(10):
            async with http.get(f"{gateway.base}/operator/api/whoami", headers=HEADERS) as resp:
                assert resp.status == 200
                assert (await resp.json())["instance"] != victim
    after = await _both_workers(gateway, timeout=30)
    assert victim not in after and len(after & before) == 1
    [new] = after - before
    assert _parent_of(_pid(new)) == gateway.proc.pid
    [exited] = [r for r in _log_events(gateway.output(), "worker_exited") if r["pid"] == pid]
    assert exited["status"] == "signal SIGKILL" and exited["restart_in_s"] == 0.0


@pytest.mark.slow
async def test_sigterm_stops_every_worker_within_the_bound(gateway: Gateway) -> None:
    pids = {_pid(i) for i in await _both_workers(gateway)}
    signalled = time.monotonic()
    gateway.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(gateway.proc.wait, STOP_BOUND + 10)
    stopped_in = time.monotonic() - signalled
    output = gateway.output()
    assert gateway.proc.returncode == 0, output[-3000:]
    assert stopped_in <= STOP_BOUND + 1.0, stopped_in
    assert all(_gone(pid) for pid in pids)
    # Each worker drained and stopped as a single instance does; the supervisor saw them all stop cleanly.
    assert len(_log_events(output, "shutting_down")) == 2
    assert len(_log_events(output, "stopped")) == 2
    assert _log_events(output, "workers_stopped") and not _log_events(output, "worker_stopped_badly")
    assert output.rstrip().endswith("tentaculo stopped")
    assert ADMIN_TOKEN not in output


@pytest.mark.slow
async def test_first_run_migrates_once_and_makes_one_admin_token(
    pg_server_dsn: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """No admin token anywhere and an empty database: the supervisor bootstraps once for both workers."""
    name = f"tentaculo_workers_{os.getpid()}_{time.monotonic_ns() % 100000}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(pg_server_dsn, name)
    instance = f"boot-{uuid.uuid4().hex[:6]}"
    gw = _start(tmp_path / "gateway.log", TENTACULO_DATABASE_URL=dsn, TENTACULO_REDIS_URL=redis_url,
                TENTACULO_REDIS_PREFIX=redis_prefix, TENTACULO_STATE_DIR=str(tmp_path / "state"),
                TENTACULO_INSTANCE=instance)
    try:
        token_file = tmp_path / "state" / "admin-token"
        deadline = time.monotonic() + 60
        while not token_file.exists() or not token_file.read_text().strip():
            assert gw.proc.poll() is None and time.monotonic() < deadline, gw.output()[-3000:]
            await asyncio.sleep(0.05)
        token = token_file.read_text().strip()
        # An explicit instance name: the workers are <name>-w1 and <name>-w2.
        assert await _both_workers(gw, {"X-VX11-Token": token}) == {f"{instance}-w1", f"{instance}-w2"}
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM api_tokens WHERE name = 'admin'") == 1
            versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        finally:
            await conn.close()
        every = [m.version for m in load_migrations()]
        assert [r["version"] for r in versions] == every
        gw.stop()
        output = gw.output()
        assert gw.proc.returncode == 0, output[-3000:]
        # Applied once, by the supervisor; the workers were told not to migrate.
        [applied] = _log_events(output, "migrations_applied")
        assert applied["versions"] == every
        assert output.index('"migrations_applied"') < output.index('"worker_started"')
        assert output.count("First admin token") == 1
        assert re.findall(r"^\s+(vx11_\S+)$", output, re.M) == [token]
    finally:
        gw.stop(signal.SIGKILL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_a_worker_that_keeps_dying_waits_longer_each_time() -> None:
    worker = Worker(1)
    # Dying after a stable run: at once; dying fast again and again: doubling, capped.
    assert worker.backoff(3600.0) == 0.0
    assert [worker.backoff(0.2) for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert worker.backoff(60.0) == 0.0
    assert worker.backoff(1.0) == 0.5


def test_workers_are_given_what_the_supervisor_resolved() -> None:
    settings = Settings(host="10.0.0.7", port=8123, database_url="postgresql://db/x", redis_url="redis://r",
                        log_format="json", instance="gw", workers=2)
    env = worker_environment(settings, 2, {"TENTACULO_INSTANCE": "gw", "TENTACULO_ADMIN_TOKEN": "kept", "PATH": "/bin"})
    assert env["TENTACULO_INSTANCE"] == "gw-w2" and env["TENTACULO_ADMIN_TOKEN"] == "kept" and env["PATH"] == "/bin"
    assert (env["TENTACULO_HOST"], env["TENTACULO_PORT"]) == ("10.0.0.7", "8123")
    assert (env["TENTACULO_DATABASE_URL"], env["TENTACULO_REDIS_URL"]) == ("postgresql://db/x", "redis://r")
    assert env["TENTACULO_MIGRATE_ON_START"] == "false" and env["TENTACULO_LOG_FORMAT"] == "json"
    # No name given: each worker keeps its own host:pid.
    assert "TENTACULO_INSTANCE" not in worker_environment(settings, 1, {"TENTACULO_INSTANCE": " "})


def test_a_port_held_without_sharing_is_refused() -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(OSError):
            check_address("127.0.0.1", port)
    check_address("127.0.0.1", port)

"""What every scenario needs: PostgreSQL and Redis, gateway and peer processes, the load generator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from tentaculo.db.migrate import migrate
from tentaculo.embedded import EmbeddedPostgres, EmbeddedRedis, free_port

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@dataclass
class Figure:
    """One measured figure of the final table."""

    scenario: str
    name: str
    value: float | int | str
    unit: str = ""
    goal: str = ""
    ok: bool | None = None


def table(figures: list[Figure], *, goal: str = "goal", failed: str = "MISSED") -> str:
    """The figures as one aligned text table; a figure held to a goal says ok or ``failed``."""
    rows = [("scenario", "figure", "value", goal, "")]
    for f in figures:
        verdict = "" if f.ok is None else ("ok" if f.ok else failed)
        rows.append((f.scenario, f.name, f"{f.value} {f.unit}".strip(), f.goal, verdict))
    return grid(rows)


def grid(rows: list[tuple[str, ...]], *, right: Iterable[int] = ()) -> str:
    """Rows of cells as an aligned text table, the first row its header; columns in ``right`` aligned right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = set(right)
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             .rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def each_scenario(
    names: list[str], run: Callable[[str], Awaitable[list[Figure]]], label: str
) -> tuple[list[Figure], bool]:
    """Run each named scenario in turn: all their figures, and whether any scenario itself failed.

    One scenario failing must not hide the others' figures: it becomes a figure of its own.
    """
    figures: list[Figure] = []
    failed = False
    for name in names:
        print(f"{label}: {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            figures += await run(name)
        except Exception:
            traceback.print_exc()
            figures.append(Figure(name, "scenario failed (see above)", "-", ok=False))
            failed = True
        print(f"{label}: {name} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return figures, failed


@dataclass
class Process:
    """A child process serving HTTP on ``port``."""

    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        """Resident memory of the process (Linux /proc)."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, timeout: float = 30) -> int:
        """Ctrl-C, as an operator would; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def cpu_seconds(proc: Process) -> float:
    """User + system CPU time a running process and its running descendants have used (Linux /proc).

    A gateway with ``TENTACULO_WORKERS`` is a supervisor and its worker processes: this is their sum.
    """
    parents: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended meanwhile
        pid = int(stat.parent.name)
        parents.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = int(fields[11]) + int(fields[12])
    total, todo = 0, [proc.popen.pid]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += parents.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@dataclass
class BenchEnv:
    """Owns the bench's servers and processes; ``close()`` stops them all."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tentaculo-bench-")))
    admin_token: str = field(default_factory=lambda: "bench-" + secrets.token_urlsafe(24))
    database_url: str = ""
    redis_url: str = ""
    redis_prefix: str = field(default_factory=lambda: f"tentaculo-bench-{uuid.uuid4().hex[:8]}:")
    _server_dsn: str = ""
    _db_name: str = ""
    summary: str = ""  # the baseline table, printed last (bench.baseline)
    _embedded: list[object] = field(default_factory=list)
    _processes: list[Process] = field(default_factory=list)

    async def setup(self) -> None:
        """Use configured or local servers when they answer, else embedded ones; create a fresh database."""
        server = os.environ.get("TENTACULO_BENCH_DATABASE_URL") or LOCAL_POSTGRES
        if not await _postgres_answers(server):
            pg = EmbeddedPostgres(self.workdir / "pg")
            pg.start()
            self._embedded.append(pg)
            server = pg.admin_dsn
        self._server_dsn = server
        self._db_name = f"tentaculo_bench_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f'CREATE DATABASE "{self._db_name}"')
        finally:
            await conn.close()
        self.database_url = _with_database(server, self._db_name)
        conn = await asyncpg.connect(self.database_url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        redis = os.environ.get("TENTACULO_BENCH_REDIS_URL") or LOCAL_REDIS
        if not await _redis_answers(redis):
            embedded = EmbeddedRedis(self.workdir / "redis")
            redis = embedded.start()
            self._embedded.append(embedded)
        self.redis_url = redis

    def spawn(self, args: list[str], *, port: int, env: dict[str, str] | None = None, name: str = "proc") -> Process:
        """Start ``args`` (a Python module invocation) with output to a log file."""
        log = self.workdir / f"{name}-{port}.log"
        with log.open("wb") as out:  # the child has its own descriptor: ours is closed at once
            popen = subprocess.Popen(
                [sys.executable, *args],
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = Process(popen, port, log)
        self._processes.append(proc)
        return proc

    def gateway_env(self, port: int, instance: str, **extra: str) -> dict[str, str]:
        env = {
            "TENTACULO_PORT": str(port),
            "TENTACULO_DATABASE_URL": self.database_url,
            "TENTACULO_REDIS_URL": self.redis_url,
            "TENTACULO_REDIS_PREFIX": self.redis_prefix,
            "TENTACULO_ADMIN_TOKEN": self.admin_token,
            "TENTACULO_INSTANCE": instance,
            "TENTACULO_LOG_FORMAT": "json",
            "TENTACULO_STATE_DIR": str(self.workdir / "state"),
        }
        env.update(extra)
        return env

    async def start_gateway(self, instance: str, **extra: str) -> Process:
        """A gateway process in its production configuration, ready to serve."""
        port = free_port()
        proc = self.spawn(["-m", "tentaculo", "run"], port=port, env=self.gateway_env(port, instance, **extra),
                          name=instance)
        await wait_http(f"{proc.url}/health", proc)
        return proc

    async def start_bare(self, *args: str) -> Process:
        """The bare aiohttp app (``bench.bare``; ``args`` add its other routes)."""
        port = free_port()
        proc = self.spawn(["-m", "bench.bare", str(port), *args], port=port, name="bare")
        await wait_http(f"{proc.url}/operator/api/whoami", proc)
        return proc

    async def load(
        self,
        url: str,
        *,
        concurrency: int = 32,
        duration: float = 3.0,
        headers: list[str] | None = None,
        method: str = "GET",
        body: str = "",
    ) -> dict[str, object]:
        """Run the load generator in its own process and return its JSON report.

        The report also holds ``cpu_seconds``: the CPU time the load generator itself used (the
        children's rusage once it is reaped; the servers are still running, so only it counts).
        """
        args = [sys.executable, "-m", "bench.load", "--url", url, "--concurrency", str(concurrency),
                "--duration", str(duration), "--method", method]
        for h in headers or []:
            args += ["--header", h]
        if body:
            args += ["--body", body]
        before = _children_cpu()
        proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        report = json.loads(out)
        report["cpu_seconds"] = _children_cpu() - before
        return report

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url)

    async def close(self) -> None:
        for proc in self._processes:
            proc.stop()
        if self._db_name:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                conn = await asyncpg.connect(self._server_dsn)
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{self._db_name}" WITH (FORCE)')
                finally:
                    await conn.close()
        for server in reversed(self._embedded):
            server.stop()  # type: ignore[attr-defined]


async def wait_http(url: str, proc: Process | None = None, timeout: float = 60) -> None:
    """Wait until ``url`` answers (any status), or fail showing the process's log."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc is not None and proc.popen.poll() is not None:
                raise RuntimeError(f"process exited: {proc.log.read_text()[-2000:]}")
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


async def _postgres_answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def _redis_answers(url: str) -> bool:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=1)
    try:
        await client.ping()
        return True
    except (OSError, RedisError):
        return False
    finally:
        await client.aclose()

"""``TENTACULO_WORKERS``: one instance serving its port from several processes.

The supervisor is the process ``tentaculo run`` starts. It has already done what must happen once
(embedded PostgreSQL and Redis when none is configured, migrations, the first admin token); it
then starts N workers, each ``python -m tentaculo run --worker <n>``: a fresh interpreter with its
own event loop, reading its settings from the environment as any instance does. Each worker is a
full gateway (``tentaculo.server.serve``: the gateway's own connection handler, drain, cut,
flush) listening on the same host and port with SO_REUSEPORT, so the kernel spreads new
connections over the workers and no process sits in the path of a request. Everything already
shared between instances through PostgreSQL and Redis (tokens, flags, events, limits, metrics)
holds between workers; each has its own instance name: ``<TENTACULO_INSTANCE>-w<n>`` when that is
set, else its own ``host:pid``.

Why this and not gunicorn with aiohttp's worker class: gunicorn would own the listening socket,
the signals and the workers' lifecycle, so the gateway's ``GatewayRunner`` (its connection
handler and limits), its drain / cut / flush stop and its first-run bootstrap would each have to
be re-expressed as gunicorn hooks and worker subclasses, and the single-process path would differ
from the N-process one. With SO_REUSEPORT each worker runs exactly the single-process code; the
supervisor is the small part left: start, restart with backoff, forward the stop, kill
stragglers.

The supervisor restarts a worker that dies (logged as ``worker_exited``); a worker that dies
again within ``STABLE_SECONDS`` of its start waits 0.5 s, then 1 s, 2 s ... up to
``BACKOFF_MAX`` before its next start, so a crash loop does not spin. On SIGTERM or SIGINT it
forwards the signal to every worker (each drains and stops as a single instance does) and waits
up to ``shutdown_total(settings) + KILL_SLACK`` seconds, then kills what is left. Workers get
SIGTERM from the kernel if the supervisor itself dies (Linux), so none is left orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType

import structlog

from tentaculo.http.server import shutdown_total
from tentaculo.settings import Settings

log = structlog.get_logger("tentaculo.workers")

# A worker that ran this long before it died is restarted at once; one that died sooner, later.
STABLE_SECONDS = 10.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
# Past the stop's own bound, how long the supervisor waits before it kills a worker.
KILL_SLACK = 2.0
POLL_SECONDS = 0.05
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

PR_SET_PDEATHSIG = 1


def worker_command(number: int) -> list[str]:
    """The command line of worker ``number``: the same interpreter and package as the supervisor."""
    return [sys.executable, "-m", "tentaculo", "run", "--worker", str(number)]


def worker_environment(settings: Settings, number: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The supervisor's environment, with what it resolved (address, databases, log format) made explicit.

    Migrations are the supervisor's: it applied them before starting any worker.
    """
    env = dict(environ)
    env.update(
        TENTACULO_HOST=settings.host,
        TENTACULO_PORT=str(settings.port),
        TENTACULO_DATABASE_URL=settings.database_url or "",
        TENTACULO_REDIS_URL=settings.redis_url or "",
        TENTACULO_LOG_FORMAT=settings.log_format,
        TENTACULO_MIGRATE_ON_START="false",
    )
    if environ.get("TENTACULO_INSTANCE", "").strip():
        env["TENTACULO_INSTANCE"] = f"{settings.instance}-w{number}"
    else:
        env.pop("TENTACULO_INSTANCE", None)  # each worker's own host:pid
    return env


def check_address(host: str, port: int) -> None:
    """Raise OSError when workers could not listen on ``host:port`` (taken by a process not sharing it)."""
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a function for the child, between fork and exec, asking for SIGTERM when the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def ask() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return ask


def describe_exit(returncode: int) -> str:
    """``exit 1`` or ``signal SIGKILL``."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
        return f"signal {-returncode}"
    return f"exit {returncode}"


@dataclass
class Worker:
    """One worker slot: its current process, when it started, and its restart backoff."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    restarts: int = 0

    def backoff(self, ran_for: float) -> float:
        """Seconds to wait before the next start: none after a stable run, doubling while it keeps dying."""
        if ran_for >= STABLE_SECONDS:
            self.failures = 0
        delay = 0.0 if self.failures == 0 else min(BACKOFF_FIRST * 2 ** (self.failures - 1), BACKOFF_MAX)
        self.failures += 1
        return delay


class Supervisor:
    """Starts ``settings.workers`` workers, keeps them running, and stops them on SIGTERM or SIGINT."""

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.workers = [Worker(n) for n in range(1, settings.workers + 1)]
        self._stop_signal: int | None = None
        self._on_fork = _parent_death_signal()

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def _start(self, worker: Worker) -> None:
        worker.process = subprocess.Popen(
            worker_command(worker.number),
            env=worker_environment(self.settings, worker.number, self.environ),
            preexec_fn=self._on_fork,  # safe: the supervisor runs no threads
        )
        worker.started = time.monotonic()
        log.info("worker_started", worker=worker.number, pid=worker.process.pid, restarts=worker.restarts)

    def _reap(self, worker: Worker, now: float) -> None:
        process = worker.process
        if process is None or process.poll() is None:
            return
        worker.process = None
        ran_for = now - worker.started
        delay = worker.backoff(ran_for)
        worker.restart_at = now + delay
        worker.restarts += 1
        log.error("worker_exited", worker=worker.number, pid=process.pid, status=describe_exit(process.returncode),
                  ran_s=round(ran_for, 3), restart_in_s=delay)

    def run(self) -> int:
        """Supervise until a stop signal; the exit status: 0 when every worker stopped cleanly."""
        previous = {sig: signal.signal(sig, self._signalled) for sig in STOP_SIGNALS}
        try:
            for worker in self.workers:
                if self._stop_signal is None:
                    self._start(worker)
            while self._stop_signal is None:
                now = time.monotonic()
                for worker in self.workers:
                    self._reap(worker, now)
                    if worker.process is None and now >= worker.restart_at and self._stop_signal is None:
                        self._start(worker)
                time.sleep(POLL_SECONDS)
            return self._stop(self._stop_signal)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum: int) -> int:
        running = [w for w in self.workers if w.process is not None and w.process.poll() is None]
        bound = shutdown_total(self.settings) + KILL_SLACK
        log.info("workers_stopping", signal=signal.Signals(signum).name, pids=[w.process.pid for w in running
                                                                              if w.process], stop_within_s=bound)
        for worker in running:
            if worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)
        deadline = time.monotonic() + bound
        clean = True
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker_killed", worker=worker.number, pid=process.pid,
                          reason=f"still running {bound:g} s after the stop signal")
                process.kill()
                process.wait()
            # A worker stopped by the signal itself (it had not installed its handlers yet) stopped as asked.
            if process.returncode not in (0, -signum):
                clean = False
                log.error("worker_stopped_badly", worker=worker.number, pid=process.pid,
                          status=describe_exit(process.returncode))
        log.info("workers_stopped", workers=len(self.workers))
        return 0 if clean else 1


def supervise(settings: Settings, *, print_line: Callable[[str], None]) -> int:
    """Serve ``settings`` from ``settings.workers`` processes until SIGTERM or SIGINT; the exit status."""
    if not hasattr(socket, "SO_REUSEPORT"):
        print_line("tentaculo: TENTACULO_WORKERS above 1 needs SO_REUSEPORT, which this system lacks; "
                   "run more instances instead")
        return 2
    try:
        check_address(settings.host, settings.port)
    except OSError as exc:
        print_line(f"tentaculo: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
        return 1
    supervisor = Supervisor(settings)
    print_line(f"tentaculo serving on http://{settings.host}:{settings.port} from {settings.workers} worker "
               f"processes (console: http://{settings.host}:{settings.port}/operator/; Ctrl-C to stop)")
    status = supervisor.run()
    print_line("tentaculo stopped")
    return status

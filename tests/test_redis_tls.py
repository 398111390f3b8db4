"""The gateway on a Redis it reaches over TLS (rediss://), against a redis-server this test starts.

The CA and the server certificate are made here with the openssl command; the server is started on
free loopback ports and stopped by its process id.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.settings import Settings
from tests.helpers import serve, wait_for
from tests.test_events import open_stream

REDIS_SERVER = shutil.which("redis-server")
OPENSSL = shutil.which("openssl")

pytestmark = pytest.mark.skipif(REDIS_SERVER is None or OPENSSL is None,
                                reason="needs the redis-server and openssl commands")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_certificates(directory: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate it signed, valid for 127.0.0.1 and localhost."""
    assert OPENSSL is not None
    files = {name: directory / name for name in ("ca.crt", "ca.key", "server.crt", "server.key", "server.csr")}
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tentaculo test CA",
        "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(files["server.key"]), "-out", str(files["server.csr"]))
    run("x509", "-req", "-in", str(files["server.csr"]), "-CA", str(files["ca.crt"]), "-CAkey", str(files["ca.key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(directory / "server.ext"), "-out", str(files["server.crt"]))
    return files


def start_redis(directory: Path, *args: str, config: Path | None = None,
                ready: str = "Ready to accept connections") -> subprocess.Popen[bytes]:
    """A redis-server (``config`` first when given) with no persistence, returned once its log says ``ready``."""
    assert REDIS_SERVER is not None
    log = directory / f"redis-{uuid.uuid4().hex[:6]}.log"
    process = subprocess.Popen(
        [REDIS_SERVER, *([str(config)] if config else []), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--logfile", str(log), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while ready not in (log.read_text() if log.exists() else ""):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"redis-server did not start: {log.read_text() if log.exists() else ''}")
        time.sleep(0.02)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Path]]]:
    """(rediss:// URL, certificate files) of a redis-server that speaks TLS only."""
    directory = tmp_path_factory.mktemp("redis-tls")
    files = make_certificates(directory)
    port = free_port()
    process = start_redis(
        directory, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(files["server.crt"]),
        "--tls-key-file", str(files["server.key"]), "--tls-ca-cert-file", str(files["ca.crt"]),
        "--tls-auth-clients", "no",
    )
    try:
        yield f"rediss://127.0.0.1:{port}/0", files
    finally:
        stop(process)


async def test_gateway_on_a_tls_redis_is_ready_and_delivers_events(aiohttp_client, settings: Settings,
                                                                   tls_redis) -> None:
    url, files = tls_redis
    tls = dataclasses.replace(settings, redis_url=url, redis_tls_ca_file=files["ca.crt"],
                              redis_prefix=f"{settings.redis_prefix}tls-{uuid.uuid4().hex[:6]}:")
    tls.validate()
    gw = await serve(aiohttp_client, create_app(tls))
    resp = await gw.get("/ready")
    body = await resp.json()
    assert body["checks"]["redis"]["status"] == "on", body
    assert resp.status == 200, body
    hub = gw.app[keys.EVENTS]
    await wait_for(lambda: hub.status == "on")
    sse = await open_stream(gw)
    hub.publish("chat", {"message_id": "m-tls", "provider": "mock"}, correlation_id="over-tls")
    event = await sse.event()
    assert event["event"] == "chat" and event["data"]["correlation_id"] == "over-tls"


async def test_without_the_ca_the_certificate_is_refused_and_ready_says_why(aiohttp_client, settings: Settings,
                                                                           tls_redis) -> None:
    url, _files = tls_redis
    gw = await serve(aiohttp_client, create_app(dataclasses.replace(settings, redis_url=url)))
    resp = await gw.get("/ready")
    body = await resp.json()
    assert resp.status == 503
    redis = body["checks"]["redis"]
    assert redis["status"] == "error"
    assert "TLS" in redis["reason"] and "not trusted" in redis["reason"], redis
    port = url.rsplit(":", 1)[1].split("/")[0]
    assert "127.0.0.1" not in redis["reason"] and port not in redis["reason"], redis
    assert gw.app[keys.EVENTS].status == "error"


async def test_verification_off_accepts_the_unknown_certificate(aiohttp_client, settings: Settings,
                                                                tls_redis) -> None:
    url, _files = tls_redis
    gw = await serve(aiohttp_client, create_app(dataclasses.replace(settings, redis_url=url, redis_tls_verify=False)))
    body = await (await gw.get("/ready")).json()
    assert body["checks"]["redis"]["status"] == "on", body

"""Schema-driven fuzzing of the whole API with schemathesis against a real gateway process.

The gateway runs as `tentaculo run` on its own fresh database (the fuzzer changes flags and
tokens), with the mock provider. The run must find no 5xx and no response outside the spec.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tentaculo.embedded import free_port
from tests.helpers import execute, migrate_database, with_database

SPEC = Path(__file__).resolve().parent.parent / "tentaculo" / "openapi.yaml"
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
])


@pytest.fixture
def fuzz_gateway(pg_server_dsn: str, redis_url: str, tmp_path: Path):
    name = f"tentaculo_fuzz_{uuid.uuid4().hex[:8]}"
    import asyncio

    asyncio.run(execute(pg_server_dsn, f'CREATE DATABASE "{name}"'))
    dsn = with_database(pg_server_dsn, name)
    asyncio.run(migrate_database(dsn))
    port = free_port()
    token = "fuzz-" + uuid.uuid4().hex
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TENTACULO_")},
        "TENTACULO_PORT": str(port),
        "TENTACULO_DATABASE_URL": dsn,
        "TENTACULO_REDIS_URL": redis_url,
        "TENTACULO_REDIS_PREFIX": f"tentaculo-fuzz-{uuid.uuid4().hex[:8]}:",
        "TENTACULO_ADMIN_TOKEN": token,
        "TENTACULO_PROVIDERS": "mock",
        "TENTACULO_PROVIDER_CHAIN": "mock",
        "TENTACULO_STATE_DIR": str(tmp_path / "state"),
        "TENTACULO_LOG_FORMAT": "json",
        "TENTACULO_LOG_LEVEL": "warning",
    }
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tentaculo", "run"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", token, tmp_path / "gateway.log"
    proc.terminate()
    proc.wait(30)
    asyncio.run(execute(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.slow
def test_fuzzing_the_whole_api_finds_no_5xx_and_nothing_outside_the_spec(fuzz_gateway, tmp_path) -> None:
    base, token, log = fuzz_gateway
    st = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert st, "schemathesis is in the test extras"
    # A flag the fuzzer turns off makes its endpoints answer 503 feature_disabled by design, so flag
    # changes are fuzzed on their own, after every other operation was fuzzed with the flags on.
    flags = "/operator/api/features/{name}"
    # The fuzzer keeps generating until --max-time: one operation alone needs far less time.
    for selection, seconds in ((["--exclude-path", flags], 90), (["--include-path", flags], 15)):
        _fuzz(st, base, token, log, tmp_path, selection, seconds)


# A CPython 3.11 bug the fuzzer's own data generation can hit at random (hypothesis parses lambda
# sources deep in the stack); it is not a finding about the gateway, so such a run is repeated once.
_INTERPRETER_BUG = "AST constructor recursion depth mismatch"


def _fuzz(st: str, base: str, token: str, log: Path, tmp_path: Path, selection: list[str], seconds: int) -> None:
    result = _run_fuzzer(st, base, token, tmp_path, selection, seconds)
    if result.returncode != 0 and _INTERPRETER_BUG in result.stdout + result.stderr:
        result = _run_fuzzer(st, base, token, tmp_path, selection, seconds)
    if result.returncode != 0:
        tail = log.read_text()[-3000:]
        pytest.fail(f"schemathesis found problems:\n{result.stdout[-12000:]}\n{result.stderr[-2000:]}\n"
                    f"gateway log tail:\n{tail}")


def _run_fuzzer(
    st: str, base: str, token: str, tmp_path: Path, selection: list[str], seconds: int
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            st, "run", str(SPEC), "--url", base, *selection,
            "-H", f"X-VX11-Token: {token}",
            "--checks", CHECKS,
            "--max-examples", "10",
            "--seed", "20261124",
            "--generation-deterministic",
            "--max-time", str(seconds),
            "--request-timeout", "10",
            # One worker: this interpreter's "AST constructor recursion depth mismatch" SystemError
            # (a CPython 3.11 bug, raised inside hypothesis) came with two generator threads at once.
            "--workers", "1",
            # The live stream never ends by design (its JSON page is tested in test_events).
            "--exclude-path", "/operator/api/events",
            # Proxied calls answer with the module's own status, or 502/503/504 by design (no module
            # has an address here); tests/test_proxy*.py run them against real modules.
            "--exclude-path-regex", "^/operator/api/proxy/",
            "--warnings", "off",
        ],
        capture_output=True, text=True, timeout=420, cwd=tmp_path,
    )

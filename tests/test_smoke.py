"""`tentaculo smoke` passes against a healthy gateway and fails loudly against a dead one."""

from __future__ import annotations

import subprocess
import sys

from tentaculo.embedded import free_port
from tentaculo.smoke import checks, run_smoke
from tests.conftest import ADMIN_TOKEN


async def test_smoke_passes_on_a_running_gateway(gateway) -> None:
    lines: list[str] = []
    failures = await run_smoke(str(gateway.make_url("/")), ADMIN_TOKEN, out=lines.append)
    assert failures == 0, "\n".join(lines)
    assert len([line for line in lines if line.startswith("PASS")]) == len(checks("x"))


def test_smoke_command_fails_without_a_gateway() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "tentaculo", "smoke", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120,
        env={"TENTACULO_SMOKE_TOKEN": "x" * 20, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "no answer" in result.stdout
    assert f"0 passed, {len(checks('x'))} failed" in result.stdout

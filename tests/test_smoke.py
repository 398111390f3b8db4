"""`tentaculo smoke` passes against a healthy gateway, skips (saying why) what is not configured,
and fails loudly against a dead one or a broken part."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from tentaculo.app import create_app
from tentaculo.embedded import free_port
from tentaculo.smoke import checks, run_smoke
from tests.helpers import ADMIN_TOKEN, serve


def _lines_of(lines: list[str], verdict: str) -> dict[str, str]:
    """{check name: detail} of the lines with this verdict."""
    out = {}
    for line in lines:
        if line.startswith(verdict + "  "):
            name, _, detail = line.split(None, 3)[3].partition(": ")
            out[name] = detail
    return out


async def test_smoke_passes_and_skips_the_file_explorer_without_roots(gateway) -> None:
    lines: list[str] = []
    failures = await run_smoke(str(gateway.make_url("/")), ADMIN_TOKEN, out=lines.append)
    assert failures == 0, "\n".join(lines)
    skipped = _lines_of(lines, "SKIP")
    assert skipped == {"file explorer lists a root": "feature file_explorer is off: no roots configured"}
    passed = _lines_of(lines, "PASS")
    for name in ("event stream sees a chat", "event stream with a ticket", "chat, streamed (mock)",
                 "openai chat completion (mock)", "openai chat completion, streamed", "trace of the chat"):
        assert name in passed, "\n".join(lines)
    assert passed["chat, streamed (mock)"].startswith("start, ") and passed["chat, streamed (mock)"].endswith(", done")
    assert lines[-1] == f"{len(checks('x')) - 1} passed, 0 failed, 1 skipped"


async def test_smoke_lists_a_configured_root_and_fails_a_broken_one(aiohttp_client, settings, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.log").write_text("x")
    gw = await serve(aiohttp_client, create_app(dataclasses.replace(settings, fs_roots={"logs": tmp_path / "logs"})))
    lines: list[str] = []
    assert await run_smoke(str(gw.make_url("/")), ADMIN_TOKEN, out=lines.append) == 0, "\n".join(lines)
    assert _lines_of(lines, "PASS")["file explorer lists a root"] == "root 'logs': 1 entries"
    assert _lines_of(lines, "SKIP") == {}

    # A root that is not there is a failure, not a pass.
    gone = await serve(aiohttp_client, create_app(dataclasses.replace(settings, fs_roots={"logs": tmp_path / "gone"})))
    lines = []
    assert await run_smoke(str(gone.make_url("/")), ADMIN_TOKEN, out=lines.append) == 1
    assert list(_lines_of(lines, "FAIL")) == ["file explorer lists a root"]


async def test_smoke_skips_chat_checks_when_the_mock_is_not_loaded(aiohttp_client, settings) -> None:
    gw = await serve(aiohttp_client, create_app(dataclasses.replace(settings, providers=("deepseek",),
                                                                    provider_chain=("deepseek",))))
    lines: list[str] = []
    assert await run_smoke(str(gw.make_url("/")), ADMIN_TOKEN, out=lines.append) == 0, "\n".join(lines)
    skipped = _lines_of(lines, "SKIP")
    assert skipped["chat (mock)"] == "the mock provider is not loaded (TENTACULO_PROVIDERS)"
    assert {"chat, streamed (mock)", "event stream sees a chat", "openai chat completion (mock)",
            "trace of the chat"} <= set(skipped)
    assert "event stream with a ticket" in _lines_of(lines, "PASS")


def test_smoke_command_fails_without_a_gateway() -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "tentaculo", "smoke", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120,
        env={"TENTACULO_SMOKE_TOKEN": "x" * 20, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "no answer" in result.stdout
    assert f"0 passed, {len(checks('x'))} failed, 0 skipped" in result.stdout

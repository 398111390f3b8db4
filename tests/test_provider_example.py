"""The out-of-tree example of docs/providers.md: installed with pip, found through its entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chat_helpers import chat_gateway

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "provider-echo"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed into a directory of its own, as ``pip install`` would for a user."""
    work = tmp_path_factory.mktemp("provider-echo")
    source = work / "src"
    shutil.copytree(EXAMPLE, source)  # pip builds in the source tree; keep the repository clean
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
         "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=120,
    )
    return target


async def test_gateway_loads_the_installed_example(installed_example, aiohttp_client, settings, admin_headers,
                                                   monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(installed_example))
    gw = await chat_gateway(aiohttp_client, settings, providers=("echo", "mock"), provider_chain=("echo",),
                            provider_options={"echo": {"prefix": "you said: "}})
    listing = await (await gw.get("/operator/api/providers", headers=admin_headers)).json()
    echo = next(p for p in listing["providers"] if p["name"] == "echo")
    assert echo["status"] == "on" and echo["distribution"] == "tentaculo-echo" and echo["version"] == "0.1.0"
    assert echo["models"] == ["echo-1"] and echo["in_chain"] is True
    body = await (await gw.post("/operator/api/chat", json={"message": "hello from the docs"},
                                headers=admin_headers)).json()
    assert body["provider"] == "echo" and body["content"] == "you said: hello from the docs"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 4}


def test_example_passes_the_conformance_suite(installed_example) -> None:
    """What the walk-through tells a plugin author to run in their own package."""
    source = installed_example.parent / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed_example), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=source, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 passed, 1 skipped" in result.stdout

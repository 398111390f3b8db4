"""The distribution builds without setuptools' warnings and carries its data files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_build_lists_every_package_and_ships_migrations_and_spec(tmp_path: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    source = tmp_path / "src"
    for name in tracked.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path / "build"
    built = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                            "-d", str(out)], cwd=source, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    assert "Package would be ignored" not in built.stderr and "tentaculo.db.migrations" not in built.stderr
    assert sorted(p.name for p in (out / "tentaculo" / "db" / "migrations").glob("*.sql")) == sorted(
        p.name for p in (ROOT / "tentaculo" / "db" / "migrations").glob("*.sql"))
    assert (out / "tentaculo" / "openapi.yaml").is_file()
    assert (out / "providers" / "mock.py").is_file()
    assert not list(out.rglob("__pycache__"))

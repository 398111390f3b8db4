"""docs/api.md is the repository's own API reference: in step with the spec, and nothing points outside the repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tentaculo.http.errors import PROBLEMS
from tentaculo.http.spec import openapi_document

ROOT = Path(__file__).resolve().parent.parent
API_DOC = ROOT / "docs" / "api.md"
METHODS = ("get", "post", "put", "patch", "delete")
# Assembled so that this file does not hold what it looks for.
OUTSIDE = ("../" + "shared", "CONTRACT" + ".md")


def test_every_path_and_method_of_the_spec_is_in_the_api_reference() -> None:
    text = API_DOC.read_text()
    paths = openapi_document()["paths"]
    missing = [f"{m.upper()} {p}" for p, item in paths.items() for m in METHODS
               if m in item and f"`{m.upper()} {p}`" not in text]
    assert missing == []


def test_every_problem_code_is_in_the_api_reference() -> None:
    text = API_DOC.read_text()
    assert [code for code in PROBLEMS if f"`{code}`" not in text] == []


def test_nothing_tracked_refers_to_files_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    offenders = []
    for name in tracked.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        text = path.read_bytes().decode(errors="replace")
        offenders += [(name, needle) for needle in OUTSIDE if needle in text]
    assert offenders == []

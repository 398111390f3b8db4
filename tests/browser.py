"""Which Chromium the browser tests drive, found the same way by ``make test`` and by the suite.

In order: ``TENTACULO_TEST_CHROMIUM``; the system's Chromium (Debian's ``chromium`` package);
Playwright's own download, when one was made. ``python -m tests.browser`` (run by ``make test``)
also tries that download where a network allows it, and otherwise says what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SYSTEM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless on a machine with no display and a closed network: no sandbox (tests run as root in
# CI), no GPU, and none of Chromium's background calls home, which would only be refused.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
HOW_TO_INSTALL = (
    "the browser tests need Chromium and none was found. Install one of:\n"
    "  Debian/Ubuntu:  apt-get install chromium\n"
    "  anywhere with a network:  .venv/bin/python -m playwright install chromium\n"
    "or point TENTACULO_TEST_CHROMIUM at a Chromium or Chrome executable."
)


def chromium_executable() -> str | None:
    """The Chromium to drive, or None when there is none on this machine."""
    given = os.environ.get("TENTACULO_TEST_CHROMIUM")
    if given:
        return given if Path(given).exists() else None
    for name in SYSTEM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return _playwright_download()


def _playwright_download() -> str | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None

    def where() -> str:
        with sync_playwright() as p:
            return p.chromium.executable_path

    # Playwright's sync API refuses to run inside an event loop, which is where the suite's
    # fixtures ask: a thread of its own has none.
    with ThreadPoolExecutor(max_workers=1) as pool:
        path = pool.submit(where).result()
    return path if path and Path(path).exists() else None


def main() -> int:
    """Find a browser for ``make test``; try Playwright's download before giving up with advice."""
    found = chromium_executable()
    if found is None:
        print("tentaculo: no Chromium on this machine; trying Playwright's download", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], check=False)
        found = chromium_executable()
    if found is None:
        print(f"tentaculo: {HOW_TO_INSTALL}", file=sys.stderr)
        return 1
    print(f"browser tests use {found}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

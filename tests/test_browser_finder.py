"""Finding a browser for the browser tests: on a machine without one, a clear answer, not a crash."""

from __future__ import annotations

import pytest

from tests import browser


async def test_a_machine_without_chromium_gets_an_answer_inside_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite's fixtures ask from inside a running loop; with no system Chromium the finder
    # falls back to Playwright's own download, whose sync API refuses to run in a loop.
    monkeypatch.delenv("TENTACULO_TEST_CHROMIUM", raising=False)
    monkeypatch.setattr(browser, "SYSTEM_NAMES", ("no-such-chromium-anywhere",))
    found = browser.chromium_executable()
    assert found is None or found.endswith(("chrome", "chromium", "headless_shell"))


def test_a_named_browser_that_does_not_exist_is_none(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("TENTACULO_TEST_CHROMIUM", str(tmp_path / "missing"))
    assert browser.chromium_executable() is None

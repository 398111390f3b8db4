"""`make chaos` itself: its event tally, its table, and one cheap scenario end to end so it cannot rot."""

from __future__ import annotations

import pytest

from bench import chaos
from bench.env import Figure


def test_tally_tells_gaps_a_reset_reported_from_silent_ones_and_counts_duplicates() -> None:
    published = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 5.0, "e": 6.0}
    deliveries = [("a", 1.1), ("b", 2.1), ("b", 4.5), ("e", 6.1), ("not-ours", 6.2)]
    # c (published at 3) was never delivered, and a reset came at 4: reported. d (at 5) was lost silently.
    t = chaos.tally(published, deliveries, resets=[4.0])
    assert (t.published, t.delivered, t.gaps, t.reported, t.duplicates, t.resets) == (5, 3, 1, 1, 1, 1)
    assert chaos.tally(published, [(c, 0.0) for c in published], []).gaps == 0


def test_the_table_names_a_broken_promise() -> None:
    text = chaos.table([
        Figure("redis silent", "duplicate deliveries", 1, goal="0", ok=False),
        Figure("redis silent", "resets received", 0),
        Figure("shutdown", "event stream got shutdown", "yes", goal="yes", ok=True),
    ])  # fmt: skip
    lines = text.splitlines()
    assert lines[0].split() == ["scenario", "figure", "value", "promise"]
    assert lines[2].endswith("BROKEN") and lines[4].endswith("ok") and lines[3].endswith("0")


@pytest.mark.slow
async def test_a_postgres_cut_under_load_loses_no_audit_row(
    monkeypatch: pytest.MonkeyPatch, pg_server_dsn: str, redis_url: str
) -> None:
    # The suite's servers, not the machine's: the run creates its own database and key prefix on them.
    monkeypatch.setenv("TENTACULO_BENCH_DATABASE_URL", pg_server_dsn)
    monkeypatch.setenv("TENTACULO_BENCH_REDIS_URL", redis_url)
    tiny = chaos.Sizes(clients=2, before=0.5, cut=1.5, after=0.2, settle=8.0)
    figures, failed = await chaos.run(["postgres-stops"], tiny)
    by_name = {f.name: f for f in figures}
    assert not failed, chaos.table(figures)
    assert by_name["requests answered / without an answer"].ok, chaos.table(figures)
    assert by_name["requests with an audit row / answered"].ok, chaos.table(figures)
    assert by_name["DB-token whoami during the fault: 200 / calls"].ok, chaos.table(figures)

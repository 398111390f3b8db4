"""What the risk check costs a proxied call: CPU microseconds per call, with and without it.

The check is in-process (the rules are held in memory, indexed per module), so it is measured
in-process: the shipped rules (migration 0004) plus twenty rules an admin might add, classified
for a mix of low, medium and high calls, against the same loop without the check. The figures
are CPU time (``time.process_time``), medians of five rounds; a noisy machine moves them.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from bench.env import BenchEnv, Figure
from tentaculo.auth.risk import RiskRule, RiskRules, compile_pattern

NAME = "policies"
CALLS = 50_000
ROUNDS = 5
_ROW = re.compile(r"\('([^']*)', '([^']*)', '([^']*)', '([^']*)', '([^']*)', (true|false), 'default'\)")
MIX = [("madre", "GET", "/api/jobs/7"), ("hermes", "POST", "/api/jobs"), ("madre", "PATCH", "/api/jobs/7"),
       ("switch", "GET", "/health"), ("hermes", "POST", "/queues/q1/restart"), ("madre", "DELETE", "/api/jobs/7"),
       ("spawner", "POST", "/workers/3/stop"), ("mcp", "GET", "/tools/list/a/b/c")]


def shipped_rules() -> list[RiskRule]:
    """The rules migration 0004 seeds, plus twenty module-specific ones."""
    sql = (Path(__file__).resolve().parent.parent / "tentaculo/db/migrations/0004_risk_rules.sql").read_text()
    rows = [(m, meth, pat, risk, reason, locked == "true") for m, meth, pat, risk, reason, locked in _ROW.findall(sql)]
    rows += [(f"mod{i}", "POST", f"/**/op{i}/**", "high", "added", False) for i in range(20)]
    return [RiskRule(i, m, meth, pat, risk, reason, locked, "default", None, compile_pattern(pat))
            for i, (m, meth, pat, risk, reason, locked) in enumerate(rows, 1)]


def _cpu_us_per_call(check: bool, rules: RiskRules) -> float:
    calls = MIX * (CALLS // len(MIX))
    started = time.process_time()
    for module, method, path in calls:
        if check:
            rules.classify(module, method, path)
        else:
            (module, method, path)  # the loop alone  # noqa: B018
    return (time.process_time() - started) / len(calls) * 1e6


async def run(env: BenchEnv) -> list[Figure]:
    rules = RiskRules(None, reload_seconds=60)  # never reads PostgreSQL: apply() below
    loaded = shipped_rules()
    rules.apply(loaded)
    with_check = statistics.median(_cpu_us_per_call(True, rules) for _ in range(ROUNDS))
    without = statistics.median(_cpu_us_per_call(False, rules) for _ in range(ROUNDS))
    verdicts = {rules.classify(m, meth, p).risk for m, meth, p in MIX}
    return [
        Figure(NAME, f"rules held ({len(loaded)}), risks seen in the mix", ", ".join(sorted(verdicts))),
        Figure(NAME, "CPU per call, risk check", round(with_check - without, 2), "µs", "< 20", with_check - without < 20),
        Figure(NAME, "CPU per call, loop without the check", round(without, 2), "µs"),
    ]

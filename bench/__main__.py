"""`make bench`: run every scenario against real processes and print one table.

    python -m bench [scenario ...]     (default: all, in order)

Each scenario module in this package has ``NAME`` and ``async def run(env) -> list[Figure]``.
Figures are medians and ratios measured in this one run on this machine. The baseline scenario's
table (docs/operations.md, "Measuring it") is printed last, under the date and the machine.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import platform
import resource
import sys
import time
from pathlib import Path

from bench.env import BenchEnv, Figure, each_scenario, table

# limits last: its flood of wrong tokens blocks the loopback address for a few seconds.
SCENARIOS = ["baseline", "gateway", "chat", "events", "status", "proxy", "policies", "limits"]


def _available(names: list[str]) -> list[str]:
    here = os.path.dirname(__file__)
    return [n for n in names if os.path.exists(os.path.join(here, f"{n}.py"))]


async def main(selected: list[str]) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = BenchEnv()
    try:
        await env.setup()

        async def run(name: str) -> list[Figure]:
            figures: list[Figure] = await importlib.import_module(f"bench.{name}").run(env)
            return figures

        figures, failed = await each_scenario(selected, run, "bench")
    finally:
        await env.close()
    print()
    print(f"tentaculo bench on {_machine()}")
    print(table(figures))
    if env.summary:
        print()
        print(f"Baseline, {time.strftime('%Y-%m-%d')}, {_machine()}")
        print(env.summary)
    return 1 if failed else 0


def _machine() -> str:
    """Cores, CPU model, Python: what the figures depend on."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), model)
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, {platform.machine()}"


if __name__ == "__main__":
    chosen = sys.argv[1:] or _available(SCENARIOS)
    raise SystemExit(asyncio.run(main(chosen)))

"""`tentaculo smoke`: call every endpoint of a running gateway and print a pass/fail line each.

Reads the base URL and a token (with every scope, e.g. the admin token) from its arguments or
from TENTACULO_SMOKE_URL / TENTACULO_SMOKE_TOKEN. Exits non-zero when any check fails.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

SMOKE_PREFIX = "smoke-"


@dataclass
class Check:
    """One call and the statuses that count as a pass."""

    name: str
    method: str
    path: str
    ok: tuple[int, ...] = (200,)
    token: bool = True
    body: Any = None
    headers: dict[str, str] | None = None
    expect: Callable[[Any], bool] | None = None


def checks(correlation_id: str) -> list[Check]:
    """What a healthy gateway answers; problems must still come as problem+json."""
    return [
        Check("liveness", "GET", "/health", token=False, expect=lambda b: b["status"] == "on"),
        Check("readiness", "GET", "/ready", token=False, expect=lambda b: b["status"] == "on"),
        Check("openapi spec", "GET", "/operator/api/openapi.json", token=False,
              expect=lambda b: b["openapi"].startswith("3.1")),
        Check("refuses a missing token", "GET", "/operator/api/whoami", ok=(401,), token=False,
              expect=lambda b: b["code"] == "auth_required"),
        Check("whoami", "GET", "/operator/api/whoami"),
        Check("tokens", "GET", "/operator/api/tokens", expect=lambda b: isinstance(b["tokens"], list)),
        Check("status", "GET", "/operator/api/status", expect=lambda b: b["status"] in {"on", "degraded", "error", "off"}),
        Check("features", "GET", "/operator/api/features"),
        Check("providers", "GET", "/operator/api/providers"),
        Check("modules", "GET", "/operator/api/modules"),
        Check("topology", "GET", "/operator/api/topology", expect=lambda b: "entrypoint" in b),
        Check("metrics", "GET", "/operator/api/metrics?window=5m"),
        Check("prometheus metrics", "GET", "/metrics"),
        Check("events page", "GET", "/operator/api/events", headers={"Accept": "application/json"},
              expect=lambda b: isinstance(b["events"], list)),
        Check("events ticket", "POST", "/operator/api/events/ticket", expect=lambda b: b["expires_in"] <= 60),
        Check("chat (mock)", "POST", "/operator/api/chat",
              body={"message": "smoke test", "provider": "mock"}, headers={"X-Correlation-ID": correlation_id},
              expect=lambda b: b["provider"] == "mock" and b["content"]),
        Check("openai models", "GET", "/v1/models", expect=lambda b: b["object"] == "list"),
        Check("file explorer answers", "GET", "/operator/api/fs/list?path=logs", ok=(200, 404, 503)),
        Check("trace of the chat", "GET", f"/operator/api/trace/{correlation_id}"),
        Check("proxy refuses an unknown module", "GET", "/operator/api/proxy/no-such-module/health", ok=(404,)),
    ]


async def _run_one(session: aiohttp.ClientSession, base: str, token: str, check: Check) -> tuple[bool, str]:
    headers = dict(check.headers or {})
    if check.token:
        headers["X-VX11-Token"] = token
    started = time.perf_counter()
    try:
        async with session.request(check.method, base + check.path, json=check.body, headers=headers) as resp:
            raw = await resp.read()
            elapsed = (time.perf_counter() - started) * 1000
            if not resp.headers.get("X-Correlation-ID"):
                return False, f"{resp.status} without X-Correlation-ID"
            if resp.status not in check.ok:
                return False, f"{resp.status}: {raw[:200].decode(errors='replace')}"
            if resp.status >= 400 and resp.content_type != "application/problem+json":
                return False, f"{resp.status} is not problem+json"
            if check.expect is not None:
                try:
                    passed = check.expect(json.loads(raw))
                except (ValueError, KeyError, TypeError) as exc:
                    return False, f"{resp.status}, unexpected body ({type(exc).__name__}: {exc})"
                if not passed:
                    return False, f"{resp.status}, unexpected body: {raw[:200].decode(errors='replace')}"
            return True, f"{resp.status} in {elapsed:.1f} ms"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, f"no answer: {type(exc).__name__}: {exc}"


async def run_smoke(base: str, token: str, *, out: Callable[[str], None] = print) -> int:
    """Run every check in order; print one line each; return the number of failures."""
    base = base.rstrip("/")
    correlation_id = SMOKE_PREFIX + uuid.uuid4().hex[:12]
    failures = 0
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for check in checks(correlation_id):
            passed, detail = await _run_one(session, base, token, check)
            failures += not passed
            out(f"{'PASS' if passed else 'FAIL'}  {check.method:<5} {check.path:<48} {check.name}: {detail}")
    out(f"{len(checks(correlation_id)) - failures} passed, {failures} failed")
    return failures


def main(base: str, token: str) -> int:
    """Entry point used by the CLI."""
    return 1 if asyncio.run(run_smoke(base, token)) else 0

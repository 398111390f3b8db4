"""Risk at the door: a medium or high call publishes ``operator_action``; a high one waits for its
confirmation (``tentaculo/auth/confirm.py``) before it is performed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from tentaculo import keys
from tentaculo.auth.confirm import HEADER
from tentaculo.auth.risk import Verdict
from tentaculo.http.errors import Problem

log = structlog.get_logger("tentaculo.actions")


@dataclass(slots=True)
class Action:
    """A medium or high call being performed; ``done()`` publishes its ``operator_action`` event."""

    request: web.Request
    service: str
    verdict: Verdict
    confirmed: bool

    def done(self, status: int) -> None:
        publish_action(self.request, self.service, self.verdict, "performed" if status < 400 else "failed",
                       status=status, confirmed=self.confirmed)


def publish_action(request: web.Request, service: str, verdict: Verdict, outcome: str, *,
                   status: int | None = None, confirmed: bool = False) -> None:
    """Publish an ``operator_action`` event (who, what, risk, outcome) and log the same (no token)."""
    data: dict[str, Any] = {
        "who": request[keys.PRINCIPAL].name,
        "action": {"method": request.method, "path": request.path, "service": service},
        "risk": verdict.risk,
        "reason": verdict.reason,
        "rule_id": verdict.rule.id if verdict.rule is not None else None,
        "outcome": outcome,
        "status": status,
        "confirmed": confirmed,
    }
    log.info("operator_action", who=data["who"], method=request.method, path=request.path, service=service,
             risk=verdict.risk, outcome=outcome, status=status)
    severity = "warning" if verdict.risk == "high" or outcome in ("refused", "failed") else "info"
    request.app[keys.EVENTS].publish("operator_action", data, severity=severity)


async def guard(request: web.Request, service: str, verdict: Verdict, body: bytes | None = None) -> Action | None:
    """Let a call through by its risk: low plainly (None), medium with an event, high only when confirmed.

    A high call without ``X-VX11-Confirm`` raises 428 ``confirmation_required`` carrying a token;
    with one it is redeemed (403 ``confirmation_invalid`` when it does not fit). ``body`` is the
    call's whole body (read here when None).
    """
    if verdict.risk == "low":
        return None
    if verdict.risk == "medium":
        return Action(request, service, verdict, confirmed=False)
    if body is None:
        body = await request.read()
    confirmations = request.app[keys.CONFIRMATIONS]
    principal = request[keys.PRINCIPAL]
    body_hash = hashlib.sha256(body).hexdigest()
    given = request.headers.get(HEADER)
    if given is None:
        token = await confirmations.issue(principal, request.method, request.raw_path, body_hash)
        publish_action(request, service, verdict, "confirmation_required")
        correlation_id = request[keys.CORRELATION_ID]
        raise Problem(
            "confirmation_required",
            f"{request.method} {request.path} is a high-risk action ({verdict.reason}): repeat the identical call "
            f"within {confirmations.ttl_seconds} s with the header {HEADER} and X-Correlation-ID: {correlation_id}",
            risk=verdict.risk,
            reason=verdict.reason,
            action={"method": request.method, "path": request.path, "service": service},
            rule_id=verdict.rule.id if verdict.rule is not None else None,
            confirmation={"token": token, "header": HEADER, "expires_in": confirmations.ttl_seconds,
                          "correlation_id": correlation_id},
            headers={"Cache-Control": "no-store"},
        )
    try:
        await confirmations.redeem(given.strip(), principal, request.method, request.raw_path, body_hash)
    except Problem as problem:
        if problem.code == "confirmation_invalid":
            publish_action(request, service, verdict, "refused")
        raise
    return Action(request, service, verdict, confirmed=True)

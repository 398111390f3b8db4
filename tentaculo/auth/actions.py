"""Risk at the door: a medium or high call needs the ``operate`` scope (the gateway's own admin
calls: ``admin``) and publishes ``operator_action``; a high one waits for its confirmation
(``tentaculo/auth/confirm.py``) before it is performed. Every confirmed or medium call publishes
its outcome, ``failed`` too when it ends in an error or is cancelled.
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

OPERATE = "operate"


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

    def failed(self, error: BaseException) -> None:
        """The call ended in ``error`` (an exception or cancellation): publish ``failed``."""
        status = error.status if isinstance(error, Problem | web.HTTPException) else None
        publish_action(self.request, self.service, self.verdict, "failed", status=status, confirmed=self.confirmed,
                       error=type(error).__name__)


def publish_action(request: web.Request, service: str, verdict: Verdict, outcome: str, *,
                   status: int | None = None, confirmed: bool = False, error: str | None = None) -> None:
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
    if error is not None:
        data["error"] = error  # the exception's class only: its text may hold what the event must not
    log.info("operator_action", who=data["who"], method=request.method, path=request.path, service=service,
             risk=verdict.risk, outcome=outcome, status=status)
    severity = "warning" if verdict.risk == "high" or outcome in ("refused", "failed") else "info"
    request.app[keys.EVENTS].publish("operator_action", data, severity=severity)


def check_scope(request: web.Request, verdict: Verdict, scope: str = OPERATE) -> None:
    """403 ``forbidden`` unless the caller holds ``scope``, for a call riskier than low."""
    if verdict.risk != "low" and scope not in request[keys.PRINCIPAL].scopes:
        raise Problem("forbidden", f"this call needs the '{scope}' scope: it is a {verdict.risk}-risk action "
                      f"({verdict.reason})", required_scope=scope)


async def guard(request: web.Request, service: str, verdict: Verdict, body_hash: str | None = None, *,
                scope: str = OPERATE) -> Action | None:
    """Let a call through by its risk: low plainly (None), medium with an event, high only when confirmed.

    Above low the caller needs ``scope`` (``operate``; the gateway's admin calls pass ``admin``):
    403 ``forbidden`` otherwise, before any confirmation is issued, whatever scope the method
    alone needs (a GET that stops is not a read). A high call without ``X-VX11-Confirm`` raises
    428 ``confirmation_required`` carrying a token; with one it is redeemed (403
    ``confirmation_invalid`` when it does not fit). ``body_hash`` is the SHA-256 (hex) of the
    call's whole body (the body is read here when None).
    """
    if verdict.risk == "low":
        return None
    check_scope(request, verdict, scope)
    principal = request[keys.PRINCIPAL]
    if verdict.risk == "medium":
        return Action(request, service, verdict, confirmed=False)
    if body_hash is None:
        body_hash = hashlib.sha256(await request.read()).hexdigest()
    confirmations = request.app[keys.CONFIRMATIONS]
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

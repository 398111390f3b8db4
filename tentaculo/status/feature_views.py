"""Feature flags: ``GET /operator/api/features`` and ``PUT /operator/api/features/{name}``."""

from __future__ import annotations

import re

from aiohttp import web

from tentaculo import keys
from tentaculo.auth.actions import guard
from tentaculo.auth.risk import FEATURE_OFF, Verdict
from tentaculo.auth.tokens import requires
from tentaculo.http.errors import Problem, ValidationFailed
from tentaculo.http.jsonio import json_response, read_json_object
from tentaculo.status.features import FLAG_STATUSES, REASON_MAX, UnknownFeature, is_flag_status
from tentaculo.status.policies import publish_change

_FIELDS = ("status", "reason")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@requires("read")
async def list_features(request: web.Request) -> web.Response:
    """Every feature with its effective status, the flag as set, and who set it."""
    flags = request.app[keys.FEATURES]
    return json_response({"features": flags.all(), "synced_at": flags.synced_at, "sync_error": flags.sync_error})


def _unknown(name: str, known: list[str]) -> Problem:
    return Problem("not_found", f"no feature named {name!r}; known features: {', '.join(known)}")


@requires("admin")
async def set_feature(request: web.Request) -> web.Response:
    """Turn a feature on, off or degraded, here and on every instance (within a second)."""
    flags = request.app[keys.FEATURES]
    name = request.match_info["name"]
    if name not in flags:
        raise _unknown(name, flags.names())
    data = await read_json_object(request)
    errors = []
    status = data.get("status")
    if not is_flag_status(status):
        errors.append({"field": "status", "message": f"required: one of {', '.join(FLAG_STATUSES)}"})
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        errors.append({"field": "reason", "message": "must be a string or null"})
    elif isinstance(reason, str):
        reason = reason.strip() or None
        if reason is not None and len(reason) > REASON_MAX:
            errors.append({"field": "reason", "message": f"at most {REASON_MAX} characters"})
        elif reason is not None and _CONTROL.search(reason):
            errors.append({"field": "reason", "message": "must be one line of text, without control characters"})
    for key in sorted(set(data) - set(_FIELDS)):
        errors.append({"field": key, "message": "unknown field; send only status and reason"})
    if errors or not is_flag_status(status):
        raise ValidationFailed(errors)
    principal = request[keys.PRINCIPAL]
    action = await guard(request, "tentaculo", Verdict("high", FEATURE_OFF), scope="admin") if status == "off" else None
    try:
        _, previous = await flags.set(name, status, reason, principal.name)
    except UnknownFeature:
        if action is not None:
            action.done(404)
        raise _unknown(name, flags.names()) from None
    except BaseException as error:  # PostgreSQL away, the client gone: the spent confirmation says failed
        if action is not None:
            action.failed(error)
        raise
    if action is not None:
        action.done(200)
    publish_change(request.app, "feature", "changed", {"feature": name, "status": status, "previous_status": previous})
    return json_response({**flags.snapshot(name), "previous_status": previous})

"""``GET /operator/api/policies`` and the risk rules' admin API (``/operator/api/policies/rules``)."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from tentaculo import keys
from tentaculo.auth.risk import ANY, rule_errors
from tentaculo.auth.tokens import requires
from tentaculo.db import queries
from tentaculo.http.errors import Problem, ValidationFailed
from tentaculo.http.jsonio import json_response, read_json_object
from tentaculo.status.policies import policies, publish_change


@requires("read")
async def list_policies(request: web.Request) -> web.Response:
    """Every rule the gateway enforces now, by section, each with its value and source."""
    return json_response({"instance": request.app[keys.SETTINGS].instance, "policies": policies(request.app)})


@requires("admin")
async def list_rules(request: web.Request) -> web.Response:
    """The risk rules as this instance holds them."""
    rules = request.app[keys.RISK_RULES]
    return json_response({"rules": [r.view() for r in rules.rules], "source": rules.source,
                          "loaded_at": rules.loaded_at, "load_error": rules.load_error})


@requires("admin")
async def set_rule(request: web.Request) -> web.Response:
    """Add a risk rule (or change the one with the same module, method and pattern), on every instance."""
    data = await read_json_object(request)
    data.setdefault("module", ANY)
    data.setdefault("method", ANY)
    if isinstance(data.get("method"), str) and data["method"] != ANY:
        data["method"] = data["method"].upper()
    if errors := rule_errors(data):
        raise ValidationFailed(errors)
    app = request.app
    row, created = await queries.upsert_risk_rule(
        app[keys.DB_POOL], data["module"], data["method"], data["pattern"], data["risk"],
        (data.get("reason") or "").strip(), request[keys.PRINCIPAL].name,
    )
    if row["locked"] and row["risk"] != data["risk"]:
        raise Problem("conflict", f"rule {row['id']} is locked: its risk stays {row['risk']}", rule_id=row["id"])
    rules = app[keys.RISK_RULES]
    await rules.reload()
    [rule] = [r for r in rules.rules if r.id == row["id"]]
    publish_change(app, "risk_rule", "added" if created else "changed", {"rule": rule.view()})
    return json_response(rule.view(), status=201 if created else 200)


@requires("admin")
async def remove_rule(request: web.Request) -> web.Response:
    """Remove an unlocked risk rule, on every instance."""
    text = request.match_info["id"]
    if not text.isdigit() or len(text) > 18:
        raise Problem("not_found", f"no risk rule {text!r}: ids are numbers")
    app = request.app
    pool: asyncpg.Pool = app[keys.DB_POOL]
    row = await queries.delete_risk_rule(pool, int(text))
    if row is None:
        if await queries.risk_rule(pool, int(text)) is not None:
            raise Problem("conflict", f"risk rule {text} is locked: it cannot be removed", rule_id=int(text))
        raise Problem("not_found", f"no risk rule {text}")
    rules = app[keys.RISK_RULES]
    gone = next((r.view() for r in rules.rules if r.id == row["id"]), None)
    await rules.reload()
    publish_change(app, "risk_rule", "removed", {"rule": gone or {"id": row["id"]}})
    return web.Response(status=204)

"""Policies as data, risk rules and the confirmation of high-risk calls, against real PostgreSQL,
Redis and a loopback module."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from tentaculo import keys
from tentaculo.app import create_app
from tentaculo.auth.confirm import Confirmations
from tentaculo.auth.risk import compile_pattern
from tentaculo.auth.tokens import Principal
from tentaculo.db import queries
from tentaculo.settings import Settings
from tests.confirm_helpers import CONFIRM_HEADER, confirmed
from tests.helpers import ADMIN_TOKEN, serve, wait_for
from tests.proxy_upstreams import ModuleApp

POLICIES = "/operator/api/policies"
RULES = "/operator/api/policies/rules"
EVENTS = "/operator/api/events"
SECTIONS = {"auth", "limits", "proxy", "chat", "events", "audit", "files", "cors", "risk"}
Gateway = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def start_gateway(aiohttp_client, settings: Settings, module: ModuleApp) -> Gateway:
    """A gateway whose ``madre`` and ``hermes`` modules are ``module`` under ``/base``."""

    async def start(**changes: object) -> TestClient:
        changes.setdefault("service_urls", {"madre": module.url + "/base/", "hermes": module.url + "/base/"})
        return await serve(aiohttp_client, create_app(dataclasses.replace(settings, **changes)))  # type: ignore[arg-type]

    return start


def proxy(path: str) -> str:
    return "/operator/api/proxy/" + path


def leaves(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Every policy entry ({value, source}) of a section, per-module entries included."""
    found = []
    for key, entry in section.items():
        if key == "modules":
            for module in entry.values():
                found.extend(module.values())
        else:
            found.append(entry)
    return found


async def actions(gw: TestClient, correlation_id: str, count: int) -> list[dict[str, Any]]:
    """The operator_action events of a correlation id, oldest first, once ``count`` are in history."""
    seen: list[dict[str, Any]] = []

    async def arrived() -> bool:
        resp = await gw.get(f"{EVENTS}?types=operator_action&correlation_id={correlation_id}&limit=20",
                            headers={"X-VX11-Token": ADMIN_TOKEN, "Accept": "application/json"})
        seen[:] = (await resp.json())["events"][::-1]
        return len(seen) >= count

    await wait_for(arrived)
    return [e["data"] for e in seen]


# ------------------------------------------------------------------ policies as data


async def test_policies_list_every_section_with_sources_and_no_secret_or_address(
    start_gateway, module, make_token
) -> None:
    gw = await start_gateway(cors_origins=("https://ops.example.com",), service_tokens={"madre": "module-secret-42"},
                             fs_roots={"logs": Path("/var/log/secret-dir")})
    reader = {"X-VX11-Token": await make_token("read")}
    resp = await gw.get(POLICIES, headers=reader)
    assert resp.status == 200
    text = await resp.text()
    policies = orjson.loads(text)["policies"]
    assert set(policies) == SECTIONS
    for name, section in policies.items():
        for entry in leaves(section):
            assert set(entry) == {"value", "source"}, (name, entry)
            assert entry["source"] in ("default", "environment", "database")
    # What the operator changed says so; what they did not, says default.
    assert policies["cors"]["origins"] == {"value": ["https://ops.example.com"], "source": "environment"}
    assert policies["audit"]["buffer"]["source"] == "environment"  # the test settings flush every 50 ms
    assert policies["limits"]["body_bytes"] == {"value": 1024 * 1024, "source": "default"}
    assert policies["auth"]["schemes"]["value"] == ["X-VX11-Token", "Authorization: Bearer"]
    assert policies["chat"]["provider_chain"]["value"] == ["deepseek", "local"]
    assert policies["files"]["roots"] == {"value": ["logs"], "source": "environment"}
    madre = policies["proxy"]["modules"]["madre"]
    assert madre["own_credential"] == {"value": True, "source": "environment"}
    stop = [r for r in madre["risk_rules"]["value"] if r["module"] == "madre" and r["pattern"] == "/**/stop/**"]
    assert stop and stop[0]["risk"] == "high" and stop[0]["locked"] and stop[0]["source"] == "default"
    assert {r["risk"] for r in policies["risk"]["rules"]["value"]} == {"low", "medium", "high"}
    # No secret, no address: not the module's credential, its URL, a host path or a token.
    for secret in ("module-secret-42", module.url, "127.0.0.1", "/var/log", ADMIN_TOKEN):
        assert secret not in text
    status = await (await gw.get("/operator/api/status", headers=reader)).json()
    assert status["policies"] == policies


async def test_a_changed_rule_shows_on_two_instances_at_once(start_gateway, admin_headers) -> None:
    one, two = await start_gateway(), await start_gateway()
    added = await one.post(RULES, json={"module": "hermes", "method": "POST", "pattern": "/echo/jobs/*/purge",
                                        "risk": "high", "reason": "purges a queue"}, headers=admin_headers)
    assert added.status == 201
    rule = await added.json()
    assert (rule["source"], rule["created_by"]) == ("database", "admin")

    async def shown_on(gw: TestClient, present: bool) -> bool:
        policies = (await (await gw.get(POLICIES, headers=admin_headers)).json())["policies"]
        status = (await (await gw.get("/operator/api/status", headers=admin_headers)).json())["policies"]
        ids = [r["id"] for r in policies["proxy"]["modules"]["hermes"]["risk_rules"]["value"]]
        ids_in_status = [r["id"] for r in status["risk"]["rules"]["value"]]
        return (rule["id"] in ids and rule["id"] in ids_in_status) == present

    assert await shown_on(one, True)  # the instance that made the change holds it before answering
    await wait_for(lambda: shown_on(two, True))
    # The rule is enforced on the other instance too.
    asked = await two.post(proxy("hermes/echo/jobs/7/purge"), data=b"", headers=admin_headers)
    assert (asked.status, (await asked.json())["code"]) == (428, "confirmation_required")
    assert (await two.delete(f"{RULES}/{rule['id']}", headers=admin_headers)).status == 204
    await wait_for(lambda: shown_on(one, False))
    assert (await one.post(proxy("hermes/echo/jobs/7/purge"), data=b"", headers=admin_headers)).status == 200


async def test_rule_changes_publish_policy_change(start_gateway, admin_headers) -> None:
    gw = await start_gateway()
    cid = f"rule-{uuid.uuid4().hex[:8]}"
    resp = await gw.post(RULES, json={"pattern": "/**/wipe/**", "risk": "high"},
                         headers={**admin_headers, "X-Correlation-ID": cid})
    assert resp.status == 201

    async def published() -> bool:
        page = await (await gw.get(f"{EVENTS}?types=policy_change&correlation_id={cid}",
                                   headers={**admin_headers, "Accept": "application/json"})).json()
        return bool(page["events"])

    await wait_for(published)


async def test_locked_rules_cannot_be_removed_or_lowered_and_bad_rules_are_named(start_gateway, admin_headers) -> None:
    gw = await start_gateway()
    rules = (await (await gw.get(RULES, headers=admin_headers)).json())["rules"]
    [locked] = [r for r in rules if r["module"] == "madre" and r["pattern"] == "/**/stop/**"]
    removed = await gw.delete(f"{RULES}/{locked['id']}", headers=admin_headers)
    assert (removed.status, (await removed.json())["code"]) == (409, "conflict")
    lowered = await gw.post(RULES, json={"module": "madre", "method": "*", "pattern": "/**/stop/**", "risk": "low"},
                            headers=admin_headers)
    assert lowered.status == 409
    bad = await gw.post(RULES, json={"module": "Madre!", "pattern": "stop", "risk": "urgent", "x": 1},
                        headers=admin_headers)
    assert bad.status == 422
    assert {e["field"] for e in (await bad.json())["errors"]} == {"module", "pattern", "risk", "x"}
    assert (await gw.delete(f"{RULES}/999999999", headers=admin_headers)).status == 404


def test_patterns_match_whole_segments_in_any_case() -> None:
    stop = compile_pattern("/**/stop/**")
    assert all(stop.match(p) for p in ("/stop", "/jobs/7/stop", "/stop/now", "/STOP/", "/a/Stop"))
    assert not any(stop.match(p) for p in ("/stopped", "/nonstop", "/jobs/stop-all"))
    jobs = compile_pattern("/jobs/*")
    assert jobs.match("/jobs/7") and not jobs.match("/jobs/7/x") and not jobs.match("/jobs")


# ------------------------------------------------------------------ confirmation through the proxy


async def test_a_high_risk_delete_waits_for_its_confirmation_and_runs_once(
    start_gateway, module, make_token, db
) -> None:
    gw = await start_gateway()
    operator = {"X-VX11-Token": await make_token("operate"), "X-Correlation-ID": f"del-{uuid.uuid4().hex[:8]}"}
    cid = operator["X-Correlation-ID"]
    asked = await gw.delete(proxy("madre/echo/jobs/7"), headers=operator)
    problem = await asked.json()
    assert asked.status == 428 and asked.content_type == "application/problem+json"
    assert problem["code"] == "confirmation_required" and problem["risk"] == "high"
    assert problem["action"] == {"method": "DELETE", "path": "/operator/api/proxy/madre/echo/jobs/7",
                                 "service": "madre"}
    confirmation = problem["confirmation"]
    assert (confirmation["header"], confirmation["expires_in"], confirmation["correlation_id"]) == (
        CONFIRM_HEADER, 60, cid)
    assert module.seen == []  # not forwarded

    done = await gw.delete(proxy("madre/echo/jobs/7"), headers={**operator, CONFIRM_HEADER: confirmation["token"]})
    assert done.status == 200
    assert [(s.method, s.raw_path) for s in module.seen] == [("DELETE", "/base/echo/jobs/7")]
    assert CONFIRM_HEADER.lower() not in module.seen[0].headers  # the module never sees it

    replayed = await gw.delete(proxy("madre/echo/jobs/7"), headers={**operator, CONFIRM_HEADER: confirmation["token"]})
    assert (replayed.status, (await replayed.json())["code"]) == (403, "confirmation_invalid")
    assert len(module.seen) == 1  # exactly one call reached the module

    # Every step is audited under the one correlation id, and each published operator_action.
    async def audited() -> bool:
        return len(await queries.audit_rows_for(db, cid)) == 3

    await wait_for(audited)
    assert sorted(r["status"] for r in await queries.audit_rows_for(db, cid)) == [200, 403, 428]
    events = await actions(gw, cid, 3)
    assert [e["outcome"] for e in events] == ["confirmation_required", "performed", "refused"]
    assert all(e["risk"] == "high" and e["who"].startswith("t-") for e in events)
    assert events[1]["action"]["method"] == "DELETE" and events[1]["status"] == 200 and events[1]["confirmed"]


async def test_a_confirmation_fits_one_caller_body_path_and_method(start_gateway, module, make_token) -> None:
    gw = await start_gateway()
    alice = {"X-VX11-Token": await make_token("operate")}
    bob = {"X-VX11-Token": await make_token("operate")}
    target = proxy("madre/echo/db/reset")
    asked = await gw.post(target, data=b'{"keep": false}', headers=alice)
    token = (await asked.json())["confirmation"]["token"]
    attempts = [
        (target, b'{"keep": true}', alice),  # another body
        (proxy("madre/echo/cache/reset"), b'{"keep": false}', alice),  # another path
        (target + "?all=1", b'{"keep": false}', alice),  # another query
        (target, b'{"keep": false}', bob),  # another caller
        (target, b'{"keep": false}', {**alice, CONFIRM_HEADER: "not-a-token"}),  # not a token
    ]
    for path, body, headers in attempts:
        resp = await gw.post(path, data=body, headers={CONFIRM_HEADER: token, **headers})
        assert (resp.status, (await resp.json())["code"]) == (403, "confirmation_invalid"), path
    wrong_method = await gw.put(target, data=b'{"keep": false}', headers={**alice, CONFIRM_HEADER: token})
    assert wrong_method.status == 403
    assert module.seen == []
    done = await gw.post(target, data=b'{"keep": false}', headers={**alice, CONFIRM_HEADER: token})
    assert done.status == 200 and (await done.json())["size"] == 15  # the body the confirmation was bound to


async def test_an_expired_confirmation_is_refused(settings, db, redis_url) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    now = [time.time()]
    confirmations = Confirmations(db, redis, prefix=settings.redis_prefix, clock=lambda: now[0])
    caller = Principal("ops", frozenset({"operate"}), 7)
    try:
        token = await confirmations.issue(caller, "DELETE", "/x", "h")
        now[0] += 61
        with pytest.raises(Exception, match="expired") as refused:
            await confirmations.redeem(token, caller, "DELETE", "/x", "h")
        assert getattr(refused.value, "code", None) == "confirmation_invalid"
        now[0] -= 61
        await confirmations.redeem(token, caller, "DELETE", "/x", "h")  # within its life: accepted once
    finally:
        await redis.aclose()


async def test_medium_and_low_calls_pass_and_medium_ones_are_told(start_gateway, module, make_token) -> None:
    gw = await start_gateway()
    cid = f"mid-{uuid.uuid4().hex[:8]}"
    operator = {"X-VX11-Token": await make_token("operate", "read"), "X-Correlation-ID": cid}
    assert (await gw.patch(proxy("madre/echo/jobs/7"), data=b"{}", headers=operator)).status == 200
    assert (await gw.post(proxy("madre/echo/jobs/7/restart"), headers=operator)).status == 200
    assert (await gw.get(proxy("madre/echo/jobs/7"), headers=operator)).status == 200
    assert (await gw.post(proxy("madre/echo/jobs"), data=b"{}", headers=operator)).status == 200
    assert [s.method for s in module.seen] == ["PATCH", "POST", "GET", "POST"]
    events = await actions(gw, cid, 2)
    assert [(e["action"]["method"], e["risk"], e["outcome"], e["status"]) for e in events] == [
        ("PATCH", "medium", "performed", 200), ("POST", "medium", "performed", 200)]


# ------------------------------------------------------------------ the gateway's own destructive calls


async def test_revoking_a_token_and_turning_a_feature_off_wait_for_confirmation(
    start_gateway, admin_headers, make_token
) -> None:
    gw = await start_gateway()
    name = f"victim-{uuid.uuid4().hex[:6]}"
    victim = {"X-VX11-Token": await make_token("read", name=name)}
    first = await gw.delete(f"/operator/api/tokens/{name}", headers=admin_headers)
    assert (first.status, (await first.json())["code"]) == (428, "confirmation_required")
    assert (await gw.get("/operator/api/whoami", headers=victim)).status == 200  # not revoked yet
    assert (await confirmed(gw, "DELETE", f"/operator/api/tokens/{name}", headers=admin_headers)).status == 204
    assert (await gw.get("/operator/api/whoami", headers=victim)).status == 401

    off = await gw.put("/operator/api/features/metrics", json={"status": "off"}, headers=admin_headers)
    assert off.status == 428
    features = (await (await gw.get("/operator/api/features", headers=admin_headers)).json())["features"]
    assert next(f for f in features if f["name"] == "metrics")["flag"] == "on"  # not turned off yet
    done = await confirmed(gw, "PUT", "/operator/api/features/metrics", json={"status": "off", "reason": "test"},
                           headers=admin_headers)
    assert done.status == 200 and (await done.json())["status"] == "off"
    back = await gw.put("/operator/api/features/metrics", json={"status": "on"}, headers=admin_headers)
    assert back.status == 200  # turning a feature on is not destructive


# ------------------------------------------------------------------ the CLI


def _policy_cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    # A process of its own, as an operator runs it: the CLI configures logging for the whole process.
    env = {**os.environ, "TENTACULO_DATABASE_URL": settings.database_url or "", "TENTACULO_LOG_FORMAT": "json"}
    return subprocess.run([sys.executable, "-m", "tentaculo", "policy", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_cli_lists_sets_and_removes_rules(settings) -> None:
    pattern = f"/cli-{uuid.uuid4().hex[:6]}/**"
    added = _policy_cli(settings, "set", "--module", "hermes", "--method", "post", pattern, "high",
                        "--reason", "from the CLI")
    assert added.returncode == 0, added.stderr
    listed = _policy_cli(settings, "list")
    assert listed.returncode == 0, listed.stderr
    [line] = [row for row in listed.stdout.splitlines() if pattern in row]
    assert "hermes" in line and "POST" in line and "high" in line and "from the CLI" in line
    rule_id = line.split()[0]
    assert _policy_cli(settings, "remove", rule_id).returncode == 0
    after = _policy_cli(settings, "list")
    assert after.returncode == 0 and pattern not in after.stdout
    assert _policy_cli(settings, "set", "stop", "urgent").returncode == 2


def test_a_variable_set_to_the_shipped_value_is_still_its_source() -> None:
    from tentaculo.status.policies import setting_source

    default = Settings()
    assert setting_source(default, "proxy_retries") == "default"
    chosen = Settings.from_env({"TENTACULO_PROXY_RETRIES": str(default.proxy_retries)})
    assert chosen.proxy_retries == default.proxy_retries
    assert setting_source(chosen, "proxy_retries") == "environment"
    assert setting_source(chosen, "proxy_read_timeout") == "default"


# ------------------------------------------------------------------ review fixes: fail-safe rules, spelling, scope


async def test_rules_that_cannot_be_read_are_the_shipped_ones_and_locked_ones_are_a_floor() -> None:
    import asyncpg

    from tentaculo.auth.risk import DEFAULT_RULES, RiskRules

    # PostgreSQL down at start: nothing listens on port 1.
    pool = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:1/postgres", min_size=0, timeout=1)
    rules = RiskRules(pool, reload_seconds=60)
    try:
        await rules.start(wait=2)
        assert rules.loaded_at is None and rules.load_error is not None
        assert rules.source == "default (database unreadable)"
        for method, path in (("DELETE", "/jobs/7"), ("POST", "/jobs/7/stop"), ("POST", "/jobs/7/kill"),
                             ("POST", "/jobs/7/terminate"), ("POST", "/destroy")):
            assert rules.classify("madre", method, path).risk == "high", (method, path)
        assert rules.classify("hermes", "POST", "/x/stop").risk == "high"
        assert rules.classify("hermes", "POST", "/x/restart").risk == "medium"
        assert rules.classify("hermes", "POST", "/x").risk == "low"
    finally:
        await rules.close()
        await pool.close()
    # Once read, a table that lost the locked madre rules still cannot lower them.
    rules.apply([r for r in DEFAULT_RULES if not r.locked and r.pattern not in ("/**", "/**/stop/**")])
    assert rules.source == "database"
    assert rules.classify("madre", "POST", "/jobs/7/stop").risk == "high"
    assert rules.classify("madre", "DELETE", "/jobs/7").risk == "high"
    assert rules.classify("hermes", "POST", "/jobs/7/stop").risk == "low"  # the table's word for other modules


async def test_the_shipped_rules_in_code_are_those_the_migrations_seed(db) -> None:
    from tentaculo.auth.risk import DEFAULT_RULES

    rows = await db.fetch("SELECT module, method, pattern, risk, reason, locked FROM risk_rules "
                          "WHERE created_by = 'default' ORDER BY id")
    seeded = {tuple(r) for r in rows}
    assert {(r.module, r.method, r.pattern, r.risk, r.reason, r.locked) for r in DEFAULT_RULES} <= seeded
    assert {(r.module, r.method, r.pattern) for r in DEFAULT_RULES} == {r[:3] for r in seeded}


async def test_policies_say_when_the_shipped_rules_stand_in(start_gateway, admin_headers) -> None:
    from tentaculo import keys
    from tentaculo.auth.risk import DEFAULT_RULES

    gw = await start_gateway()
    # As if the table had never been readable: no refresh, the shipped rules, the last error.
    rules = gw.app[keys.RISK_RULES]
    await rules.close()
    rules.apply(list(DEFAULT_RULES))
    rules.loaded_at, rules.load_error = None, "connection refused"
    policies = (await (await gw.get(POLICIES, headers=admin_headers)).json())["policies"]
    assert policies["risk"]["rules"]["source"] == "default (database unreadable)"
    assert policies["proxy"]["modules"]["madre"]["risk_rules"]["source"] == "default (database unreadable)"
    listed = await (await gw.get(RULES, headers=admin_headers)).json()
    assert listed["source"] == "default (database unreadable)" and listed["loaded_at"] is None
    asked = await gw.post(proxy("madre/echo/jobs/7/kill"), data=b"", headers=admin_headers)
    assert asked.status == 428


def test_verbs_match_in_every_spelling_of_a_segment_but_only_whole_segments() -> None:
    from tentaculo.auth.risk import DEFAULT_RULES, classify

    def risk(path: str) -> str:
        return classify(DEFAULT_RULES, "POST", path).risk

    for path in ("/jobs/7/stop;x", "/jobs/7/stop.json", "/jobs/7/%73top", "/jobs/7/%2573top", "/jobs/7/STOP.tar.gz",
                 "/jobs/7/stop;a=b/now", "/db/restore.json", "/jobs/7/%ef%bd%93top"):
        assert risk(path) == "high", path
    for path in ("/jobs/7/stopped", "/restore-points", "/jobs/stop-all", "/nonstop.json", "/jobs/7/update-log"):
        assert risk(path) == "low", path
    assert risk("/jobs/7/restart.json") == "medium"


async def test_a_verb_spelled_otherwise_through_the_proxy_still_waits_for_confirmation(
    start_gateway, module, make_token
) -> None:
    gw = await start_gateway()
    operator = {"X-VX11-Token": await make_token("operate")}
    for spelled in ("stop;x", "stop.json", "%2573top"):
        asked = await gw.post(proxy(f"madre/echo/jobs/7/{spelled}"), data=b"", headers=operator)
        assert (asked.status, (await asked.json())["code"]) == (428, "confirmation_required"), spelled
    assert module.seen == []
    assert (await gw.post(proxy("madre/echo/jobs/7/stopped"), data=b"", headers=operator)).status == 200
    assert (await gw.post(proxy("madre/echo/restore-points"), data=b"", headers=operator)).status == 200


async def test_a_read_token_cannot_ask_for_or_perform_a_risky_get(start_gateway, module, make_token) -> None:
    gw = await start_gateway()
    reader = {"X-VX11-Token": await make_token("read")}
    refused = await gw.get(proxy("madre/echo/jobs/7/stop"), headers=reader)
    problem = await refused.json()
    assert (refused.status, problem["code"], problem["required_scope"]) == (403, "forbidden", "operate")
    assert "confirmation" not in problem
    assert (await gw.get(proxy("madre/echo/jobs/7/restart"), headers=reader)).status == 403  # medium too
    assert (await gw.get(proxy("madre/echo/jobs/7"), headers=reader)).status == 200  # a plain read
    operator = {"X-VX11-Token": await make_token("read", "operate")}
    asked = await gw.get(proxy("madre/echo/jobs/7/stop"), headers=operator)
    assert (asked.status, (await asked.json())["code"]) == (428, "confirmation_required")
    assert [s.raw_path for s in module.seen] == ["/base/echo/jobs/7"]


async def test_killing_terminating_or_destroying_madre_stays_high(start_gateway, admin_headers) -> None:
    gw = await start_gateway()
    rules = (await (await gw.get(RULES, headers=admin_headers)).json())["rules"]
    for verb in ("kill", "terminate", "destroy"):
        pattern = f"/**/{verb}/**"
        [locked] = [r for r in rules if r["module"] == "madre" and r["pattern"] == pattern]
        assert locked["locked"] and locked["risk"] == "high" and locked["source"] == "default"
        removed = await gw.delete(f"{RULES}/{locked['id']}", headers=admin_headers)
        assert (removed.status, (await removed.json())["code"]) == (409, "conflict"), verb
        lowered = await gw.post(RULES, json={"module": "madre", "method": "*", "pattern": pattern, "risk": "low"},
                                headers=admin_headers)
        assert lowered.status == 409, verb


async def test_a_confirmed_revoke_that_fails_publishes_its_failure(
    start_gateway, admin_headers, make_token, monkeypatch
) -> None:
    import asyncpg

    from tentaculo.auth import views as auth_views

    gw = await start_gateway()
    name = f"victim-{uuid.uuid4().hex[:6]}"
    await make_token("read", name=name)

    async def unreachable(*_: object, **__: object) -> None:
        raise asyncpg.CannotConnectNowError("the database system is shutting down")

    monkeypatch.setattr(auth_views.queries, "revoke_token", unreachable)
    cid = f"rvk-{uuid.uuid4().hex[:8]}"
    done = await confirmed(gw, "DELETE", f"/operator/api/tokens/{name}", headers={**admin_headers, "X-Correlation-ID": cid})
    assert done.status >= 500
    events = await actions(gw, cid, 2)
    assert [e["outcome"] for e in events] == ["confirmation_required", "failed"]
    assert events[1]["confirmed"] and events[1]["error"] == "CannotConnectNowError"


async def test_a_confirmed_proxied_call_that_breaks_publishes_its_failure(
    start_gateway, make_token, monkeypatch
) -> None:
    from tentaculo.proxy import views as proxy_views

    gw = await start_gateway()

    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(proxy_views, "_forward", broken)
    cid = f"brk-{uuid.uuid4().hex[:8]}"
    operator = {"X-VX11-Token": await make_token("operate"), "X-Correlation-ID": cid}
    done = await confirmed(gw, "POST", proxy("madre/echo/jobs/7/stop"), data=b"", headers=operator)
    assert done.status == 500
    events = await actions(gw, cid, 2)
    assert [e["outcome"] for e in events] == ["confirmation_required", "failed"]
    assert events[1]["error"] == "RuntimeError" and events[1]["confirmed"]


@pytest.mark.filterwarnings("ignore:Sending a large body:ResourceWarning")
async def test_a_high_risk_body_may_be_as_large_as_any_proxied_one(start_gateway, module, make_token) -> None:
    gw = await start_gateway(proxy_max_body_bytes=3 * 1024 * 1024)
    operator = {"X-VX11-Token": await make_token("operate")}
    payload = b"x" * (2 * 1024 * 1024)  # above TENTACULO_MAX_BODY_BYTES (1 MiB), within the proxy's limit
    done = await confirmed(gw, "POST", proxy("madre/echo/db/reset"), data=payload, headers=operator)
    assert done.status == 200 and (await done.json())["size"] == len(payload)

    async def chunks() -> Any:
        for _ in range(4):
            yield b"y" * (1024 * 1024)

    too_large = await gw.post(proxy("madre/echo/db/reset"), data=chunks(), headers=operator)  # chunked, no length
    assert (too_large.status, (await too_large.json())["code"]) == (413, "payload_too_large")


async def test_a_rule_set_from_the_cli_applies_at_once_everywhere_and_is_announced_once(
    start_gateway, settings, admin_headers
) -> None:
    # A periodic re-read far off: only the CLI's notice can bring the rule in during the test.
    one, two = await start_gateway(policy_reload_seconds=300), await start_gateway(policy_reload_seconds=300)
    await wait_for(lambda: one.app[keys.POLICY_NOTICES].listening and two.app[keys.POLICY_NOTICES].listening)
    pattern = f"/cli-{uuid.uuid4().hex[:6]}/**"
    env = {**os.environ, "TENTACULO_DATABASE_URL": settings.database_url or "", "TENTACULO_LOG_FORMAT": "json"}
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tentaculo", "policy", "set", "--module", "hermes", "--method", "post", pattern,
        "high", "--reason", "from the CLI", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    assert "apply it at once" in out.decode()

    def holds(gw: TestClient) -> bool:
        return any(r.pattern == pattern for r in gw.app[keys.RISK_RULES].rules)

    await wait_for(lambda: holds(one) and holds(two))
    await wait_for(lambda: not one.app[keys.POLICY_NOTICES].pending and not two.app[keys.POLICY_NOTICES].pending)

    async def announced(gw: TestClient) -> list[dict[str, Any]]:
        page = await (await gw.get(f"{EVENTS}?types=policy_change&limit=50",
                                   headers={**admin_headers, "Accept": "application/json"})).json()
        return [e["data"] for e in page["events"] if (e["data"].get("rule") or {}).get("pattern") == pattern]

    async def seen_by_both() -> bool:
        return bool(await announced(one)) and bool(await announced(two))

    await wait_for(seen_by_both)
    for gw in (one, two):
        [event] = await announced(gw)  # once, though both instances heard the notice
        assert (event["what"], event["change"], event["by"]) == ("risk_rule", "added", "cli")
    asked = await two.post(proxy(f"hermes{pattern[:-3]}/x"), data=b"", headers=admin_headers)
    assert (asked.status, (await asked.json())["code"]) == (428, "confirmation_required")

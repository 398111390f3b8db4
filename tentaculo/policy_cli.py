"""``tentaculo policy list|set|remove``: the risk rules, straight in PostgreSQL.

Run at the machine by whoever holds the database: like ``tentaculo token revoke``, it needs no
confirmation. Running gateways re-read the rules within ``TENTACULO_POLICY_RELOAD_SECONDS``.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

import asyncpg
import orjson

from tentaculo.auth.risk import RiskRule, rule_errors
from tentaculo.db import queries
from tentaculo.db.migrate import migrate
from tentaculo.settings import Settings


def policy_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tentaculo policy list|set|remove`` to the command's parser."""
    policy = sub.add_parser("policy", help="list or change the risk rules (running gateways re-read them within "
                                           "TENTACULO_POLICY_RELOAD_SECONDS)")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    psub.add_parser("list", help="list the risk rules (every policy: GET /operator/api/policies)")
    change = psub.add_parser("set", help="add a rule, or change the risk and reason of the one with the same "
                                         "module, method and pattern")
    change.add_argument("pattern", help="path pattern relative to the module, e.g. /**/stop/** or /jobs/*")
    change.add_argument("risk", help="low, medium or high")
    change.add_argument("--module", default="*", help="module name, or * for every module (default *)")
    change.add_argument("--method", default="*", help="HTTP method, or * for every method (default *)")
    change.add_argument("--reason", default="", help="why: shown to the operator asked to confirm")
    remove = psub.add_parser("remove", help="remove a rule by its id (locked rules stay)")
    remove.add_argument("id", type=int)


async def policy_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``tentaculo policy``; returns the exit status."""

    if args.policy_command == "set":
        method = args.method.upper() if args.method != "*" else "*"
        data = {"module": args.module, "method": method, "pattern": args.pattern, "risk": args.risk,
                "reason": args.reason.strip()}
        if errors := rule_errors(data):
            for error in errors:
                print(f"tentaculo: {error['field']}: {error['message']}", file=sys.stderr)
            return 2
    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        await migrate(conn)
        if args.policy_command == "list":
            rows = await queries.list_risk_rules(conn)
            print(f"{'ID':<6} {'MODULE':<16} {'METHOD':<8} {'RISK':<7} {'SOURCE':<9} {'PATTERN':<28} REASON")
            for r in rows:
                source = RiskRule.from_row(r).source
                mark = " (locked)" if r["locked"] else ""
                print(f"{r['id']:<6} {r['module']:<16} {r['method']:<8} {r['risk']:<7} {source:<9} "
                      f"{r['pattern']:<28} {r['reason']}{mark}")
            return 0
        if args.policy_command == "remove":
            gone = await queries.delete_risk_rule(conn, args.id)
            if gone is None:
                locked = await queries.risk_rule(conn, args.id) is not None
                print(f"tentaculo: risk rule {args.id} is locked" if locked else f"tentaculo: no risk rule {args.id}",
                      file=sys.stderr)
                return 1
            await _notify(conn, "removed", RiskRule.from_row(gone).view())
            print(f"removed risk rule {args.id}; running gateways apply it at once")
            return 0
        row, created = await queries.upsert_risk_rule(conn, data["module"], data["method"], data["pattern"],
                                                      data["risk"], data["reason"], "cli")
        if row["risk"] == data["risk"]:
            await _notify(conn, "added" if created else "changed", RiskRule.from_row(row).view())
    finally:
        await conn.close()
    if row["risk"] != data["risk"]:
        print(f"tentaculo: risk rule {row['id']} is locked: its risk stays {row['risk']}", file=sys.stderr)
        return 1
    print(f"{'added' if created else 'updated'} risk rule {row['id']}: {row['module']} {row['method']} "
          f"{row['pattern']} -> {row['risk']}; running gateways apply it at once")
    return 0


async def _notify(conn: asyncpg.Connection, change: str, rule: dict[str, Any]) -> None:
    """Tell running gateways at once; they re-read the rules and one publishes ``policy_change``."""
    notice = {"id": uuid.uuid4().hex, "what": "risk_rule", "change": change, "rule": rule, "by": "cli"}
    await queries.notify_risk_rules(conn, orjson.dumps(notice, default=str).decode())

"""Risk rules: how dangerous a call is (``low``, ``medium`` or ``high``), read from PostgreSQL.

A rule names a module (or ``*``), a method (or ``*``) and a path pattern relative to the module's
base: ``/`` separates segments, ``*`` matches within one segment and a ``**`` segment matches any
number of segments (none included), so ``/**/stop/**`` matches ``/stop``, ``/jobs/7/stop`` and
``/stop/now`` but not ``/stopped``. Patterns match case-insensitively: a module that does not
care about case must not let ``/STOP`` pass for a read.

A call's risk is the highest of the rules that match it (none: ``low``). Raising a risk is adding
a rule; lowering one is removing the rule that raised it. Locked rules (stopping, killing,
terminating, destroying or deleting madre, and the gateway's own destructive calls) cannot be
removed.

A path is matched segment by segment as the module may read it: each segment fully
percent-decoded (as many layers as the proxy's path checks look through), its ``;params``
dropped, and, for a second match, cut to its stem before the first ``.`` (``stop.json`` is
``stop``). So ``/jobs/7/stop;x``, ``/jobs/7/stop.json`` and ``/jobs/7/%2573top`` are stops;
``/stopped`` and ``/restore-points`` still are not.

Until the table has been read (PostgreSQL down at start, the table missing), the shipped rules in
``DEFAULT_RULES`` (those the migrations seed) apply; once it has been read, its rules apply, and
the shipped locked rules always do, whatever the table holds.

``RiskRules`` keeps the rules in memory: changes made through the API reload it here at once and
on every other instance when their ``policy_change`` event arrives; a periodic re-read
(``TENTACULO_POLICY_RELOAD_SECONDS``) catches what an event missed and the CLI's changes.
"""

from __future__ import annotations

import asyncio
import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import asyncpg
import structlog

from tentaculo.db import DB_FAILURES, queries
from tentaculo.files.sandbox import DECODE_LAYERS
from tentaculo.http.errors import failure_reason
from tentaculo.tasks import Periodic

log = structlog.get_logger("tentaculo.risk")

RISKS = ("low", "medium", "high")
RANK = {risk: rank for rank, risk in enumerate(RISKS)}
ANY = "*"
GATEWAY_MODULE = "tentaculo"
MODULE_NAME = re.compile(r"\*|[a-z0-9][a-z0-9_-]{0,63}")
METHOD = re.compile(r"\*|[A-Z][A-Z-]{0,31}")
PATTERN_MAX = 256
REASON_MAX = 500
_BAD_PATTERN = re.compile(r"//|\\|%|\s|(^|/)\.\.?(/|$)|\*\*\*")
DEFAULT_RELOAD_SECONDS = 5.0
RULE_FIELDS = ("module", "method", "pattern", "risk", "reason")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of a rule's path pattern (see the module docstring).

    Raises ValueError for a pattern that does not start with ``/``, is too long, or holds an
    empty, ``.`` or ``..`` segment, ``%``, ``\\`` or spaces.
    """
    if not pattern.startswith("/") or len(pattern) > PATTERN_MAX or _BAD_PATTERN.search(pattern):
        raise ValueError("a pattern starts with '/', is at most 256 characters and holds no empty, '.' or '..' "
                         "segment, '%', '\\', spaces or '***'")
    parts = []
    for segment in pattern.strip("/").split("/") if pattern != "/" else []:
        if segment == "**":
            parts.append("(?:/[^/]*)*")
        elif "**" in segment:
            raise ValueError("'**' stands for whole segments only, as in /**/stop/**")
        else:
            parts.append("/" + "[^/]*".join(re.escape(piece) for piece in segment.split("*")))
    return re.compile("^" + "".join(parts) + "/?$", re.IGNORECASE)


def rule_errors(data: dict[str, object]) -> list[dict[str, str]]:
    """What is wrong with a rule sent to the API or the CLI, field by field."""
    errors = []
    module, method, pattern, risk = (data.get(f) for f in ("module", "method", "pattern", "risk"))
    if not isinstance(module, str) or not MODULE_NAME.fullmatch(module):
        errors.append({"field": "module", "message": "a module name (lower-case letters, digits, '-', '_') or *"})
    if not isinstance(method, str) or not METHOD.fullmatch(method):
        errors.append({"field": "method", "message": "an HTTP method in capitals, or *"})
    if not isinstance(pattern, str):
        errors.append({"field": "pattern", "message": "a path pattern such as /**/stop/** or /jobs/*"})
    else:
        try:
            compile_pattern(pattern)
        except ValueError as exc:
            errors.append({"field": "pattern", "message": str(exc)})
    if not isinstance(risk, str) or risk not in RISKS:
        errors.append({"field": "risk", "message": f"one of {', '.join(RISKS)}"})
    reason = data.get("reason", "")
    if not isinstance(reason, str) or len(reason) > REASON_MAX or _CONTROL.search(reason):
        errors.append({"field": "reason", "message": f"one line of text, at most {REASON_MAX} characters"})
    for key in sorted(set(data) - set(RULE_FIELDS)):
        errors.append({"field": key, "message": "unknown field; send module, method, pattern, risk, reason"})
    return errors


@dataclass(frozen=True, slots=True)
class RiskRule:
    """One rule; ``id`` None for the gateway's own built-in rules (not stored, always locked)."""

    id: int | None
    module: str
    method: str
    pattern: str
    risk: str
    reason: str
    locked: bool
    created_by: str
    created_at: datetime | None
    regex: re.Pattern[str]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> RiskRule:
        return cls(row["id"], row["module"], row["method"], row["pattern"], row["risk"], row["reason"],
                   row["locked"], row["created_by"], row["created_at"], compile_pattern(row["pattern"]))

    @property
    def source(self) -> str:
        """``default`` for the shipped rules, ``database`` for those an admin added."""
        return "default" if self.created_by == "default" else "database"

    def matches(self, method: str, path: str) -> bool:
        return (self.method == ANY or self.method == method) and self.regex.match(path) is not None

    def view(self) -> dict[str, Any]:
        """The rule as the API and ``policy_change`` show it."""
        return {"id": self.id, "module": self.module, "method": self.method, "pattern": self.pattern,
                "risk": self.risk, "reason": self.reason, "locked": self.locked, "source": self.source,
                "created_by": self.created_by, "created_at": self.created_at}


def _builtin(method: str, pattern: str, reason: str) -> RiskRule:
    return RiskRule(None, GATEWAY_MODULE, method, pattern, "high", reason, True, "default", None,
                    compile_pattern(pattern))


# The gateway's own destructive admin calls: always high, whatever the table says.
REVOKE_TOKEN = _builtin("DELETE", "/operator/api/tokens/*", "revoking a token locks its holder out")
FEATURE_OFF = _builtin("PUT", "/operator/api/features/*", "turning a feature off (status off) stops it everywhere")
GATEWAY_RULES = (REVOKE_TOKEN, FEATURE_OFF)


def _shipped(module: str, method: str, pattern: str, risk: str, reason: str, locked: bool = False) -> RiskRule:
    return RiskRule(None, module, method, pattern, risk, reason, locked, "default", None, compile_pattern(pattern))


_MADRE_DELETES = "deleting in madre, the orchestrator, is always high"
# The shipped classification, as migrations 0004 and 0005 seed it: what applies until the table is
# read, and (the locked ones) always. tests/test_policies.py checks it matches the seeded rows.
DEFAULT_RULES = (
    _shipped(ANY, "GET", "/**", "low", "reads"),
    _shipped(ANY, "HEAD", "/**", "low", "reads"),
    _shipped(ANY, "PATCH", "/**", "medium", "patches a resource"),
    _shipped(ANY, ANY, "/**/restart/**", "medium", "restarts"),
    _shipped(ANY, ANY, "/**/suspend/**", "medium", "suspends"),
    _shipped(ANY, ANY, "/**/patch/**", "medium", "patches"),
    _shipped(ANY, ANY, "/**/update/**", "medium", "updates"),
    _shipped(ANY, "DELETE", "/**", "high", "deletes"),
    _shipped(ANY, ANY, "/**/delete/**", "high", "deletes"),
    _shipped(ANY, ANY, "/**/drop/**", "high", "drops data"),
    _shipped(ANY, ANY, "/**/destroy/**", "high", "destroys"),
    _shipped(ANY, ANY, "/**/reset/**", "high", "resets state"),
    _shipped(ANY, ANY, "/**/migrate/**", "high", "migrates data"),
    _shipped(ANY, ANY, "/**/restore/**", "high", "restores from a backup"),
    _shipped(ANY, ANY, "/**/stop/**", "high", "stops"),
    _shipped(ANY, ANY, "/**/kill/**", "high", "kills"),
    _shipped(ANY, ANY, "/**/terminate/**", "high", "terminates"),
    _shipped("madre", "DELETE", "/**", "high", _MADRE_DELETES, locked=True),
    _shipped("madre", ANY, "/**/delete/**", "high", _MADRE_DELETES, locked=True),
    _shipped("madre", ANY, "/**/stop/**", "high", "stopping madre, the orchestrator, is always high", locked=True),
    _shipped("madre", ANY, "/**/kill/**", "high", "killing madre, the orchestrator, is always high", locked=True),
    _shipped("madre", ANY, "/**/terminate/**", "high", "terminating madre, the orchestrator, is always high",
             locked=True),
    _shipped("madre", ANY, "/**/destroy/**", "high", "destroying in madre, the orchestrator, is always high",
             locked=True),
)
LOCKED_DEFAULT_RULES = tuple(r for r in DEFAULT_RULES if r.locked)


def _segment_forms(segment: str) -> tuple[str, str]:
    """A decoded path segment as a module may read it, and its stem before the first ``.``."""
    for _ in range(DECODE_LAYERS):  # the proxy refused a path encoded more deeply than this
        if "%" not in segment:
            break
        segment = unquote(segment, errors="replace")
    segment = unicodedata.normalize("NFKC", segment).split(";", 1)[0]
    stem = segment.split(".", 1)[0]
    return segment, stem or segment


@functools.lru_cache(maxsize=4096)
def _needle(pattern: str) -> str:
    """The longest literal piece of ``pattern``, lower-cased: any path it matches holds it ('' if none)."""
    return max((piece for segment in pattern.split("/") for piece in segment.split("*")), key=len).lower()


def match_paths(path: str) -> tuple[str, ...]:
    """The forms of ``path`` (decoded once, relative to the module's base) that rules are matched against.

    Every segment fully percent-decoded, without ``;params`` (and NFKC-normalised); then the same
    with each segment cut to its stem before a ``.``.
    """
    if path.isascii() and "%" not in path and ";" not in path:
        # The common case: nothing to decode or strip, and NFKC leaves ASCII alone.
        if "." not in path:
            return (path,)
        cut = "/".join(s.split(".", 1)[0] or s for s in path.split("/"))
        return (path,) if cut == path else (path, cut)
    forms = [_segment_forms(s) for s in path.split("/")]
    whole = "/".join(f[0] for f in forms)
    stems = "/".join(f[1] for f in forms)
    return (whole,) if stems == whole else (whole, stems)


@dataclass(frozen=True, slots=True)
class Verdict:
    """How risky one call is and the rule that made it so (None: no rule matched, low)."""

    risk: str
    rule: RiskRule | None

    @property
    def reason(self) -> str:
        return self.rule.reason if self.rule is not None else "no rule matches"


LOW = Verdict("low", None)


def classify(rules: Iterable[RiskRule], method: str, path: str) -> Verdict:
    """The highest-risk rule among ``rules`` matching ``method`` and any form of ``path`` (see ``match_paths``)."""
    # Each form with its lower-case spelling when ASCII: a rule whose literal text is not in it
    # cannot match, and skipping its regex is most of the check's cost (non-ASCII forms always
    # go to the regex, whose case-insensitive matching folds more than lower() does).
    forms = [(p, p.lower() if p.isascii() else None) for p in match_paths(path)]
    best = LOW
    for rule in rules:
        if (rule.method != ANY and rule.method != method) or RANK[rule.risk] <= RANK[best.risk]:
            continue
        needle = _needle(rule.pattern)
        if any((low is None or needle in low) and rule.regex.match(p) is not None for p, low in forms):
            best = Verdict(rule.risk, rule)
            if rule.risk == "high":
                break
    return best


class RiskRules:
    """Every risk rule in memory, kept in step across instances; see the module docstring."""

    def __init__(self, pool: asyncpg.Pool, *, reload_seconds: float = DEFAULT_RELOAD_SECONDS) -> None:
        self._pool = pool
        self.reload_seconds = reload_seconds
        # The shipped rules until the table has been read (``loaded_at`` set), then the table's.
        self.rules: tuple[RiskRule, ...] = DEFAULT_RULES
        # module -> the rules that may apply to it (its own and '*'), highest risk first.
        self._by_module: dict[str, tuple[RiskRule, ...]] = {}
        self.loaded_at: datetime | None = None
        self.load_error: str | None = "not read yet"
        self._reload_now = asyncio.Event()
        self._refresh = Periodic("risk-rules", self._reread, reload_seconds, wake=self._reload_now)

    async def start(self, wait: float = 5.0) -> None:
        """Read the rules (waiting up to ``wait`` s for PostgreSQL), then keep them fresh."""
        await self._reread(wait)
        self._refresh.start()

    async def close(self) -> None:
        await self._refresh.stop()

    def reload_soon(self) -> None:
        """Re-read the rules now, in the background (another instance changed them)."""
        self._reload_now.set()

    async def _reread(self, wait: float | None = None) -> None:
        try:
            async with asyncio.timeout(wait if wait is not None else max(self.reload_seconds, 2.0)):
                await self.reload()
        except DB_FAILURES as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        reason = failure_reason(exc)
        if self.load_error != reason:
            log.warning("risk_rules_reload_failed", error=reason)
        self.load_error = reason

    async def reload(self) -> None:
        """Read every rule from PostgreSQL."""
        rows = await queries.list_risk_rules(self._pool)
        self.apply([RiskRule.from_row(r) for r in rows])
        self.load_error = None

    def apply(self, rules: list[RiskRule]) -> None:
        """Hold ``rules`` from now on (the per-module index is rebuilt once, not per call)."""
        self.rules = tuple(rules)
        self._by_module = {}
        self.loaded_at = datetime.now().astimezone()

    @property
    def source(self) -> str:
        """Where the rules in force come from: ``database``, or the shipped defaults and why."""
        if self.loaded_at is not None:
            return "database"
        return "default (database unreadable)" if self.load_error != "not read yet" else "default (not read yet)"

    def _candidates(self, module: str) -> tuple[RiskRule, ...]:
        found = self._by_module.get(module)
        if found is None:
            # The shipped locked rules are a floor: a table that lost them still cannot lower them.
            floor: tuple[RiskRule, ...] = ()
            if self.loaded_at is not None:  # only those the table does not hold as they are
                held = {(r.module, r.method, r.pattern, r.risk) for r in self.rules}
                floor = tuple(r for r in LOCKED_DEFAULT_RULES if (r.module, r.method, r.pattern, r.risk) not in held)
            found = tuple(sorted((r for r in self.rules + floor if r.module in (ANY, module)),
                                 key=lambda r: -RANK[r.risk]))
            if len(self._by_module) < 1024:  # module names come from the registry, but stay bounded
                self._by_module[module] = found
        return found

    def classify(self, module: str, method: str, path: str) -> Verdict:
        """How risky ``method`` on ``path`` (decoded, relative to the module's base) of ``module`` is."""
        return classify(self._candidates(module), method, path)

    def for_module(self, module: str) -> list[RiskRule]:
        """The rules that apply to ``module`` (its own and those for every module), in table order."""
        return [r for r in self.rules if r.module in (ANY, module)]

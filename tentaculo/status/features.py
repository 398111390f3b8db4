"""Feature flags: what the operator turned on or off, what each feature's dependencies allow, and
the ``@feature`` marker that makes a disabled feature's endpoints answer 503 ``feature_disabled``.

A flag (a row of ``feature_flags``) is ``on``, ``off`` or ``degraded``, with a reason and who set
it. ``FeatureFlags`` keeps every flag in memory: ``set()`` writes the row, applies it here at once
and publishes ``feature_toggle``; every other instance applies that event as it arrives (Redis
pub/sub through the event hub, milliseconds) and also re-reads the table every
``TENTACULO_FEATURES_RELOAD_SECONDS`` (default 0.5 s) in case it missed one, so every instance obeys
a change within a second even while Redis is away.

A flag is what the operator asked for; the *effective* status also asks the feature's
dependencies (``add_check``): ``events`` is ``error`` while Redis is unreachable, ``chat`` is
``error`` when no provider can answer, so "turned off" and "broken" are never confused. Only a
flag that is ``off`` closes the endpoints; a broken feature's endpoints answer with their own
errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeGuard, TypeVar

import asyncpg
import orjson
import structlog

from tentaculo.db import DB_FAILURES, queries
from tentaculo.health import Health, Status
from tentaculo.http.errors import failure_reason
from tentaculo.tasks import Periodic

log = structlog.get_logger("tentaculo.features")

FEATURES = ("chat", "events", "metrics", "file_explorer", "proxy")
FLAG_STATUSES: tuple[Status, ...] = ("on", "off", "degraded")
REASON_MAX = 500
_FEATURE_ATTR = "__tentaculo_feature__"

F = TypeVar("F", bound=Callable[..., Any])
# A dependency check: None when the feature's dependencies are fine, else how the feature is doing.
Check = Callable[[], "Health | None"]
ChangeCallback = Callable[["Flag", "Flag | None"], Any]


def is_flag_status(value: object) -> TypeGuard[Status]:
    """Whether ``value`` is a status an operator may give a flag."""
    return value in FLAG_STATUSES


def feature(name: str) -> Callable[[F], F]:
    """Mark a handler as part of feature ``name``: while the flag is ``off`` it answers 503."""
    if name not in FEATURES:
        raise ValueError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")

    def mark(handler: F) -> F:
        setattr(handler, _FEATURE_ATTR, name)
        return handler

    return mark


def feature_of(handler: Any) -> str | None:
    """The feature a matched handler belongs to, if any."""
    return getattr(handler, _FEATURE_ATTR, None)


@dataclass(frozen=True, slots=True)
class Flag:
    """One feature flag as stored."""

    name: str
    status: Status  # on | off | degraded: never error, which only a dependency check makes
    reason: str | None
    description: str
    updated_at: datetime | None
    updated_by: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Flag:
        return cls(row["name"], row["status"], row["reason"], row["description"] or "", row["updated_at"],
                   row["updated_by"])


class UnknownFeature(KeyError):
    """No feature flag has that name."""


class FeatureFlags:
    """Every feature flag in memory, kept in step across instances; see the module docstring."""

    def __init__(self, pool: asyncpg.Pool, *, reload_seconds: float) -> None:
        self._pool = pool
        self.reload_seconds = reload_seconds
        # Until the table is read, every known feature is on: the seed's state, and the safe side
        # for availability. ``synced_at`` stays None so status can tell.
        self._flags: dict[str, Flag] = {name: Flag(name, "on", None, "", None, None) for name in FEATURES}
        self._off: frozenset[str] = frozenset()
        self._checks: dict[str, list[Check]] = {}
        self.on_change: list[ChangeCallback] = []
        self.publish: Callable[[str, Mapping[str, Any]], Any] | None = None
        self.synced_at: datetime | None = None
        self.sync_error: str | None = None
        self._rereading = Periodic("feature-flags", self._reread, reload_seconds)

    # ----------------------------------------------------------------- lifecycle

    async def start(self, wait: float = 5.0) -> None:
        """Read the flags (waiting up to ``wait`` s for PostgreSQL), then re-read them periodically."""
        await self._reread(wait)
        self._rereading.start()

    async def close(self) -> None:
        await self._rereading.stop()

    async def _reread(self, wait: float | None = None) -> None:
        """Reload within ``wait`` s (by default the period, at least 2 s); a failure is kept for status."""
        try:
            async with asyncio.timeout(wait if wait is not None else max(self.reload_seconds, 2.0)):
                await self.reload()
        except DB_FAILURES as exc:
            self._sync_failed(exc)

    def _sync_failed(self, exc: BaseException) -> None:
        reason = failure_reason(exc)
        if self.sync_error is None:
            log.warning("feature_flags_reload_failed", error=reason)
        self.sync_error = reason

    async def reload(self) -> None:
        """Read every flag from PostgreSQL (a row older than a change already applied is skipped)."""
        rows = await queries.list_feature_flags(self._pool)
        for row in rows:
            self._apply(Flag.from_row(row))
        if self.sync_error is not None:
            log.info("feature_flags_reload_recovered")
        self.sync_error = None
        self.synced_at = datetime.now(UTC)

    # ----------------------------------------------------------------- changes

    def _apply(self, flag: Flag, *, force: bool = False) -> bool:
        """Take ``flag`` unless what we hold is newer (events may arrive after a reload); True if it changed."""
        current = self._flags.get(flag.name)
        if current is not None and not force and current.updated_at is not None and flag.updated_at is not None \
                and flag.updated_at < current.updated_at:
            return False
        if current == flag:
            return False
        self._flags[flag.name] = flag
        self._off = frozenset(name for name, f in self._flags.items() if f.status == "off")
        if current is None or (current.status, current.reason) != (flag.status, flag.reason):
            if current is not None and current.updated_at is not None:
                log.info("feature_flag_applied", feature=flag.name, status=flag.status, updated_by=flag.updated_by)
            for callback in list(self.on_change):
                try:
                    callback(flag, current)
                except Exception:  # isolation boundary
                    log.exception("feature_change_callback_failed", feature=flag.name)
        return True

    async def set(self, name: str, status: Status, reason: str | None, updated_by: str | None) -> tuple[Flag, Status]:
        """Persist a flag, obey it here at once and tell every instance; (flag, previous status).

        Raises UnknownFeature for a name with no row.
        """
        row = await queries.update_feature_flag(self._pool, name, status, reason, updated_by)
        if row is None:
            raise UnknownFeature(name)
        flag = Flag.from_row(row)
        previous = row["previous_status"]
        self._apply(flag, force=True)
        log.info("feature_flag_set", feature=name, status=status, previous_status=previous, updated_by=updated_by)
        if self.publish is not None:
            self.publish(name, self.toggle_event(flag, previous))
        return flag, previous

    def toggle_event(self, flag: Flag, previous: Status | None) -> dict[str, Any]:
        """The ``feature_toggle`` event's data for a change of ``flag``."""
        effective = self.effective(flag.name)
        return {
            "feature": flag.name,
            "status": flag.status,
            "reason": flag.reason,
            "previous_status": previous,
            "updated_by": flag.updated_by,
            "updated_at": flag.updated_at,
            "effective_status": effective.status,
            "effective_reason": effective.reason,
        }

    def on_event(self, event: Any) -> None:
        """Event hub listener: apply ``feature_toggle`` events published by any instance."""
        if event.type != "feature_toggle":
            return
        try:
            data = orjson.loads(event.envelope)["data"]
            name, status = data["feature"], data["status"]
            updated_at = datetime.fromisoformat(data["updated_at"]) if data.get("updated_at") else None
        except (ValueError, KeyError, TypeError):
            log.warning("feature_toggle_undecodable", event_id=getattr(event, "id", None))
            return
        current = self._flags.get(name)
        if current is None or status not in FLAG_STATUSES:
            return
        self._apply(replace(current, status=status, reason=data.get("reason"), updated_at=updated_at,
                            updated_by=data.get("updated_by")))

    # ----------------------------------------------------------------- reading

    def add_check(self, name: str, check: Check) -> None:
        """Add a dependency check to feature ``name`` (e.g. ``events`` needs Redis)."""
        self._checks.setdefault(name, []).append(check)

    def __contains__(self, name: object) -> bool:
        return name in self._flags

    def names(self) -> list[str]:
        known = [n for n in FEATURES if n in self._flags]
        return known + sorted(n for n in self._flags if n not in FEATURES)

    def flag(self, name: str) -> Flag:
        """The stored flag; UnknownFeature if none."""
        try:
            return self._flags[name]
        except KeyError:
            raise UnknownFeature(name) from None

    def is_off(self, name: str) -> bool:
        """Whether the operator turned feature ``name`` off (its endpoints answer 503)."""
        return name in self._off

    def effective(self, name: str) -> Health:
        """The feature as operators see it: the flag, unless a dependency is broken."""
        flag = self.flag(name)
        if flag.status == "off":
            return Health("off", flag.reason or f"turned off{f' by {flag.updated_by}' if flag.updated_by else ''}")
        for check in self._checks.get(name, ()):
            verdict = check()
            if verdict is not None:
                return verdict
        if flag.status == "degraded":
            return Health("degraded", flag.reason or "marked degraded by an operator")
        return Health.ON

    def snapshot(self, name: str) -> dict[str, Any]:
        flag = self.flag(name)
        effective = self.effective(name)
        return {
            "name": name,
            "status": effective.status,
            "reason": effective.reason,
            "flag": flag.status,
            "flag_reason": flag.reason,
            "description": flag.description,
            "updated_at": flag.updated_at,
            "updated_by": flag.updated_by,
        }

    def statuses(self) -> dict[str, dict[str, Any]]:
        """{name: {"status", "reason"}} for every feature (the shape ``/operator/api/status`` shows)."""
        out = {}
        for name in self.names():
            effective = self.effective(name)
            out[name] = {"status": effective.status, "reason": effective.reason, "flag": self._flags[name].status}
        return out

    def all(self) -> list[dict[str, Any]]:
        return [self.snapshot(n) for n in self.names()]

"""PolicyNotices: risk rules changed outside the gateway (``tentaculo policy``) reach every instance.

The CLI writes the table, then sends a PostgreSQL notification (``queries.RISK_RULES_CHANNEL``)
carrying a JSON notice with an id. Every instance listening re-reads its rules at once; the one
that claims the notice's id in Redis first (``SET NX``) publishes the ``policy_change`` event, so
each open console sees it once however many instances heard it. Without Redis the rules are still
re-read; only the event is missed. Without the notification (PostgreSQL away, a CLI of an older
version) the periodic re-read (``TENTACULO_POLICY_RELOAD_SECONDS``) still catches the change.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tentaculo.auth.risk import RiskRules
from tentaculo.db import queries
from tentaculo.db.listener import ChannelListener
from tentaculo.events.hub import EventHub
from tentaculo.settings import Settings
from tentaculo.tasks import Periodic

log = structlog.get_logger("tentaculo.policies")

LISTEN_CHECK_SECONDS = 5.0
CLAIM_SECONDS = 60


class PolicyNotices:
    """Listens for rule changes made outside the gateway; see the module docstring."""

    def __init__(self, settings: Settings, rules: RiskRules, redis: Redis, hub: EventHub) -> None:
        self._rules = rules
        self._redis = redis
        self._hub = hub
        self._prefix = f"{settings.redis_prefix}policy_notice:"
        self._listener = ChannelListener(settings.database_url, queries.RISK_RULES_CHANNEL, on_payload=self._heard)
        self._watch = Periodic("policy-notices", self._listener.ensure, LISTEN_CHECK_SECONDS, at_once=True)
        self.pending: set[asyncio.Task[None]] = set()  # notices being claimed and published

    @property
    def listening(self) -> bool:
        """Whether this instance hears notices now (else only the periodic re-read applies them)."""
        return self._listener.listening

    def start(self) -> None:
        self._watch.start()

    async def close(self) -> None:
        await self._watch.stop()
        await self._listener.close()
        for task in list(self.pending):
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)

    def _heard(self, payload: str) -> None:
        self._rules.reload_soon()
        try:
            notice = orjson.loads(payload)
            notice_id = str(notice["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("policy_notice_unreadable")
            return
        task = asyncio.create_task(self._announce(notice_id, notice), name="policy-notice")
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _announce(self, notice_id: str, notice: dict[str, Any]) -> None:
        try:
            first = await self._redis.set(self._prefix + notice_id, 1, nx=True, ex=CLAIM_SECONDS)
        except RedisError:
            log.warning("policy_notice_unannounced", reason="Redis is unreachable")
            return
        if first:
            self._hub.publish(
                "policy_change",
                {"what": notice.get("what"), "change": notice.get("change"), "rule": notice.get("rule"),
                 "by": notice.get("by")},
                severity="warning",
            )

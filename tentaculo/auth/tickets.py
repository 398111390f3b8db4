"""Event tickets: short-lived, signed credentials that only open event streams.

A browser's ``EventSource`` cannot send headers, so it connects with ``?ticket=``. A ticket is
``<payload>.<signature>`` (both base64url): the payload names the token it was issued to (name
and row id), that token's scopes, its purpose (``events``) and when it expires; the signature is HMAC-SHA256 with
a key every instance shares (``TENTACULO_EVENT_TICKET_SECRET``, else one generated once and kept
in PostgreSQL), so a ticket issued by one instance opens a stream on any other. Revoking the
token voids its tickets too (within the token cache's seconds on other instances).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable

import asyncpg
import orjson

from tentaculo.auth.signing import SigningKey, b64, unb64
from tentaculo.auth.tokens import Principal, TokenStore, TokenStoreUnavailable
from tentaculo.http.errors import Problem, database_unreachable

PURPOSE = "events"
SECRET_NAME = "event_ticket_key"
MAX_TICKET_CHARS = 2048
_KEY_LABEL = b"tentaculo event ticket v1"
_B64URL = re.compile(r"[A-Za-z0-9_-]+")



def rejected(detail: str, reason: str) -> Problem:
    """The 401 a client can act on: ``reason`` says whether to fetch a new ticket."""
    return Problem(
        "invalid_token",
        detail,
        ticket_error=reason,
        headers={"WWW-Authenticate": f'Bearer realm="tentaculo", error="invalid_token", error_description="{reason}"'},
    )


class EventTickets:
    """Issues and checks event tickets; the signing key is loaded once, lazily."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        secret: str | None,
        ttl_seconds: int,
        tokens: TokenStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = tokens  # checks that a ticket's token is still active; None: no check
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._key = SigningKey(pool, SECRET_NAME, _KEY_LABEL, "the ticket signing key", secret)

    async def key(self) -> bytes:
        """The HMAC key: derived from the configured secret, else from the one kept in PostgreSQL."""
        return await self._key.get()

    async def issue(self, principal: Principal) -> str:
        """A ticket for ``principal`` that expires in ``ttl_seconds``."""
        payload = orjson.dumps(
            {
                "p": PURPOSE,
                "n": principal.name,
                "t": principal.token_id,
                "s": sorted(principal.scopes),
                "exp": int(self._clock()) + self.ttl_seconds,
                "j": secrets.token_urlsafe(9),
            }
        )
        body = b64(payload)
        signature = hmac.new(await self.key(), body.encode(), hashlib.sha256).digest()
        return f"{body}.{b64(signature)}"

    async def verify(self, ticket: str) -> Principal:
        """The principal a ticket stands for; raise a 401 problem when it is malformed, forged or expired."""
        body, _, signature = ticket.partition(".")
        if len(ticket) > MAX_TICKET_CHARS or not _B64URL.fullmatch(body) or not _B64URL.fullmatch(signature):
            raise rejected(
                "the event ticket is malformed; request one with POST /operator/api/events/ticket", "malformed"
            )
        try:
            given = unb64(signature)
        except (binascii.Error, ValueError):
            raise rejected("the event ticket is malformed", "malformed") from None
        expected = hmac.new(await self.key(), body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            raise rejected("the event ticket's signature is not valid", "bad_signature")
        try:
            claims = orjson.loads(unb64(body))
            purpose, name, scopes, expires = claims["p"], claims["n"], claims["s"], claims["exp"]
            token_id = claims["t"]
        except (binascii.Error, ValueError, TypeError, KeyError):
            raise rejected("the event ticket is malformed", "malformed") from None
        if purpose != PURPOSE or not isinstance(name, str) or not isinstance(scopes, list):
            raise rejected("this ticket does not open event streams", "wrong_purpose")
        if not isinstance(expires, int) or self._clock() >= expires:
            raise rejected(
                "the event ticket has expired; request a new one with POST /operator/api/events/ticket", "expired"
            )
        if token_id is not None and not isinstance(token_id, int):
            raise rejected("the event ticket is malformed", "malformed")
        if token_id is not None and self._tokens is not None:
            try:
                state = await self._tokens.state(token_id)
            except TokenStoreUnavailable:
                raise database_unreachable("the token database is unreachable; try again shortly") from None
            if state == "expired":
                raise rejected("the token this event ticket was issued to has expired", "token_expired")
            if state != "active":
                raise rejected("the token this event ticket was issued to has been revoked", "revoked")
        return Principal(name, frozenset(s for s in scopes if isinstance(s, str)), token_id)

"""Confirmation of high-risk calls: a second, identical call that carries a one-time token.

A high-risk call (``tentaculo/auth/risk.py``) is not performed at first: it answers 428
``confirmation_required`` with a confirmation token. Repeating the identical call with
``X-VX11-Confirm: <token>`` (and, so both steps share one audit trail, the same
``X-Correlation-ID``) performs it once. The token is::

    base64url(id[16] | expires[8]) "." base64url(HMAC-SHA256(key, id | expires | caller | method | target | body hash))

so it is bound to the caller's token (its row id and name), the method, the path with its query
and the SHA-256 of the body, and it expires after ``ttl`` seconds (60). Nothing about the binding
is stored: a token replayed with another body, path, method or caller fails its signature. The
key every instance shares is derived from a secret kept in PostgreSQL (``gateway_secrets``), as
event tickets' is. Used ids are recorded in Redis with ``SET NX`` and a time to live equal to the
token's remaining life: one round trip, atomic across every instance, and the record vanishes when
the token could no longer be used anyway, so nothing needs cleaning. While Redis is away a
confirmation cannot be checked and the call is refused (503), never performed twice.

Tokens are compared in constant time and never logged; only the gateway's answer holds them.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import secrets
import struct
import time
from collections.abc import Callable

import asyncpg
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tentaculo.auth.signing import SigningKey, b64, unb64
from tentaculo.auth.tokens import Principal
from tentaculo.http.errors import Problem, unavailable

log = structlog.get_logger("tentaculo.confirm")

HEADER = "X-VX11-Confirm"
TTL_SECONDS = 60
SECRET_NAME = "confirmation_key"
_KEY_LABEL = b"tentaculo confirmation v1"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}\.[A-Za-z0-9_-]{43}")
_ID_BYTES = 16



def caller_of(principal: Principal) -> str:
    """What a confirmation is bound to: the token's row and name (the bootstrap token has no row)."""
    return f"{principal.token_id if principal.token_id is not None else 'bootstrap'}:{principal.name}"


def invalid(detail: str) -> Problem:
    return Problem("confirmation_invalid", detail, confirm_header=HEADER)


class Confirmations:
    """Issues and redeems confirmation tokens; the signing key is loaded once, lazily."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        *,
        prefix: str,
        ttl_seconds: int = TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}confirm:"
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._key = SigningKey(pool, SECRET_NAME, _KEY_LABEL, "the confirmation key")

    def _mac(self, key: bytes, head: bytes, caller: str, method: str, target: str, body_hash: str) -> bytes:
        bound = "\0".join((caller, method, target, body_hash)).encode("utf-8", "surrogateescape")
        return hmac.new(key, head + b"\0" + bound, hashlib.sha256).digest()

    async def issue(self, principal: Principal, method: str, target: str, body_hash: str) -> str:
        """A token that confirms exactly this call, once, within ``ttl_seconds``."""
        head = secrets.token_bytes(_ID_BYTES) + struct.pack(">Q", int(self._clock()) + self.ttl_seconds)
        mac = self._mac(await self._key.get(), head, caller_of(principal), method, target, body_hash)
        return f"{b64(head)}.{b64(mac)}"

    async def redeem(self, token: str, principal: Principal, method: str, target: str, body_hash: str) -> None:
        """Accept ``token`` for this call and mark it used; raise 403 ``confirmation_invalid`` otherwise."""
        if not _TOKEN.fullmatch(token):
            raise invalid("the confirmation token is malformed; repeat the call without it to get a new one")
        head_text, _, mac_text = token.partition(".")
        try:
            head, given = unb64(head_text), unb64(mac_text)
        except (binascii.Error, ValueError):
            raise invalid("the confirmation token is malformed") from None
        if len(head) != _ID_BYTES + 8:
            raise invalid("the confirmation token is malformed")
        expected = self._mac(await self._key.get(), head, caller_of(principal), method, target, body_hash)
        if not hmac.compare_digest(given, expected):
            raise invalid("the confirmation token was not issued for this call: the caller, method, path and body "
                          "must be those of the call that asked for it")
        (expires,) = struct.unpack(">Q", head[_ID_BYTES:])
        left = expires - self._clock()
        if left <= 0:
            raise invalid("the confirmation token has expired; repeat the call without it to get a new one")
        try:
            fresh = await self._redis.set(self._prefix + head[:_ID_BYTES].hex(), b"1", nx=True,
                                          ex=max(1, int(left) + 1))
        except (RedisError, OSError):
            raise unavailable("confirmations cannot be checked while Redis is unreachable; try again shortly") from None
        if not fresh:
            raise invalid("the confirmation token was already used; repeat the call without it to get a new one")

"""HMAC keys for what the gateway signs (event tickets, confirmation tokens), and their encoding.

A key is derived from a configured secret when there is one, else from a random secret kept in
PostgreSQL (``gateway_secrets``), made by whichever instance asks first and then read by all, so a
value signed by one instance is accepted by every other.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets

import asyncpg

from tentaculo.db import DB_FAILURES, queries
from tentaculo.http.errors import database_unreachable


def b64(data: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    """The bytes of :func:`b64` text; binascii.Error when it is not base64."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SigningKey:
    """One HMAC key, loaded once and lazily: from ``secret``, else from the shared secret ``name``."""

    def __init__(self, pool: asyncpg.Pool | None, name: str, label: bytes, what: str,
                 secret: str | None = None) -> None:
        self._pool = pool
        self._name = name
        self._label = label
        self._what = what  # "the ticket signing key", for the 503 when PostgreSQL is away
        self._secret = secret
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> bytes:
        """The key; 503 ``upstream_unavailable`` while it must be read from an unreachable PostgreSQL."""
        if self._key is not None:
            return self._key
        async with self._lock:
            if self._key is None:
                if self._secret is not None:
                    material = self._secret.encode()
                else:
                    try:
                        material = await queries.shared_secret(self._pool, self._name, secrets.token_bytes(32))
                    except DB_FAILURES:
                        raise database_unreachable(
                            f"{self._what} is kept in PostgreSQL, which is unreachable; try again shortly"
                        ) from None
                self._key = hmac.new(material, self._label, hashlib.sha256).digest()
        return self._key

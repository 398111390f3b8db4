"""Scoped tokens: hashing, the token store with its short cache, and route scope declarations."""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from tentaculo.auth.digest import sha256
from tentaculo.db import DB_FAILURES, queries
from tentaculo.http.errors import failure_reason
from tentaculo.tasks import within

SCOPES = ("read", "chat", "operate", "admin")
# Longest lifetime and largest budget a token may be given (ten years; a million a minute).
MAX_EXPIRES_IN = 10 * 365 * 86_400
MAX_REQUESTS_PER_MINUTE = 1_000_000
PUBLIC = "public"
TOKEN_MIN, TOKEN_MAX = 16, 512
TOKEN_SHAPE = re.compile(rf"^[A-Za-z0-9._~+/=-]{{{TOKEN_MIN},{TOKEN_MAX}}}$")
# Query parameters that look like credentials; tokens are refused there (contract).
QUERY_TOKEN_NAMES = frozenset({"token", "access_token", "api_key", "apikey", "x-vx11-token", "auth"})
_SCOPE_ATTR = "__tentaculo_scope__"
# The one credential allowed in a query string: an event ticket, only on routes that accept it.
TICKET_PARAM = "ticket"
_TICKET_ATTR = "__tentaculo_ticket__"

F = TypeVar("F", bound=Callable[..., Any])
ScopeRule = str | Callable[[Any], str]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's name, what it may do, its row (None: the bootstrap token),
    when it expires (epoch seconds) and its budget of requests per minute (None: neither)."""

    name: str
    scopes: frozenset[str]
    token_id: int | None = None
    expires: float | None = None
    requests_per_minute: int | None = None


def hash_token(token: str) -> bytes:
    """SHA-256 of a token: what the database keeps.

    A header's bytes that are not UTF-8 arrive as lone surrogates; they hash like any other bytes
    (and so match no token) instead of failing the request.
    """
    return sha256(token.encode("utf-8", "surrogateescape")).digest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return "vx11_" + secrets.token_urlsafe(32)


def ordered_scopes(scopes: Iterable[str]) -> list[str]:
    """``scopes`` in the one order every answer and listing uses: read, chat, operate, admin."""
    held = set(scopes)
    return [s for s in SCOPES if s in held] + sorted(held - set(SCOPES))


def parse_scopes(text: str) -> frozenset[str]:
    """``read,chat`` -> frozenset; raise ValueError on an unknown scope."""
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = scopes - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be a comma list of {', '.join(SCOPES)}")
    return scopes


def requires(scope: ScopeRule, *, ticket: bool = False) -> Callable[[F], F]:
    """Declare the scope a handler needs: a scope name, ``PUBLIC``, or a function of the request.

    ``ticket=True`` lets the handler also be reached with ``?ticket=`` (an event ticket); only
    event streams say so.
    """

    def mark(handler: F) -> F:
        setattr(handler, _SCOPE_ATTR, scope)
        setattr(handler, _TICKET_ATTR, ticket)
        return handler

    return mark


def accepts_ticket(handler: Any) -> bool:
    """Whether the handler may be reached with an event ticket instead of a token header."""
    return getattr(handler, _TICKET_ATTR, False) is True


def required_scope(handler: Any, request: Any) -> str:
    """The scope a matched handler needs; undeclared handlers need ``admin`` (deny by default)."""
    rule = getattr(handler, _SCOPE_ATTR, "admin")
    return rule(request) if callable(rule) else rule


class TokenStoreUnavailable(Exception):
    """The token database could not be asked and nothing cached answers."""


class TokenExpired(Exception):
    """The token is known but past its ``expires_at``."""

    def __init__(self, expires: float) -> None:
        super().__init__("the token has expired")
        self.expires = expires


@dataclass(slots=True)
class _Cached:
    expires: float  # fresh until then: used without asking PostgreSQL
    seen: float  # when PostgreSQL last vouched for it: the grace during an outage counts from here
    principal: Principal | None


class TokenStore:
    """Resolves presented tokens to principals: the bootstrap admin token, then PostgreSQL.

    Every lookup has a deadline (``deadline``, acquiring a connection included). When PostgreSQL
    cannot answer in time, a token PostgreSQL vouched for within the last ``grace_seconds`` keeps
    working from memory; the price is that a revocation made meanwhile on another instance (or
    with the CLI) is not seen until PostgreSQL answers again. Any other token is refused with
    TokenStoreUnavailable (503 with Retry-After) within the deadline.
    """

    MAX_CACHE = 10_000

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        admin_token: str | None,
        cache_seconds: float,
        grace_seconds: float = 300.0,
        deadline: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._grace = grace_seconds
        self._deadline = deadline
        # After a lookup missed its deadline, calls within the grace are answered from memory at
        # once until this time, instead of each waiting out the deadline again.
        self._unanswered_until = 0.0
        self._wall = wall
        # Token rows that authenticated since the last flush: their last_used_at is written in one
        # batch now and then, never on the request path.
        self.used: set[int] = set()
        self._admin_hash = hash_token(admin_token) if admin_token else None
        self._admin = Principal("admin", frozenset(SCOPES))  # immutable: one for every request
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[bytes, _Cached] = {}
        self._states: dict[int, tuple[float, str]] = {}

    def invalidate(self) -> None:
        """Forget cached answers (after a revocation on this instance)."""
        self._cache.clear()
        self._states.clear()

    async def is_active(self, token_id: int) -> bool:
        """Whether the token row ``token_id`` is still unrevoked and unexpired (cached like tokens are).

        Raises TokenStoreUnavailable when the database cannot say and nothing cached answers.
        """
        return await self.state(token_id) == "active"

    async def state(self, token_id: int) -> str:
        """``active``, ``revoked``, ``expired`` or ``unknown`` for the token row ``token_id``, cached
        like tokens are; TokenStoreUnavailable when the database cannot say and nothing cached answers."""
        now = self._clock()
        cached = self._states.get(token_id)
        if cached is not None and now < cached[0]:
            return cached[1]
        try:
            state = await within(queries.token_state(self._pool, token_id), self._deadline)
        except DB_FAILURES as exc:
            if cached is not None:
                return cached[1]
            raise TokenStoreUnavailable(str(exc)) from exc
        if self._cache_seconds > 0:
            if len(self._states) >= self.MAX_CACHE:
                self._states.clear()
            self._states[token_id] = (now + self._cache_seconds, state)
        return state

    async def flush_usage(self) -> int:
        """Write ``last_used_at`` of the tokens used since the last flush; returns how many.

        While PostgreSQL is away they are kept for the next flush (a set: bounded by the tokens).
        """
        if not self.used:
            return 0
        used, self.used = self.used, set()
        try:
            await queries.touch_tokens(self._pool, sorted(used))
        except DB_FAILURES:
            self.used |= used
            raise
        return len(used)

    async def authenticate(self, token: str) -> Principal | None:
        """The principal for ``token``, or None when it is malformed, unknown or revoked.

        Raises TokenExpired for a known token past its expiry (a cached answer included).
        """
        if not TOKEN_MIN <= len(token) <= TOKEN_MAX:
            return None
        digest = hash_token(token)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return self._admin
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now < cached.expires:
            return self._usable(cached.principal)
        # Only well-formed tokens are looked up and cached, so a cache hit above was one too.
        if not TOKEN_SHAPE.match(token):
            return None
        # Database away or silent: keep honouring what it vouched for a moment ago (the grace)
        # rather than lock everyone out; an unknown or long-unseen token cannot be vouched for.
        graced = cached is not None and cached.principal is not None and now - cached.seen <= self._grace
        if graced and now < self._unanswered_until:
            return self._usable(cached.principal if cached is not None else None)
        try:
            row = await within(queries.find_active_token(self._pool, digest), self._deadline)
        except DB_FAILURES as exc:
            self._unanswered_until = self._clock() + self._deadline
            if graced and cached is not None:
                return self._usable(cached.principal)
            raise TokenStoreUnavailable(failure_reason(exc)) from exc
        principal = None
        if row is not None:
            expires = row["expires_at"].timestamp() if row["expires_at"] is not None else None
            principal = Principal(row["name"], frozenset(row["scopes"]), row["id"], expires, row["requests_per_minute"])
        # Kept even with no cache period: a valid token is what the outage grace vouches for.
        if self._cache_seconds > 0 or (principal is not None and self._grace > 0):
            if len(self._cache) >= self.MAX_CACHE:
                self._cache = {k: v for k, v in self._cache.items() if now - v.seen <= max(self._grace, 0)}
                if len(self._cache) >= self.MAX_CACHE:
                    self._cache.clear()
            self._cache[digest] = _Cached(now + self._cache_seconds, now, principal)
        return self._usable(principal)

    def _usable(self, principal: Principal | None) -> Principal | None:
        """``principal`` unless it has expired (then TokenExpired); its use is noted for last_used_at."""
        if principal is not None and principal.token_id is not None:
            if principal.expires is not None and principal.expires <= self._wall():
                raise TokenExpired(principal.expires)
            self.used.add(principal.token_id)
        return principal

"""Every Redis client of the gateway is built here, from the settings: one node, TLS, or Sentinel.

``redis_client(settings, **overrides)`` gives a ``redis.asyncio.Redis`` for ``TENTACULO_REDIS_URL``
(``redis://``, ``rediss://`` or ``unix://``) with the TLS files and verification of the settings,
or, when ``TENTACULO_REDIS_SENTINELS`` is set, a client of the master the sentinels name
(``TENTACULO_REDIS_SENTINEL_MASTER``), which follows a failover by itself. ``overrides`` are the
caller's own connection options (timeouts, retry), applied whichever way the client connects.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from tentaculo.settings import Settings


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's ``ssl_*`` options for the settings' TLS files and verification."""
    options: dict[str, Any] = {}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file is not None:
        options["ssl_certfile"] = str(settings.redis_tls_cert_file)
    if settings.redis_tls_key_file is not None:
        options["ssl_keyfile"] = str(settings.redis_tls_key_file)
    if settings.redis_tls_verify:
        options.update(ssl_cert_reqs="required", ssl_check_hostname=True)
    else:
        options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    return options


def uses_tls(settings: Settings) -> bool:
    return (settings.redis_url or "").startswith("rediss://")


def redis_client(settings: Settings, **overrides: Any) -> Redis:
    """A client of the gateway's Redis as the settings describe it; it connects lazily."""
    if settings.redis_sentinels:
        return _sentinel_client(settings, overrides)
    options = dict(overrides)
    if uses_tls(settings):
        options.update(tls_options(settings))
    return Redis.from_url(settings.redis_url or "", **options)


class SentinelRedis(Redis):
    """A client of the master a set of sentinels names; closing it closes the sentinels' connections too."""

    sentinels_of: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels_of is not None:
            for client in self.sentinels_of.sentinels:
                await client.aclose()


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """``host:port`` items of ``TENTACULO_REDIS_SENTINELS`` as (host, port); settings validated them."""
    addresses = []
    for item in settings.redis_sentinels:
        host, _, port = item.rpartition(":")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def _sentinel_client(settings: Settings, overrides: dict[str, Any]) -> Redis:
    # The URL, when given, says the database, the credentials and (rediss://) TLS; its host is not used.
    options: dict[str, Any] = dict(overrides)
    if settings.redis_url:
        parts = urlsplit(settings.redis_url)
        if parts.username:
            options["username"] = unquote(parts.username)
        if parts.password:
            options["password"] = unquote(parts.password)
        db = parts.path.strip("/")
        if db:
            options["db"] = int(db)
    sentinel_options = {k: v for k, v in overrides.items() if k.startswith("socket_") or k == "retry"}
    if uses_tls(settings):
        tls = tls_options(settings)
        options.update(ssl=True, **tls)
        sentinel_options.update(ssl=True, **tls)
    sentinel = Sentinel(sentinel_addresses(settings), sentinel_kwargs=sentinel_options, **options)
    assert settings.redis_sentinel_master is not None
    client = sentinel.master_for(settings.redis_sentinel_master, redis_class=SentinelRedis)
    assert isinstance(client, SentinelRedis)
    client.sentinels_of = sentinel
    return client

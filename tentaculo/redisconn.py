"""Every Redis client of the gateway is built here, from the settings: one node, with or without TLS.

``redis_client(settings, **overrides)`` gives a ``redis.asyncio.Redis`` for ``TENTACULO_REDIS_URL``
(``redis://``, ``rediss://`` or ``unix://``) with the TLS files and verification of the settings.
``overrides`` are the caller's own connection options (timeouts, retry).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

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
    options = dict(overrides)
    if uses_tls(settings):
        options.update(tls_options(settings))
    return Redis.from_url(settings.redis_url or "", **options)

"""TrustedProxies: the peers whose forwarding headers (X-Forwarded-*, Forwarded) are believed.

The request core asks it who the client is (rate limits, audit, connection caps); the proxy asks
it which forwarding headers to pass on to a module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class TrustedProxies:
    """``TENTACULO_TRUSTED_PROXIES``: addresses whose X-Forwarded-* headers are believed."""

    def __init__(self, items: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(i, strict=False) for i in items)

    def __contains__(self, address: object) -> bool:
        if not self._networks or not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

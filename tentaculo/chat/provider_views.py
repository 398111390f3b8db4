"""``GET /operator/api/providers``: the registered provider plugins and their state."""

from __future__ import annotations

from aiohttp import web

from tentaculo import keys
from tentaculo.auth.tokens import requires
from tentaculo.chat.registry import INTERFACE_VERSION
from tentaculo.http.jsonio import json_response


@requires("read")
async def list_providers(request: web.Request) -> web.Response:
    """Every registered provider: version, models, status with reason, circuit state."""
    registry = request.app[keys.PROVIDERS]
    settings = request.app[keys.SETTINGS]
    return json_response({
        "interface_version": INTERFACE_VERSION,
        "chain": list(registry.chain),
        "allow_list": list(settings.providers) or None,
        "providers": registry.snapshot(),
    })

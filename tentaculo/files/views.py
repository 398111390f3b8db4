"""``GET /operator/api/fs/list``: the sandboxed file explorer (rules in ``tentaculo.sandbox``)."""

from __future__ import annotations

from aiohttp import web

from tentaculo import keys
from tentaculo.auth.tokens import requires
from tentaculo.http.jsonio import json_response
from tentaculo.status.features import feature


@feature("file_explorer")
@requires("read")
async def list_dir(request: web.Request) -> web.Response:
    """The entries of ``?path=<root>/<relative>`` (no path: the configured roots)."""
    listing = await request.app[keys.SANDBOX].list(request.query.get("path"))
    return json_response(listing.as_dict())

"""The gateway's own OpenAPI document."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml
from aiohttp import web

from tentaculo.auth.tokens import PUBLIC, requires
from tentaculo.http.jsonio import json_response


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The packaged spec, parsed once."""
    text = resources.files("tentaculo").joinpath("openapi.yaml").read_text()
    document: dict[str, Any] = yaml.safe_load(text)
    return document


@requires(PUBLIC)
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document describing every endpoint."""
    return json_response(openapi_document())

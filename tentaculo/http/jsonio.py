"""JSON in and out of handlers: strict body parsing with problem errors, fast rendering."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tentaculo.http.errors import Problem, ValidationFailed


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; invalid_json or validation_error otherwise."""
    body = await request.read()  # raises 413 past client_max_size
    if not body.strip():
        raise Problem("invalid_json", "the request body is empty; send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem("invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationFailed([{"field": "", "message": "the body must be a JSON object"}])
    return data


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Render ``data`` with orjson (datetimes as RFC 3339)."""
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_UTC_Z), status=status, content_type="application/json", headers=headers
    )

"""Calls the gateway makes wait for a confirmation (high risk): the two steps in one helper."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

CONFIRM_HEADER = "X-VX11-Confirm"


async def confirmed(client: TestClient, method: str, path: str, *, headers: dict[str, str],
                    **kwargs: Any) -> ClientResponse:
    """Make a high-risk call: the first answer must be 428 with a token; repeat it confirmed, same correlation id."""
    headers = {"X-Correlation-ID": f"confirm-{uuid.uuid4().hex[:12]}", **headers}
    first = await client.request(method, path, headers=headers, **kwargs)
    problem = await first.json()
    assert first.status == 428, problem
    assert problem["code"] == "confirmation_required"
    token = problem["confirmation"]["token"]
    return await client.request(method, path, headers={**headers, CONFIRM_HEADER: token}, **kwargs)

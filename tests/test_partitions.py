"""A silent PostgreSQL partition: connections stay open and nothing answers. Nothing may hang on it."""

from __future__ import annotations

import asyncio
import dataclasses

from tentaculo.app import create_app
from tentaculo.status.health_views import CHECK_TIMEOUT
from tests.faults import proxy_postgres
from tests.helpers import serve, wait_for

DEADLINE = 1.0
# What "within the deadline" allows on a loaded machine: the deadline, plus scheduling slack.
WITHIN = DEADLINE + 2.0
WHOAMI = "/operator/api/whoami"


async def test_a_silent_postgres_partition_is_answered_within_the_deadline(
    aiohttp_client, settings, admin_headers, make_token
) -> None:
    proxy, dsn = await proxy_postgres(settings.database_url)
    client = await serve(aiohttp_client, create_app(dataclasses.replace(
        settings, database_url=dsn, db_timeout=DEADLINE, token_grace_seconds=60)))
    loop = asyncio.get_running_loop()

    async def timed(method: str, path: str, token: str | None = None) -> tuple[int, float, dict[str, str]]:
        headers = {"X-VX11-Token": token} if token else admin_headers
        started = loop.time()
        resp = await client.request(method, path, headers=headers)
        await resp.read()
        return resp.status, loop.time() - started, dict(resp.headers)

    try:
        known, unknown = await make_token("read"), await make_token("read")
        assert (await timed("GET", WHOAMI, known))[0] == 200  # PostgreSQL vouched for it just now
        proxy.silence()

        # A token seen valid within the grace keeps working; only the first call waits the deadline.
        answers = [await timed("GET", WHOAMI, known) for _ in range(5)]
        assert [status for status, _, _ in answers] == [200] * 5
        assert max(elapsed for _, elapsed, _ in answers) < WITHIN
        assert sum(elapsed for _, elapsed, _ in answers[1:]) < WITHIN

        # A token never seen cannot be vouched for: 503 with Retry-After, within the deadline.
        status, elapsed, headers = await timed("GET", WHOAMI, unknown)
        assert (status, "Retry-After" in headers) == (503, True) and elapsed < WITHIN

        # Management calls need PostgreSQL itself: 503 within the deadline, not 200 when it heals.
        status, elapsed, headers = await timed("GET", "/operator/api/tokens")
        assert (status, "Retry-After" in headers) == (503, True) and elapsed < WITHIN

        # /ready says so within its own check's deadline (a cancelled asyncpg call may take as long
        # again to unwind over the silent link: it is not waited for).
        status, elapsed, _ = await timed("GET", "/ready")
        assert status == 503 and elapsed < CHECK_TIMEOUT + 1.0, elapsed

        # Nothing is written meanwhile, and /ready's audit check says so with the oldest row's age.
        async def audit_stalled() -> bool:
            check = (await (await client.get("/ready")).json())["checks"]["audit"]
            return check["status"] == "degraded" and (check["oldest_queued_s"] or 0) > 0

        await wait_for(audit_stalled, timeout=15, interval=0.25)

        await proxy.restore()

        async def answers_again() -> bool:
            return (await timed("GET", WHOAMI, unknown))[0] == 200

        await wait_for(answers_again, timeout=15, interval=0.1)
    finally:
        await client.close()
        await proxy.close()

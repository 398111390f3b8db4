"""The asyncpg pool and its connection setup."""

from __future__ import annotations

import json

import asyncpg


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, deadline: float = 2.0) -> asyncpg.Pool:
    """Open a pool whose connections decode JSON and time out rather than hang.

    ``deadline`` bounds connecting and every statement (asyncpg's ``timeout`` and
    ``command_timeout``): in a silent partition a call fails with TimeoutError, which the gateway
    answers 503, instead of waiting for the partition to heal.
    """
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        command_timeout=deadline,
        timeout=deadline,
        server_settings={"application_name": "tentaculo"},
    )

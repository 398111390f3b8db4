"""ChatActionLog: one ``copilot_actions_log`` row per chat, written in batches off the request path."""

from __future__ import annotations

import asyncpg

from tentaculo.db import queries
from tentaculo.db.rowwriter import RowWriter


class ChatActionLog(RowWriter):
    """The chat action log's row writer (columns of ``queries.CHAT_ACTION_COLUMNS``)."""

    def __init__(self, pool: asyncpg.Pool, *, capacity: int, batch_size: int, flush_seconds: float,
                 max_backoff: float = 5.0) -> None:
        super().__init__("chat_actions", pool, queries.insert_chat_actions, capacity=capacity,
                         batch_size=batch_size, flush_seconds=flush_seconds, max_backoff=max_backoff,
                         json_columns=[queries.CHAT_ACTION_COLUMNS.index(c) for c in queries.CHAT_ACTION_JSON_COLUMNS])

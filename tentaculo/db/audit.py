"""AuditWriter: one ``audit_logs`` row per request, written with COPY off the request path."""

from __future__ import annotations

import asyncpg

from tentaculo.db import queries
from tentaculo.db.rowwriter import RowWriter


class AuditWriter(RowWriter):
    """The audit log's row writer (columns of ``queries.AUDIT_COLUMNS``)."""

    def __init__(self, pool: asyncpg.Pool, *, capacity: int, batch_size: int, flush_seconds: float,
                 max_backoff: float = 5.0) -> None:
        super().__init__("audit", pool, queries.copy_audit_rows, capacity=capacity, batch_size=batch_size,
                         flush_seconds=flush_seconds, max_backoff=max_backoff)

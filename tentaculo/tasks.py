"""Stopping the gateway's background tasks."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

log = structlog.get_logger("tentaculo.tasks")


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait for it to end; say so if it had died of an error."""
    if task is None:
        return
    task.cancel()
    outcomes: tuple[Any, ...] = await asyncio.gather(task, return_exceptions=True)
    outcome = outcomes[0]
    if isinstance(outcome, Exception):
        log.error("background_task_failed", task=task.get_name(), error=repr(outcome))

"""Stopping the gateway's background tasks, and bounding a call without waiting for its cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

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


T = TypeVar("T")


async def within(call: Awaitable[T], seconds: float) -> T:
    """``call``'s result, or TimeoutError after ``seconds`` without waiting for its cleanup.

    ``asyncio.timeout`` waits for the cancelled call to unwind, and a client library cancelling a
    query over a silent link (asyncpg asks the server to cancel it) can take as long again: the
    deadline would be doubled. Here the call is cancelled and left to finish unwinding on its own.
    """
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise TimeoutError(f"no answer within {seconds:g} s")
    return task.result()


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not report it as never retrieved

"""The gateway's background tasks: one periodic loop, stopping a task, and bounding a call without
waiting for its cleanup."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
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


class Periodic:
    """A background task that runs ``step`` every ``seconds`` until stopped.

    Setting ``wake`` runs the next step at once; it is cleared just before each step, so a wake
    that comes during a step runs another. With ``at_once`` the first step runs when started, not
    a period later; with ``steady`` the period runs from each step's start, so a slow step does not
    stretch it. A step handles the failures it expects; anything else it raises is logged and the
    loop goes on (an isolation boundary: one bug must not end the task for good).
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        seconds: float,
        *,
        wake: asyncio.Event | None = None,
        at_once: bool = False,
        steady: bool = False,
    ) -> None:
        self.name = name
        self.step = step
        self.seconds = seconds
        self.wake = wake
        self.at_once = at_once
        self.steady = steady
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop (mid-step if need be) and wait for it to end."""
        await stop_task(self._task)
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.at_once:
            await self._pause(self.seconds)
        while True:
            began = loop.time()
            if self.wake is not None:
                self.wake.clear()
            try:
                await self.step()
            except Exception:  # isolation boundary, see the class docstring
                log.exception("background_step_failed", task=self.name)
            await self._pause(self.seconds - (loop.time() - began) if self.steady else self.seconds)

    async def _pause(self, seconds: float) -> None:
        if self.wake is None:
            await asyncio.sleep(max(0.0, seconds))
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self.wake.wait()


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

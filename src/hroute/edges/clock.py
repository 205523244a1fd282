"""The real clock, and waiting on the clock you were given rather than on anyio's."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from hroute.core.clock import Clock

T = TypeVar("T")


class RealClock:
    """Monotonic time for logic, wall time only for display and durable deadlines."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


async def wait_until(clock: Clock, event: anyio.Event, deadline: float | None) -> bool:
    """Wait for `event`, or until `clock` reaches `deadline` (None: no deadline).

    True if the event was set. Time is the injected clock's, so a fake clock drives it.
    """
    if event.is_set():
        return True
    if deadline is None:
        await event.wait()
        return True
    if type(clock) is RealClock:
        # anyio's own deadline is this clock's time: no timer task, and no cancel() from
        # inside a task (which formats that task's repr, a tenth of a millisecond, on every
        # wake of every loop that waits here).
        with anyio.move_on_after(max(0.0, deadline - clock.now())):
            await event.wait()
        return event.is_set()
    timed_out = False
    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            nonlocal timed_out
            await clock.sleep(max(0.0, deadline - clock.now()))
            timed_out = True
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        await event.wait()
        tg.cancel_scope.cancel()
    return not timed_out


async def call_within(clock: Clock, seconds: float, fn: Callable[[], Awaitable[T]]) -> T | None:
    """`await fn()`, or None once `seconds` of `clock`'s time have passed first."""
    result: list[T] = []
    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            await clock.sleep(max(0.0, seconds))
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        result.append(await fn())
        tg.cancel_scope.cancel()
    return result[0] if result else None

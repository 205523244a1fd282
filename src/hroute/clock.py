"""Time, passed in: the real clock here, a fake one in tests."""

from __future__ import annotations

import time

import anyio


class RealClock:
    """Monotonic time for logic, wall time only for display."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

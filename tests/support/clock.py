"""A manual clock for code that sleeps: time moves only when the test advances it.

`now()`/`wall()` read it; `sleep()` parks the caller until a test's `advance()` reaches its
deadline. `advance()` wakes the sleepers in the order of their deadlines, each at its own
time, and lets the woken run (a loop that sleeps again is woken again within the same
advance), so a test steps a whole daemon through minutes of cooldowns in no time at all.
"""

from __future__ import annotations

import itertools
import time

import anyio
import anyio.lowlevel

SETTLE_PASSES = 20  # event-loop turns given to woken tasks before time moves on
MAX_WAKES = 100_000  # a sleeper that never lets time move is a bug in the code under test


class ManualClock:
    """Monotonic and wall time that move only on `advance()`.

    Starts at the real monotonic time, so a snapshot the daemon writes looks fresh to a
    client that reads the real one, as long as the test has not moved this clock on."""

    def __init__(self, start: float | None = None, wall: float | None = None) -> None:
        self.t = time.monotonic() if start is None else start
        self._t0 = self.t
        self._wall0 = time.time() if wall is None else wall
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self._wall0 + (self.t - self._t0)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        entry = (self.t + seconds, next(self._seq), anyio.Event())
        self._sleepers.append(entry)
        try:
            await entry[2].wait()
        finally:
            if entry in self._sleepers:  # cancelled before its time
                self._sleepers.remove(entry)

    @property
    def sleepers(self) -> int:
        """How many tasks are parked on this clock."""
        return len(self._sleepers)

    async def advance(self, seconds: float) -> None:
        """Move time on by `seconds`, waking every sleeper whose deadline is passed, in order."""
        target = self.t + seconds
        for _ in range(MAX_WAKES):
            due = [s for s in self._sleepers if s[0] <= target]
            if not due:
                break
            self.t = max(self.t, min(due)[0])
            for entry in [s for s in self._sleepers if s[0] <= self.t]:
                self._sleepers.remove(entry)
                entry[2].set()
            await settle()
        else:
            raise AssertionError(f"sleepers kept time from reaching {target}")
        self.t = max(self.t, target)
        await settle()


async def settle() -> None:
    """Let tasks that are ready run (a few turns of the event loop; no time passes)."""
    for _ in range(SETTLE_PASSES):
        await anyio.lowlevel.checkpoint()

"""Time, passed in. Logic asks the clock it was given; nothing in hroute reads time itself.

`RealClock` (hroute.edges.clock) is the one that touches the world; tests use a fake one
whose `sleep` returns as soon as the test moves time on.
"""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (CLOCK_MONOTONIC: shared by every process on the machine)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch: for display and for deadlines that outlive a reboot."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...

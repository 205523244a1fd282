"""When to restart a supervised server, and when to give up: a pure policy over passed-in times.

The delays of one run of failures are 0, initial, initial x m, initial x m^2 ... capped at
`backoff_max_s`: the first restart is immediate (a crash after a long healthy run costs one
respawn, not a wait), a crash loop slows down. A process that stayed healthy for
`reset_after_s` before it failed starts a new run. Independently, more than `burst` starts
within `interval_s` is a crash loop that waiting will not cure: the process becomes fatal
until an operator restarts it. No clock, no I/O: every call takes `now` (monotonic seconds).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol


class RestartSettings(Protocol):
    """`restart:` of a `supervise:` block (`config.supervise.RestartSettings`)."""

    backoff_initial_s: float
    backoff_max_s: float
    multiplier: float
    reset_after_s: float


class StartLimitSettings(Protocol):
    """`start_limit:` of a `supervise:` block (`config.supervise.StartLimitSettings`)."""

    burst: int
    interval_s: float


@dataclass(frozen=True)
class Decision:
    """What to do after a failure: start again after `delay_s`, or stop trying (`fatal`)."""

    delay_s: float
    fatal: bool = False
    why: str = ""


class RestartPolicy:
    """Backoff and start limit of one supervised process (owned by its supervisor task)."""

    def __init__(self, restart: RestartSettings, start_limit: StartLimitSettings) -> None:
        self.restart, self.start_limit = restart, start_limit
        self.failures = 0  # failures in the current run; 0: the next restart is immediate
        self._starts: deque[float] = deque()

    def record_start(self, now: float) -> None:
        """A start attempt was made (spawned, or refused because the port was taken)."""
        self._starts.append(now)

    def starts_within_limit(self, now: float) -> int:
        """How many starts count toward the start limit at `now`."""
        horizon = now - self.start_limit.interval_s
        while self._starts and self._starts[0] <= horizon:
            self._starts.popleft()
        return len(self._starts)

    def after_failure(self, now: float, healthy_for_s: float = 0.0) -> Decision:
        """The process exited, hung or failed to start at `now`: when to start it again.

        `healthy_for_s` is how long it had been healthy without a break before the failure.
        """
        if healthy_for_s >= self.restart.reset_after_s:
            self.failures = 0
        delay = self.next_delay()
        self.failures += 1
        recent = self.starts_within_limit(now + delay)
        limit = self.start_limit
        if recent >= limit.burst:
            why = (
                f"{recent} starts within {limit.interval_s:g}s "
                f"(start_limit: burst {limit.burst}, interval_s {limit.interval_s:g})"
            )
            return Decision(0.0, fatal=True, why=why)
        return Decision(delay)

    def next_delay(self) -> float:
        """The delay the next failure of the current run will wait."""
        if self.failures == 0:
            return 0.0
        r = self.restart
        exponent = min(self.failures - 1, 64)  # past the cap anyway; keeps the float finite
        return min(r.backoff_initial_s * r.multiplier**exponent, r.backoff_max_s)

    def reset(self) -> None:
        """An operator asked for a restart: forget the failures and the start history."""
        self.failures = 0
        self._starts.clear()

"""Shared fixtures: a fake clock for the pure core."""

from __future__ import annotations

import pytest


class FakeClock:
    """Monotonic and wall time that move only when a test says so."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.t = start
        self._wall0, self._t0 = wall, start

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self._wall0 + (self.t - self._t0)

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()

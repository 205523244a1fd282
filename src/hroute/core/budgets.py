"""Paid backends: what a call cost, spend per budget day, and daily budgets. Pure.

A budget day is a window of wall time: from midnight to midnight in the configured zone
(`budgets.timezone`, else the system's). Spend belongs to the window it was made in and is
saved with the window's end, so a restart under another zone neither loses nor doubles it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from typing import Any, NamedTuple


class Day(NamedTuple):
    label: str  # 2026-11-28
    now: float  # wall seconds
    ends_at: float  # wall seconds of the next midnight in the zone


def budget_day(wall: float, zone: tzinfo | None) -> Day:
    """The budget day that wall time `wall` falls in (zone None: the system's)."""
    local = datetime.fromtimestamp(wall, zone) if zone else datetime.fromtimestamp(wall)
    # Wall-clock arithmetic: the offset is that of the next midnight (DST may change between).
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return Day(local.strftime("%Y-%m-%d"), wall, midnight.timestamp())


def cost_usd(price: Any, input_tokens: int, output_tokens: int) -> float:
    """What a call cost at `price` (USD per million input/output tokens)."""
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6


class Spend:
    """Money spent per backend in the current budget day: this host's, plus what the other
    hosts of a cluster spent (told by the cluster, never saved: they keep their own)."""

    def __init__(self) -> None:
        self._day = ""
        self._ends_at: float | None = float("-inf")
        self._by_backend: dict[str, float] = {}
        self._others: dict[str, float] = {}

    def _roll(self, day: Day) -> None:
        if self._ends_at is None:  # loaded from a file that did not say when its day ends
            if self._day == day.label:
                self._ends_at = day.ends_at
                return
        elif day.now < self._ends_at:
            return
        self._day, self._ends_at, self._by_backend = day.label, day.ends_at, {}
        self._others = {}

    def add(self, backend: str, usd: float, day: Day) -> float:
        self._roll(day)
        self._by_backend[backend] = self._by_backend.get(backend, 0.0) + usd
        return self._by_backend[backend] + self._others.get(backend, 0.0)

    def spent(self, backend: str, day: Day) -> float:
        self._roll(day)
        return self._by_backend.get(backend, 0.0) + self._others.get(backend, 0.0)

    def total(self, day: Day) -> float:
        self._roll(day)
        return sum(self._by_backend.values()) + sum(self._others.values())

    def own(self, day: Day) -> dict[str, float]:
        """What this host spent per backend in the budget day (what it tells the cluster)."""
        self._roll(day)
        return dict(self._by_backend)

    def set_others(self, label: str, by_backend: dict[str, float], day: Day) -> bool:
        """What the other hosts spent in the budget day `label`; ignored (False) for another day."""
        self._roll(day)
        if label != self._day:
            return False
        self._others = {b: usd for b, usd in by_backend.items() if usd > 0}
        return True

    def resets_in(self, day: Day) -> float:
        """Seconds until the current budget day ends."""
        self._roll(day)
        return max(0.0, (self._ends_at or day.ends_at) - day.now)

    def dump(self) -> tuple[str, dict[str, float], float | None]:
        ends = self._ends_at if self._ends_at not in (None, float("-inf")) else None
        return self._day, dict(self._by_backend), ends

    def load(self, day: str, by_backend: dict[str, float], ends_at: float | None = None) -> None:
        self._day, self._by_backend, self._ends_at = day, dict(by_backend), ends_at


def budget_block(name: str, budgets: Any, spend: Spend, day: Day) -> str | None:
    """`budget_exhausted: ...` when a paid backend is past its or the total daily budget."""
    limit = budgets.per_backend_daily_usd.get(name)
    if limit is not None and spend.spent(name, day) >= limit:
        return f"budget_exhausted: {name} spent ${spend.spent(name, day):.2f} of ${limit:.2f} today"
    if budgets.daily_usd is not None and spend.total(day) >= budgets.daily_usd:
        return f"budget_exhausted: ${spend.total(day):.2f} of ${budgets.daily_usd:.2f} spent today"
    return None

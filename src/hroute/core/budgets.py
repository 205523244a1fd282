"""Paid backends: what a call cost, spend per day, and daily budgets. Pure: the day is passed in."""

from __future__ import annotations

from typing import Any


def cost_usd(price: Any, input_tokens: int, output_tokens: int) -> float:
    """What a call cost at `price` (USD per million input/output tokens)."""
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6


class Spend:
    """Money spent per backend per day (the day is a label the caller passes in)."""

    def __init__(self) -> None:
        self._day = ""
        self._by_backend: dict[str, float] = {}

    def _roll(self, day: str) -> None:
        if day != self._day:
            self._day, self._by_backend = day, {}

    def add(self, backend: str, usd: float, day: str) -> float:
        self._roll(day)
        self._by_backend[backend] = self._by_backend.get(backend, 0.0) + usd
        return self._by_backend[backend]

    def spent(self, backend: str, day: str) -> float:
        self._roll(day)
        return self._by_backend.get(backend, 0.0)

    def total(self, day: str) -> float:
        self._roll(day)
        return sum(self._by_backend.values())

    def dump(self) -> tuple[str, dict[str, float]]:
        return self._day, dict(self._by_backend)

    def load(self, day: str, by_backend: dict[str, float]) -> None:
        self._day, self._by_backend = day, dict(by_backend)


def budget_block(name: str, budgets: Any, spend: Spend, day: str) -> str | None:
    """`budget_exhausted: ...` when a paid backend is past its or the total daily budget."""
    limit = budgets.per_backend_daily_usd.get(name)
    if limit is not None and spend.spent(name, day) >= limit:
        return f"budget_exhausted: {name} spent ${spend.spent(name, day):.2f} of ${limit:.2f} today"
    if budgets.daily_usd is not None and spend.total(day) >= budgets.daily_usd:
        return f"budget_exhausted: ${spend.total(day):.2f} of ${budgets.daily_usd:.2f} spent today"
    return None

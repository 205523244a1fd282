"""Routing policies: escalation per task, capability needs, paid backends and budgets.

Pure: times and days are passed in. The registry owns one `Tasks` and one `Spend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TASK_REASONS = (
    "repeated_tool_failure",
    "invalid_output",
    "no_progress",
    "task_timeout",
    "user_request",
)


@dataclass
class TaskState:
    reasons: list[str] = field(default_factory=list)
    last_at: float = 0.0
    announced: set[str] = field(default_factory=set)  # profiles whose escalation was logged

    def escalated(self, escalation: Any) -> tuple[bool, str]:
        """Whether the task has failed locally often enough to skip the local tier, and why."""
        counted = [r for r in self.reasons if r in escalation.trigger_on]
        if "user_request" in counted:
            return True, "escalated: user_request"
        if len(counted) >= escalation.max_local_attempts:
            return True, f"escalated: {len(counted)} local failures ({', '.join(counted[-3:])})"
        return False, ""


class Tasks:
    """Task-level failures reported by agents, forgotten `ttl_s` after the last one."""

    MAX_TASKS = 10_000  # a misbehaving client cannot grow this without bound

    def __init__(self) -> None:
        self._tasks: dict[str, TaskState] = {}

    def record(self, task: str, reason: str, now: float, ttl_s: float) -> TaskState:
        """Count one failure of `task`."""
        self.expire(now, ttl_s)
        state = self._tasks.pop(task, None) or TaskState()
        if len(self._tasks) >= self.MAX_TASKS:
            del self._tasks[next(iter(self._tasks))]  # the least recently failed
        state.reasons = (state.reasons + [reason])[-50:]
        state.last_at = now
        self._tasks[task] = state
        return state

    def get(self, task: str, now: float, ttl_s: float) -> TaskState | None:
        state = self._tasks.get(task)
        if state is not None and now - state.last_at > ttl_s:
            del self._tasks[task]
            return None
        return state

    def expire(self, now: float, ttl_s: float) -> None:
        for task in [t for t, s in self._tasks.items() if now - s.last_at > ttl_s]:
            del self._tasks[task]

    def __len__(self) -> int:
        return len(self._tasks)

    def dump(self) -> dict[str, TaskState]:
        return dict(self._tasks)

    def load(self, tasks: dict[str, TaskState]) -> None:
        self._tasks.update(tasks)


@dataclass(frozen=True)
class Needs:
    """What a request needs of a backend: `needs=vision,tools,context:20000`."""

    vision: bool = False
    tools: bool = False
    context: int = 0


NO_NEEDS = Needs()


def parse_needs(text: str | None) -> Needs:
    """Parse the `needs` query parameter; ValueError names what is wrong."""
    vision = tools = False
    context = 0
    for raw in (text or "").split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item == "vision":
            vision = True
        elif item == "tools":
            tools = True
        elif item.startswith("context:") and item[8:].isdigit():
            context = int(item[8:])
        else:
            raise ValueError(f"needs: unknown item {raw!r} (valid: vision, tools, context:TOKENS)")
    return Needs(vision, tools, context)


def capability_gap(backend: Any, needs: Needs) -> str | None:
    """Why `backend` cannot serve `needs`, or None when it can."""
    if needs.vision and not backend.vision:
        return "needs vision"
    if needs.tools and not backend.tools:
        return "needs tools"
    if (
        needs.context
        and backend.context_length is not None
        and backend.context_length < needs.context
    ):
        return f"needs context {needs.context} > {backend.context_length}"
    return None


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

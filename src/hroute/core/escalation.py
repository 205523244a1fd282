"""Escalation (seed 001): tasks that failed locally often enough skip the local tier.

Pure: times are passed in. The router owns one `Tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LOCAL_ONLY = "local_only"
ESCALATE = "escalate"


def task_rule(escalation: Any, task_type: str | None) -> str | None:
    """The profile's rule for a task type: local_only, escalate, another profile's name, or
    None (the type is not listed, or not known: the profile's escalation as it is)."""
    if not task_type:
        return None
    return escalation.task_types.get(task_type)


# The one list of task-level failure reasons (config, API, CLI and client use it).
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
    detail: str = ""  # what the agent said of the last failure
    announced: set[str] = field(default_factory=set)  # profiles whose escalation was logged
    task_type: str | None = None  # what the agent last said the task is (chat, coding, ...)

    def escalated(self, escalation: Any, now: float) -> tuple[bool, str]:
        """Whether the task has failed locally often enough to skip the local tier, and why.

        A profile forgets a task `escalation.task_ttl_s` after its last use: its last
        failure, or the last time it was routed while escalated (a task in use stays)."""
        if now - self.last_at > escalation.task_ttl_s:
            return False, ""
        counted = [r for r in self.reasons if r in escalation.trigger_on]
        if "user_request" in counted:
            return True, "escalated: user_request"
        if len(counted) >= escalation.max_local_attempts:
            return True, f"escalated: {len(counted)} local failures ({', '.join(counted[-3:])})"
        return False, ""


class Tasks:
    """Task-level failures reported by agents, forgotten `ttl_s` after the task's last use."""

    MAX_TASKS = 10_000  # a misbehaving client cannot grow this without bound

    def __init__(self) -> None:
        self._tasks: dict[str, TaskState] = {}
        self.changes = 0  # bumped on every change: the state saver compares this, not 10k tasks

    def record(
        self, task: str, reason: str, now: float, ttl_s: float, task_type: str | None = None
    ) -> TaskState:
        """Count one failure of `task` (of type `task_type`, when the agent says)."""
        self.expire(now, ttl_s)
        state = self._tasks.pop(task, None) or TaskState()
        if task_type:
            state.task_type = task_type
        if len(self._tasks) >= self.MAX_TASKS:
            del self._tasks[next(iter(self._tasks))]  # the least recently failed
        state.reasons = (state.reasons + [reason])[-50:]
        state.last_at = now
        self._tasks[task] = state
        self.changes += 1
        return state

    def touch(self, task: str, now: float) -> None:
        """The task was used now (routed while escalated): its TTL counts from now."""
        state = self._tasks.pop(task, None)
        if state is None:
            return
        state.last_at = now
        self._tasks[task] = state  # most recently used last: expire() stays oldest-first
        self.changes += 1

    def get(self, task: str, now: float, ttl_s: float) -> TaskState | None:
        state = self._tasks.get(task)
        if state is not None and now - state.last_at > ttl_s:
            del self._tasks[task]
            self.changes += 1
            return None
        return state

    def expire(self, now: float, ttl_s: float) -> None:
        # Oldest first (record() re-inserts at the end): stop at the first live one, so a
        # report costs the same with 10 tasks or 10,000.
        while self._tasks:
            task, state = next(iter(self._tasks.items()))
            if now - state.last_at <= ttl_s:
                return
            del self._tasks[task]
            self.changes += 1

    def __len__(self) -> int:
        return len(self._tasks)

    def dump(self) -> dict[str, TaskState]:
        return dict(self._tasks)

    def load(self, tasks: dict[str, TaskState]) -> None:
        merged = {**self._tasks, **tasks}
        self._tasks = dict(sorted(merged.items(), key=lambda item: item[1].last_at))
        self.changes += 1

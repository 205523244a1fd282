"""Routing: which backend of a profile's chain to use now, and the policies that decide it.

The router owns what only routing needs: task failures (escalation), money spent (budgets)
and each profile's current choice, from which it tells of fallbacks. It asks health through
the `verdict` function it is given and the configuration through the current directory; it
changes no health and tells nobody: what should be told, it returns as events for its owner
(the registry) to emit. Nothing here awaits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hroute.core.budgets import Day, Spend, budget_block, budget_day, cost_usd
from hroute.core.clock import Clock
from hroute.core.directory import Directory
from hroute.core.errors import UnknownProfileError
from hroute.core.escalation import ESCALATE, LOCAL_ONLY, Tasks, task_rule
from hroute.core.needs import NO_NEEDS, Needs, capability_gap
from hroute.core.verdict import Verdict

# An event to emit: its name and fields (the registry's `emit` takes them).
Event = tuple[str, dict[str, Any]]


class Router:
    """Answers `route(profile)`; counts task failures and spend."""

    def __init__(
        self,
        directory: Directory,
        clock: Clock,
        verdict: Callable[[str, str | None], Verdict],
    ) -> None:
        self.directory = directory  # the registry hands it each new configuration's
        self._clock = clock
        self._verdict = verdict  # (name, credential) -> Verdict, from health
        self.tasks = Tasks()
        self.spend = Spend()
        self._current: dict[str, str | None] = {}  # each profile's plain route, for fallbacks

    def route(
        self,
        profile: str,
        exclude: Iterable[str] = (),
        *,
        task: str | None = None,
        needs: Needs = NO_NEEDS,
        allow_paid: bool = False,
        credential: str | None = None,
        task_type: str | None = None,
        redirected: bool = False,
    ) -> dict[str, Any]:
        """The first usable backend of a profile's chain, and why each other one was passed over.

        `task_type` (or the type the task's last failure report gave) picks the profile's
        `escalation.task_types` rule: a type whose rule names another profile is routed as
        that profile (once: no chains of redirects).

        Each member is judged for its server, its model there and, when given, the key.

        A query: asking changes nothing (fallbacks are told when health changes, not when
        somebody asks). `credential` is the caller's key fingerprint: its own cooldowns and
        fallback-rule counts apply. Without a usable backend the answer says, per backend,
        why, what would help (`help`), and when something becomes usable (`retry_after_s`),
        or why that is unknown (`retry_after_unknown`).
        """
        config = self.directory.config
        if profile not in config.profiles:
            raise UnknownProfileError(profile, list(config.profiles))
        prof = config.profiles[profile]
        now = self._clock.now()
        kind = self._task_type(task, task_type, now)
        rule = task_rule(prof.escalation, kind)
        if rule not in (None, LOCAL_ONLY, ESCALATE) and not redirected:
            answer = self.route(
                rule, exclude, task=task, needs=needs, allow_paid=allow_paid,
                credential=credential, task_type=kind, redirected=True,
            )  # fmt: skip
            return {**answer, "task_type": {"type": kind, "rule": rule, "profile": profile}}
        excluded = set(exclude)
        escalated, why_escalated, note = self._escalation(profile, task, now, kind)
        day: Day | None = None  # only paid backends need it
        chain, chosen = [], None
        waits: list[float] = []
        unknown: list[str] = []
        help_: list[str] = []
        for member in prof.chain:
            backend = config.backends[member]
            skip, wait = None, None
            if member in excluded:
                skip = "excluded"
            elif escalated and backend.tier_name == "local":
                skip = why_escalated
            elif (gap := capability_gap(backend, needs)) is not None:
                skip = gap
            elif backend.paid and not allow_paid:
                day = day or self.day_window()
                skip = budget_block(member, config.budgets, self.spend, day)
                if skip is not None:
                    wait = self.spend.resets_in(day)
                    help_.append(f"confirm=1 (or allow_paid=1) routes to {member} past its budget")
            if skip is None:
                ok, skip, wait = self._verdict(member, credential)
                if ok:
                    chain.append(
                        {"backend": member, "usable": True, "reason": None,
                         "base_url": backend.base_url}
                    )  # fmt: skip
                    chosen = chosen or member
                    continue
                if wait is None:
                    unknown.append(
                        f"{member}: {skip} (usable again when a probe or its supervisor says so)"
                    )
            chain.append(
                {"backend": member, "usable": False, "reason": skip, "base_url": backend.base_url}
            )
            if wait is not None:
                waits.append(wait)
        answer: dict[str, Any] = {"profile": profile, "backend": chosen, "chain": chain}
        if escalated:
            answer["escalated"] = why_escalated
            help_.append(f"a new task (or none) starts on the local tier again; {why_escalated}")
        if note:
            answer["note"] = note
        if rule is not None:
            answer["task_type"] = {"type": kind, "rule": rule}
        if chosen is None:
            if waits:
                answer["retry_after_s"] = round(min(waits), 3)
            else:
                answer["retry_after_unknown"] = "; ".join(unknown) or "every backend is skipped"
            if help_:
                answer["help"] = help_
            return answer
        backend = config.backends[chosen]
        answer.update(base_url=backend.base_url, model=backend.model, kind=backend.kind)
        return answer

    def _task_type(self, task: str | None, given: str | None, now: float) -> str | None:
        if given or task is None:
            return given or None
        state = self.tasks.get(task, now, self._task_ttl_s())
        return state.task_type if state is not None else None

    def _escalation(
        self, profile: str, task: str | None, now: float, kind: str | None = None
    ) -> tuple[bool, str, str]:
        """(escalated, why, note) for `task` in `profile`: a profile with no cloud tier stays
        local whatever the task's failures (escalating would only leave nothing to use), and
        so does a task whose type is local_only in the profile."""
        if task is None:
            return False, "", ""
        prof = self.directory.config.profiles[profile]
        state = self.tasks.get(task, now, self._task_ttl_s())
        kind = kind or (state.task_type if state is not None else None)
        rule = task_rule(prof.escalation, kind)
        if rule == LOCAL_ONLY:
            return False, "", f"task type {kind} is local_only in profile {profile}: staying local"
        if rule not in (None, ESCALATE):
            return self._escalation(rule, task, now, kind) if rule != profile else (False, "", "")
        if state is None:
            return False, "", ""
        on, why = state.escalated(prof.escalation, now)
        if on and not self.has_cloud_tier(profile):
            return False, "", f"{why}, but profile {profile} has no cloud tier: staying local"
        if on and state.last_at != now:
            self.tasks.touch(task, now)  # in use: an escalated task does not expire mid-task
        return on, why, ""

    def has_cloud_tier(self, profile: str) -> bool:
        config = self.directory.config
        return any(config.backends[m].tier_name != "local" for m in config.profiles[profile].chain)

    def record_task_failure(
        self, task: str, reason: str, detail: str = "", task_type: str | None = None
    ) -> tuple[dict[str, Any], list[Event]]:
        """Count a task-level failure (seed 001); say whether each profile now escalates it,
        and the events to tell (the failure; each profile's escalation, once)."""
        now = self._clock.now()
        state = self.tasks.record(task, reason, now, self._task_ttl_s(), task_type)
        state.detail = detail
        events: list[Event] = [("task_failure", {"task": task, "reason": reason, "detail": detail})]
        escalated = {}
        for profile in self.directory.config.profiles:
            on, why, _ = self._escalation(profile, task, now)
            escalated[profile] = on
            if on and profile not in state.announced:
                state.announced.add(profile)
                chosen = self.route(profile, task=task)["backend"]
                events.append((
                    "escalation",
                    {"profile": profile, "task": task, "backend": chosen or "none",
                     "reason": why, "detail": detail},
                ))  # fmt: skip
        answer = {
            "task": task,
            "failures": len(state.reasons),
            "reasons": state.reasons[-10:],
            "escalated": escalated,
        }
        return answer, events

    def record_usage(
        self, name: str, input_tokens: int, output_tokens: int
    ) -> tuple[dict[str, Any], float, Day]:
        """Add what a call cost to today's spend of a backend; the answer, the cost added
        and the budget day it counts in."""
        self.directory.identity(name)  # unknown names are an error
        backend = self.directory.config.backends[name]
        usd = cost_usd(backend.price, input_tokens, output_tokens)
        day = self.day_window()
        spent = self.spend.add(name, usd, day) if usd else self.spend.spent(name, day)
        budgets = self.directory.config.budgets
        block = budget_block(name, budgets, self.spend, day) if backend.paid else None
        answer = {
            "backend": name,
            "cost_usd": round(usd, 6),
            "spent_today_usd": round(spent, 6),
            "total_today_usd": round(self.spend.total(day), 6),
            "budget": block,
        }
        return answer, usd, day

    def apply_shared_spend(self, label: str, by_backend: dict[str, float]) -> bool:
        """What the cluster's other hosts spent in budget day `label`, per backend; True if it
        changed what is known (a budget may now be exhausted)."""
        return self.spend.set_others(label, by_backend, self.day_window())

    def spent_today(self, name: str) -> float:
        return self.spend.spent(name, self.day_window())

    def note_changes(self) -> list[Event]:
        """A `fallback` event for every profile whose plain route moved since the last change."""
        events: list[Event] = []
        profiles = self.directory.config.profiles
        self._current = {p: v for p, v in self._current.items() if p in profiles}
        for profile, prof in profiles.items():
            answer = self.route(profile)
            chosen, chain = answer["backend"], answer["chain"]
            previous = self._current.get(profile, prof.chain[0])
            self._current[profile] = chosen
            if chosen == previous:
                continue
            passed = [
                f"{c['backend']}: {c['reason']}"
                for c in chain
                if c["backend"] != chosen and not c["usable"]
            ]
            why = "; ".join(passed) if passed else "preferred backend usable again"
            events.append((
                "fallback",
                {"profile": profile, "backend": chosen or "none", "old": previous,
                 "new": chosen or "none", "reason": why},
            ))  # fmt: skip
        return events

    def day_window(self) -> Day:
        """The budget day now, in the configured zone."""
        return budget_day(self._clock.wall(), self.directory.config.budgets.zone)

    def day(self) -> str:
        return self.day_window().label

    def _task_ttl_s(self) -> float:
        profiles = self.directory.config.profiles.values()
        return max((p.escalation.task_ttl_s for p in profiles), default=3600.0)

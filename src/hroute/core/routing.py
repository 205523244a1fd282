"""Routing: which backend of a profile's chain to use now, and the policies that decide it.

The router reads health from the registry and owns what only routing needs: task failures
(escalation), money spent (budgets) and each profile's current choice, from which it tells
of fallbacks. It is part of the registry's single owner; nothing here awaits.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hroute.core.budgets import Spend, budget_block, cost_usd
from hroute.core.escalation import Tasks
from hroute.core.needs import NO_NEEDS, Needs, capability_gap
from hroute.errors import UnknownProfileError

if TYPE_CHECKING:
    from hroute.core.registry import Registry


class Router:
    """Answers `route(profile)`; counts task failures and spend."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
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
    ) -> dict[str, Any]:
        """The first usable backend of a profile's chain, and why each other one was passed over.

        Each member is judged for its server, its model there and, when given, the key.

        A query: asking changes nothing (fallbacks are told when health changes, not when
        somebody asks).
        """
        config = self._registry.config
        if profile not in config.profiles:
            raise UnknownProfileError(profile, list(config.profiles))
        prof = config.profiles[profile]
        excluded = set(exclude)
        now = self._registry.clock.now()
        escalated, why_escalated = False, ""
        state = None if task is None else self.tasks.get(task, now, self._task_ttl_s())
        if state is not None:
            escalated, why_escalated = state.escalated(prof.escalation)
        day = self.day()
        chain, chosen, waits = [], None, []
        for member in prof.chain:
            backend = config.backends[member]
            skip = None
            if member in excluded:
                skip = "excluded"
            elif escalated and backend.tier_name == "local":
                skip = why_escalated
            elif (gap := capability_gap(backend, needs)) is not None:
                skip = gap
            elif backend.paid and not allow_paid:
                skip = budget_block(member, config.budgets, self.spend, day)
            if skip is not None:
                chain.append({"backend": member, "usable": False, "reason": skip})
                continue
            ok, reason, retry_after = self._registry.verdict(member, credential)
            chain.append({"backend": member, "usable": ok, "reason": reason})
            if ok and chosen is None:
                chosen = member
            elif retry_after is not None:
                waits.append(retry_after)
        answer: dict[str, Any] = {"profile": profile, "backend": chosen, "chain": chain}
        if escalated:
            answer["escalated"] = why_escalated
        if chosen is None:
            answer["retry_after_s"] = round(min(waits), 3) if waits else None
            return answer
        backend = config.backends[chosen]
        answer.update(base_url=backend.base_url, model=backend.model, kind=backend.kind)
        return answer

    def record_task_failure(self, task: str, reason: str) -> dict[str, Any]:
        """Count a task-level failure (seed 001); say whether each profile now escalates it."""
        registry = self._registry
        state = self.tasks.record(task, reason, registry.clock.now(), self._task_ttl_s())
        escalated = {}
        for profile, cfg in registry.config.profiles.items():
            on, why = state.escalated(cfg.escalation)
            escalated[profile] = on
            if on and profile not in state.announced:
                state.announced.add(profile)
                chosen = self.route(profile, task=task)["backend"]
                registry.emit(
                    "escalation", profile=profile, task=task, backend=chosen or "none", reason=why
                )
        registry.changed()
        return {
            "task": task,
            "failures": len(state.reasons),
            "reasons": state.reasons[-10:],
            "escalated": escalated,
        }

    def record_usage(self, name: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
        """Add what a call cost to today's spend of a backend."""
        registry = self._registry
        registry.health(name)  # unknown names are an error
        backend = registry.config.backends[name]
        usd = cost_usd(backend.price, input_tokens, output_tokens)
        day = self.day()
        spent = self.spend.add(name, usd, day) if usd else self.spend.spent(name, day)
        budgets = registry.config.budgets
        block = budget_block(name, budgets, self.spend, day) if backend.paid else None
        if usd:
            registry.changed()
        return {
            "backend": name,
            "cost_usd": round(usd, 6),
            "spent_today_usd": round(spent, 6),
            "total_today_usd": round(self.spend.total(day), 6),
            "budget": block,
        }

    def spent_today(self, name: str) -> float:
        return self.spend.spent(name, self.day())

    def note_changes(self) -> None:
        """Tell of every profile whose plain route moved since the last change (a fallback)."""
        profiles = self._registry.config.profiles
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
            self._registry.emit(
                "fallback",
                profile=profile,
                backend=chosen or "none",
                old=previous,
                new=chosen or "none",
                reason=why,
            )

    def day(self) -> str:
        return datetime.fromtimestamp(self._registry.clock.wall()).strftime("%Y-%m-%d")

    def _task_ttl_s(self) -> float:
        profiles = self._registry.config.profiles.values()
        return max((p.escalation.task_ttl_s for p in profiles), default=3600.0)

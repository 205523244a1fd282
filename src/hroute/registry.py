"""The shared health registry: the one owner of every backend's health and of the events.

Everything runs on the daemon's event loop; handlers and probe tasks call these methods,
which never await, so each call sees and leaves one consistent state. Time comes from
the injected clock.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .classify import Reason, parse_reason
from .config import Config
from .errors import UnknownBackendError, UnknownProfileError
from .health import Health, Policy, ProbeOutcome, Report, Transition
from .identity import BackendIdentity, normalize_base_url
from .policy import NO_NEEDS, Needs, Spend, Tasks, budget_block, capability_gap, cost_usd


class Clock(Protocol):
    def now(self) -> float: ...  # monotonic seconds
    def wall(self) -> float: ...  # seconds since the epoch, for display only


EventSink = Callable[[dict[str, Any]], None]


@dataclass
class Entry:
    """A configured backend name and the identity whose health it shares."""

    name: str
    identity: BackendIdentity
    health: Health


class Registry:
    """Health of every configured backend, the routing answers, and the event log."""

    def __init__(self, config: Config, clock: Clock, *, events_kept: int = 1000) -> None:
        self._clock = clock
        self._events: deque[dict[str, Any]] = deque(maxlen=events_kept)
        self._event_ids = itertools.count(1)
        self._sinks: list[EventSink] = []
        self._listeners: list[Callable[[], None]] = []
        self._last_route: dict[str, str | None] = {}
        self._notes: dict[str, str] = {}
        self._process_views: dict[str, Callable[[], dict[str, Any]]] = {}
        self.tasks = Tasks()
        self.spend = Spend()
        self.version = 0  # bumped on every change; the snapshot publisher watches it
        self.config = config
        self._by_identity: dict[BackendIdentity, Health] = {}
        self._entries: dict[str, Entry] = {}
        self._by_url: dict[str, str] = {}
        self._index(config)

    # --- configuration --------------------------------------------------------------

    def _index(self, config: Config) -> None:
        health = {}
        entries = {}
        for name, backend in config.backends.items():
            ident = backend.identity
            record = health.get(ident) or self._by_identity.get(ident) or Health()
            health[ident] = record
            entries[name] = Entry(name, ident, record)
        self._by_identity, self._entries = health, entries
        self._by_url = {}
        for name, entry in entries.items():
            self._by_url.setdefault(entry.identity.base_url, name)
        self.config = config
        self._changed()

    def apply_config(self, config: Config) -> None:
        """Switch to a new configuration in one step; a query sees the old one or the new one.

        A backend whose identity is unchanged keeps its health record (state, cooldowns,
        schedule); a new identity starts fresh; a new key lifts hroute's own auth block.
        """
        old = self.config.backends
        for name, backend in config.backends.items():
            before = old.get(name)
            if before is not None and before.key_env != backend.key_env:
                record = self._by_identity.get(backend.identity)
                if record is not None and record.blocked in ("auth", "auth_permanent"):
                    record.blocked = None
        self._notes = {n: v for n, v in self._notes.items() if n in config.backends}
        self._last_route = {p: v for p, v in self._last_route.items() if p in config.profiles}
        self._index(config)

    def records(self) -> dict[BackendIdentity, Health]:
        """Every health record by identity (for saving)."""
        return dict(self._by_identity)

    def restore(self, records: dict[BackendIdentity, Health]) -> int:
        """Adopt saved records for the identities configured now; return how many."""
        restored = 0
        for ident, record in records.items():
            if ident in self._by_identity:
                self._by_identity[ident] = record
                restored += 1
        for entry in self._entries.values():
            entry.health = self._by_identity[entry.identity]
        self._changed()
        return restored

    def set_note(self, name: str, note: str | None) -> None:
        """A plain-words remark shown with the backend (e.g. its key is not set)."""
        if note:
            self._notes[name] = note
        else:
            self._notes.pop(name, None)

    def add_sink(self, sink: EventSink) -> None:
        """Call `sink(event)` for every event (log, journal, metrics)."""
        self._sinks.append(sink)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change (the snapshot publisher wakes on it)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        self.version += 1
        for listener in self._listeners:
            listener()

    def policy(self, name: str) -> Policy:
        probe, cooldown = self.config.probe_for(name), self.config.cooldown_for(name)
        rules = {reason: rule.threshold for reason, rule in self.config.fallback_rules.items()}
        return Policy(
            fall=probe.fall,
            rise=probe.rise,
            base_s=cooldown.base_s,
            max_s=cooldown.max_s,
            switch_after=rules,
        )

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def identity(self, name: str) -> BackendIdentity:
        return self._entry(name).identity

    def health(self, name: str) -> Health:
        return self._entry(name).health

    def resolve(self, *, backend: str | None = None, base_url: str | None = None) -> str | None:
        """The configured name for a backend name or any spelling of its URL; None if unknown."""
        if backend is not None:
            return backend if backend in self._entries else None
        if base_url is not None:
            return self._by_url.get(normalize_base_url(base_url))
        return None

    # --- updates ----------------------------------------------------------------------

    def record_probe(self, name: str, outcome: ProbeOutcome) -> None:
        entry = self._entry(name)
        self._publish(name, entry.health.on_probe(outcome, self._clock.now(), self.policy(name)))

    def record_report(self, name: str, report: Report) -> list[Transition]:
        entry = self._entry(name)
        now = self._clock.now()
        entry.health.expire(now)
        changes = entry.health.on_report(report, now, self.policy(name))
        self._publish(name, changes)
        return changes

    def mark_down(self, name: str, reason: str, detail: str = "") -> None:
        self._publish(name, self._entry(name).health.mark_down(reason, detail))

    def hold(self, name: str, reason: str | None) -> None:
        """Keep a backend unusable for `reason` whatever its probes say (a supervisor's verdict:
        its process exited, is fatal ...); None lifts it. hroute's own auth block stays."""
        health = self._entry(name).health
        if health.blocked not in ("auth", "auth_permanent") and health.blocked != reason:
            health.blocked = reason
            self._changed()

    def set_process_view(self, name: str, view: Callable[[], dict[str, Any]] | None) -> None:
        """Show `view()` as the backend's `process` (its supervisor's state); None removes it."""
        if view is None:
            self._process_views.pop(name, None)
        else:
            self._process_views[name] = view

    def expire(self) -> float | None:
        """Drop run-out cooldowns; return the next deadline to call again at."""
        now = self._clock.now()
        deadlines = []
        for name, entry in self._entries.items():
            changes = entry.health.expire(now)
            if changes:
                self._publish(name, changes)
            deadline = entry.health.next_deadline()
            if deadline is not None:
                deadlines.append(deadline)
        return min(deadlines, default=None)

    def _publish(self, name: str, changes: Iterable[Transition]) -> None:
        changes = list(changes)
        self._changed()
        for change in changes:
            self.emit(
                change.event,
                backend=name,
                old=change.old,
                new=change.new,
                reason=change.reason,
                cooldown_s=None if change.cooldown_s is None else round(change.cooldown_s, 3),
                credential=change.credential,
                detail=change.detail,
            )

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record an event in the ring buffer and hand it to every sink (log, journal, metrics)."""
        record = {"id": next(self._event_ids), "ts": round(self._clock.wall(), 3), "event": event}
        record.update({k: v for k, v in fields.items() if v is not None and v != ""})
        self._events.append(record)
        for sink in self._sinks:
            sink(record)
        return record

    # --- queries ----------------------------------------------------------------------

    def usable(self, name: str, credential: str | None = None) -> dict[str, Any]:
        entry = self._entry(name)
        ok, reason, retry_after = entry.health.verdict(self._clock.now(), credential)
        return {
            "backend": name,
            "usable": ok,
            "state": str(entry.health.state),
            "reason": reason,
            "retry_after_s": retry_after,
        }

    def route(
        self,
        profile: str,
        exclude: Iterable[str] = (),
        *,
        task: str | None = None,
        needs: Needs = NO_NEEDS,
        allow_paid: bool = False,
    ) -> dict[str, Any]:
        """The first usable backend of a profile's chain, and why each other one was passed over."""
        if profile not in self.config.profiles:
            raise UnknownProfileError(profile, list(self.config.profiles))
        prof = self.config.profiles[profile]
        excluded = set(exclude)
        now = self._clock.now()
        escalated, why_escalated = False, ""
        state = None if task is None else self.tasks.get(task, now, self._task_ttl_s())
        if state is not None:
            escalated, why_escalated = state.escalated(prof.escalation)
        day = self._day()
        chain, chosen, waits = [], None, []
        for member in prof.chain:
            backend = self.config.backends[member]
            skip = None
            if member in excluded:
                skip = "excluded"
            elif escalated and backend.tier_name == "local":
                skip = why_escalated
            elif (gap := capability_gap(backend, needs)) is not None:
                skip = gap
            elif backend.paid and not allow_paid:
                skip = budget_block(member, self.config.budgets, self.spend, day)
            if skip is not None:
                chain.append({"backend": member, "usable": False, "reason": skip})
                continue
            ok, reason, retry_after = self._entries[member].health.verdict(now)
            chain.append({"backend": member, "usable": ok, "reason": reason})
            if ok and chosen is None:
                chosen = member
            elif retry_after is not None:
                waits.append(retry_after)
        if state is not None and escalated and profile not in state.announced:
            state.announced.add(profile)
            self.emit(
                "escalation",
                profile=profile,
                task=task,
                backend=chosen or "none",
                reason=why_escalated,
            )
        if task is None and needs == NO_NEEDS:
            self._note_route(profile, chosen, chain)  # per-request choices are not fallbacks
        answer: dict[str, Any] = {"profile": profile, "backend": chosen, "chain": chain}
        if escalated:
            answer["escalated"] = why_escalated
        if chosen is None:
            answer["retry_after_s"] = round(min(waits), 3) if waits else None
            return answer
        backend = self.config.backends[chosen]
        answer.update(base_url=backend.base_url, model=backend.model, kind=backend.kind)
        return answer

    def record_task_failure(self, task: str, reason: str) -> dict[str, Any]:
        """Count a task-level failure (seed 001); say whether each profile now escalates it."""
        state = self.tasks.record(task, reason, self._clock.now(), self._task_ttl_s())
        self._changed()
        escalated = {
            p: state.escalated(cfg.escalation)[0] for p, cfg in self.config.profiles.items()
        }
        return {
            "task": task,
            "failures": len(state.reasons),
            "reasons": state.reasons[-10:],
            "escalated": escalated,
        }

    def record_usage(self, name: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
        """Add what a call cost to today's spend of a backend."""
        backend = self.config.backends[self._entry(name).name]
        usd = cost_usd(backend.price, input_tokens, output_tokens)
        day = self._day()
        spent = self.spend.add(name, usd, day) if usd else self.spend.spent(name, day)
        block = budget_block(name, self.config.budgets, self.spend, day) if backend.paid else None
        if usd:
            self._changed()
        return {
            "backend": name,
            "cost_usd": round(usd, 6),
            "spent_today_usd": round(spent, 6),
            "total_today_usd": round(self.spend.total(day), 6),
            "budget": block,
        }

    def _task_ttl_s(self) -> float:
        return max((p.escalation.task_ttl_s for p in self.config.profiles.values()), default=3600.0)

    def _day(self) -> str:
        return time.strftime("%Y-%m-%d", time.localtime(self._clock.wall()))

    def _note_route(self, profile: str, chosen: str | None, chain: list[dict[str, Any]]) -> None:
        previous = self._last_route.get(profile, chain[0]["backend"])
        self._last_route[profile] = chosen
        if chosen == previous:
            return
        passed = [
            f"{c['backend']}: {c['reason']}"
            for c in chain
            if c["backend"] != chosen and not c["usable"]
        ]
        why = "; ".join(passed) if passed else "preferred backend usable again"
        self.emit(
            "fallback",
            profile=profile,
            backend=chosen or "none",
            old=previous,
            new=chosen or "none",
            reason=why,
        )

    def view(self, name: str) -> dict[str, Any]:
        entry = self._entry(name)
        backend = self.config.backends[name]
        health = entry.health
        now = self._clock.now()
        ok, reason, _ = health.verdict(now)
        last_probe = health.last_probe_at
        view = {
            "name": name,
            "kind": backend.kind,
            "base_url": backend.base_url,
            "model": backend.model,
            "state": str(health.state),
            "usable": ok,
            "reason": reason,
            "detail": health.detail,
            "cooldown_remaining_s": _seconds(health.cooldown_remaining(now)),
            "consecutive_failures": health.consecutive_failures,
            "last_probe_at": None
            if last_probe is None
            else round(self._clock.wall() - (now - last_probe), 3),
            "latency_ms": None if health.latency_ms is None else round(health.latency_ms, 2),
            "credential_cooldowns": len(health.credentials),
            "tier": backend.tier_name,
        }
        if backend.paid:
            view["spent_today_usd"] = round(self.spend.spent(name, self._day()), 6)
        if name in self._notes:
            view["note"] = self._notes[name]
        if name in self._process_views:
            view["process"] = self._process_views[name]()
        return view

    def views(self) -> list[dict[str, Any]]:
        return [self.view(name) for name in self._entries]

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self._events if e["id"] > since]

    def snapshot(self) -> dict[str, Any]:
        """What agents may read without a round trip: per backend, what blocks it and until when.

        Deadlines are CLOCK_MONOTONIC seconds, which every process on this machine shares.
        """
        backends = {}
        for name, entry in self._entries.items():
            h = entry.health
            backends[name] = {
                "state": str(h.state),
                "blocked": h.standing(),
                "until": None if h.cooldown is None else h.cooldown.until,
                "until_reason": None if h.cooldown is None else str(h.cooldown.reason),
                "creds": {fp: [c.until, str(c.reason)] for fp, c in h.credentials.items()},
            }
        return {"backends": backends, "urls": dict(self._by_url)}

    def _entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownBackendError(name, list(self._entries)) from None


def parse_report(data: dict[str, Any]) -> Report:
    """Build a Report from the API's JSON fields (already validated)."""
    success = data["outcome"] == "success"
    reason: Reason | None = None if success else parse_reason(data.get("reason") or "unknown")
    return Report(
        success=success,
        reason=reason,
        retry_after_s=data.get("retry_after_s"),
        credential=data.get("credential"),
        detail=(data.get("detail") or "")[:300],
    )


def _seconds(value: float) -> float | None:
    if value == float("inf"):
        return None
    return round(value, 3)

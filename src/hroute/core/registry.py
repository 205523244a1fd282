"""The shared health registry: the one owner of every backend's health record.

Everything runs on the daemon's event loop; handlers, probe tasks and supervisors call these
methods, which never await, so each call sees and leaves one consistent state. Time comes
from the injected clock. Its parts, each the owner of one thing:

- the **directory** (`directory.py`): what the configuration says, indexed; a new one per
  reload;
- the **health records** (`health.py`), one per server identity, kept here, with the
  removed ones' tombstones (`tombstones.py`); only `Health` changes them;
- the **annotations** (`annotations.py`): notes and process views, only shown;
- the **router** (`routing.py`): routes, task failures and spend; it returns the events it
  wants told;
- the **event log** (`events.py`) and one way to hear of changes: `subscribe(topic, fn)`.

What is shown (`views.py`) and what the fleet shares (`sharing.py`) are functions of these
values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable
from typing import Any

from hroute.core.annotations import Annotations
from hroute.core.clock import Clock
from hroute.core.directory import Directory
from hroute.core.events import EventLog, Subscribers, Topic
from hroute.core.health import Health, ProbeOutcome, Report, Transition
from hroute.core.identity import BackendIdentity
from hroute.core.routing import Event, Router
from hroute.core.shared_record import Shared
from hroute.core.sharing import shared_name
from hroute.core.tombstones import Tombstones
from hroute.core.verdict import Verdict
from hroute.core.views import backend_view, snapshot


class Registry:
    """Health of every configured backend, and the parts that hang off it."""

    def __init__(
        self,
        config: Any,
        clock: Clock,
        *,
        events_kept: int = 1000,
        jitter: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.clock = clock
        self._jitter = jitter  # a value in [-1, 1] per new cooldown (the daemon's RNG)
        self.events = EventLog(clock, events_kept)
        self._subscribers = Subscribers()
        self.annotations = Annotations()
        self.version = 0  # bumped on every change; the snapshot publisher watches it
        # Per server identity, the version of its record's last change: writers of what is
        # derived from a record (the snapshot's sections) redo only what changed since.
        self._stamps: dict[BackendIdentity, int] = {}
        # No cooldown ends before this (None: none has a deadline): lowered by every new
        # deadline told, made exact by `expire`'s walk, so a change costs O(1), not a walk.
        self._due: float | None = None
        self.directory = Directory(config)
        self._records: dict[BackendIdentity, Health] = {}
        self.tombstones = Tombstones()  # removed identities' health, for when they come back
        self.router = Router(self.directory, clock, self.verdict)
        self._index(self.directory)

    # --- configuration --------------------------------------------------------------

    @property
    def config(self) -> Any:
        return self.directory.config

    def _index(self, directory: Directory) -> None:
        records: dict[BackendIdentity, Health] = {}
        now = self.clock.now()
        for ident in directory.identities():
            records[ident] = (
                self._records.get(ident) or self.tombstones.revive(ident, now) or Health()
            )
        for ident, record in self._records.items():
            if ident not in records:
                self.tombstones.bury(ident, record, now)
        self._records = records
        self.directory = self.router.directory = directory
        self.changed(everything=True)

    def apply_config(self, config: Any) -> None:
        """Switch to a new configuration in one step; a query sees the old one or the new one.

        A backend whose identity is unchanged keeps its health record (state, cooldowns,
        schedule); a new identity starts fresh; a new key lifts hroute's own auth block.
        """
        old = self.config.backends
        for name, backend in config.backends.items():
            before = old.get(name)
            if before is not None and before.key_env != backend.key_env:
                record = self._records.get(backend.identity)
                if record is not None:
                    record.new_key()
        self.annotations.keep(config.backends)
        self._index(Directory(config))

    def records(self) -> dict[BackendIdentity, Health]:
        """Every health record by identity, removed ones still kept included (for saving)."""
        return self.tombstones.records() | self._records

    def restore(self, records: dict[BackendIdentity, Health]) -> int:
        """Adopt saved records for the identities configured now (keeping the others as
        tombstones, for when they come back); return how many were adopted."""
        restored = 0
        now = self.clock.now()
        for ident, record in records.items():
            if ident in self._records:
                self._records[ident] = record
                restored += 1
            else:
                self.tombstones.bury(ident, record, now)
        self.changed(everything=True)
        return restored

    def subscribe(self, topic: Topic, fn: Callable[..., None]) -> None:
        """Call `fn` on every `topic` (`events.Topic` says when, and with which arguments)."""
        self._subscribers.subscribe(topic, fn)

    def changed(self, name: str | None = None, *, everything: bool = False) -> None:
        """Something the answers depend on changed (`name`'s health record, when given; every
        record's, with `everything`): tell of fallbacks, wake the listeners."""
        self.version += 1
        if everything:
            self._stamps = dict.fromkeys(self._records, self.version)
            self._due = self.clock.now()  # restored or reloaded records: walk them soon
        elif name is not None:
            self._stamps[self.directory.identity(name)] = self.version
        self._emit_all(self.router.note_changes())
        self._subscribers.tell(Topic.CHANGED)

    def health(self, name: str) -> Health:
        return self._records[self.directory.identity(name)]

    def stamp(self, name: str) -> int:
        """The version at which `name`'s health record last changed (0: not since start)."""
        return self._stamps.get(self.directory.identity(name), 0)

    def stamp_of(self, identity: BackendIdentity) -> int | None:
        """`stamp` by server identity; None for one not configured now (a kept record)."""
        return self._stamps.get(identity, 0) if identity in self._records else None

    # --- updates ----------------------------------------------------------------------

    def record_probe(self, name: str, outcome: ProbeOutcome) -> None:
        health = self.health(name)
        before = health.mark()
        changes = health.on_probe(outcome, self.clock.now(), self.directory.policy(name))
        self._publish(name, changes, visible=health.mark() != before)

    def record_report(self, name: str, report: Report) -> list[Transition]:
        """Apply a client's report. Without a model it counts for the model of `name`."""
        health = self.health(name)
        now = self.clock.now()
        policy = self.directory.policy(name)
        ended = health.expire(now, policy)
        if ended:
            self._publish(name, ended)
        model = self.directory.model(name)
        if report.model is None and model:
            report = dataclasses.replace(report, model=model)
        before = health.mark()
        changes = health.on_report(report, now, policy, self._jitter())
        self._publish(name, changes, visible=health.mark() != before)
        if changes:
            self._subscribers.tell(Topic.REPORTED, name, changes)
        return changes

    def take_shared(self, shared: Shared, *, newer: bool = False) -> bool:
        """Take another host's record (`Health.take_shared` says how); False if not ours."""
        if (name := shared_name(self.directory, shared.identity)) is None:
            return False
        changes = self.health(name).take_shared(shared, self.clock.now(), newer=newer)
        self._publish(name, changes)
        return True

    def block(self, name: str, reason: str, detail: str = "") -> None:
        """Unusable at once, whatever its probes say, until `unblock` (a supervisor's verdict:
        its process exited, hangs, is fatal ...). Routes fall through in the same step."""
        self._publish(name, self.health(name).block_for(reason, detail))

    def started(self, name: str, detail: str) -> None:
        """Its supervisor spawned the server: starting (unusable) until a probe says ready."""
        self._publish(name, self.health(name).started(detail))

    def unblock(self, name: str, reasons: Collection[str] | None = None) -> None:
        """Lift a supervisor's block (only one of `reasons`, when given); the probes decide
        from here. hroute's own auth block stays."""
        if self.health(name).unblock(reasons):
            self.changed(name)

    def due(self) -> float | None:
        """No cooldown ends before this (None: none has a deadline); `expire` then."""
        return self._due

    def expire(self) -> float | None:
        """Drop run-out cooldowns (a walk of every record); return the next deadline to call
        again at."""
        now = self.clock.now()
        self.tombstones.expire(now)
        deadlines = []
        for ident, health in self._records.items():
            name = self.directory.first_at(ident)
            assert name is not None
            changes = health.expire(now, self.directory.policy(name))
            if changes:
                self._publish(name, changes)  # one record per server: told once
            deadline = health.next_deadline()
            if deadline is not None:
                deadlines.append(deadline)
        self._due = min(deadlines, default=None)
        return self._due

    def record_task_failure(
        self, task: str, reason: str, detail: str = "", task_type: str | None = None
    ) -> dict[str, Any]:
        """`Router.record_task_failure`, its events told."""
        answer, events = self.router.record_task_failure(task, reason, detail, task_type)
        self._emit_all(events)
        self.changed()
        return answer

    def record_usage(self, name: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
        """`Router.record_usage`; a cost added is a change and is told (`Topic.SPENT`)."""
        answer, usd, day = self.router.record_usage(name, input_tokens, output_tokens)
        if usd:
            self.changed()
            self._subscribers.tell(Topic.SPENT, name, usd, day)
        return answer

    def take_shared_spend(self, label: str, by_backend: dict[str, float]) -> None:
        """What the cluster's other hosts spent in budget day `label`, per backend."""
        if self.router.apply_shared_spend(label, by_backend):
            self.changed()  # a budget may now be exhausted

    def _publish(self, name: str, changes: Iterable[Transition], *, visible: bool = True) -> None:
        """Tell each transition; then, if anything an answer depends on moved, `changed()`.
        A probe that confirms what was known changes nothing: no snapshot write, no work."""
        changes = list(changes)
        first = self.directory.first_at(self.directory.identity(name)) or name
        now = self.clock.now()
        for change in changes:
            if change.cooldown_s is not None and (
                self._due is None or now + change.cooldown_s < self._due
            ):
                self._due = now + change.cooldown_s
            held = self.directory.held_by(name, change.scope, change.model)
            fields = dict(vars(change))  # scope, model, old, new, reason, ... (no deep copy)
            if change.cooldown_s is not None:
                fields["cooldown_s"] = round(change.cooldown_s, 3)
            self.emit(
                fields.pop("event"),
                backend=held[0] if held else name,
                server=self.config.backends[first].kind,
                held=held,
                **fields,
            )
            if change.event == "cooldown_cleared":
                self._subscribers.tell(Topic.CLEARED, name, change)
        if changes or visible:
            self.changed(name)  # after the cause is told: a fallback it brings follows it

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record an event in the ring buffer and tell it (`Topic.EVENT`: log, journal,
        metrics)."""
        record = self.events.emit(event, **fields)
        self._subscribers.tell(Topic.EVENT, record)
        return record

    def _emit_all(self, events: Iterable[Event]) -> None:
        for event, fields in events:
            self.emit(event, **fields)

    # --- queries ----------------------------------------------------------------------

    def verdict(
        self, name: str, credential: str | None = None, model: str | None = None
    ) -> Verdict:
        """Usable now? Server, model (`name`'s, unless given) and key (when given) decide."""
        return self.health(name).verdict(
            self.clock.now(), credential, model or self.directory.model(name)
        )

    def usable(
        self, name: str, credential: str | None = None, model: str | None = None
    ) -> dict[str, Any]:
        health = self.health(name)
        verdict, scope = health.scoped_verdict(
            self.clock.now(), credential, model or self.directory.model(name)
        )
        return {
            "backend": name,
            "usable": verdict.usable,
            "state": str(health.state),
            "reason": verdict.reason,
            "retry_after_s": verdict.retry_after_s,
            "scope": scope,
        }

    def route(self, profile: str, exclude: Iterable[str] = (), **kw: Any) -> dict[str, Any]:
        """`Router.route`: the first usable backend of a profile's chain."""
        return self.router.route(profile, exclude, **kw)

    def view(self, name: str) -> dict[str, Any]:
        """What an operator wants to know about one backend (`views.backend_view`)."""
        health = self.health(name)
        backend = self.config.backends[name]
        return backend_view(
            name, backend, health, self.clock.now(), self.clock.wall(),
            spent_today=self.router.spent_today(name) if backend.paid else None,
            note=self.annotations.note(name), process=self.annotations.process_view(name),
        )  # fmt: skip

    def views(self) -> list[dict[str, Any]]:
        return [self.view(name) for name in self.directory.names]

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.directory, self.health)

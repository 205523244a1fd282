"""The shared health registry: the one owner of every backend's health record.

Everything runs on the daemon's event loop; handlers, probe tasks and supervisors call these
methods, which never await, so each call sees and leaves one consistent state. Time comes
from the injected clock. Routing (`routing.py`), the event log (`events.py`) and what is
shown (`views.py`) are parts of this one owner, each in its own module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from hroute.config.model import Config
from hroute.core.clock import Clock
from hroute.core.cooldowns import make_room
from hroute.core.events import EventLog, EventSink
from hroute.core.health import AUTH_REASONS, Health, Policy, ProbeOutcome, Report, Transition
from hroute.core.health_values import policy_for
from hroute.core.identity import BackendIdentity, normalize_base_url
from hroute.core.routing import Router
from hroute.core.shared_record import Shared
from hroute.core.sharing import apply_record, shared_name
from hroute.core.tombstones import Tombstones
from hroute.core.verdict import Verdict
from hroute.core.views import backend_view, snapshot
from hroute.errors import UnknownBackendError


@dataclass
class Entry:
    """A configured backend name and the identity whose health it shares."""

    name: str
    identity: BackendIdentity
    health: Health
    model: str | None = None


class Registry:
    """Health of every configured backend; the router and the event log hang off it."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        *,
        events_kept: int = 1000,
        jitter: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.clock = clock
        self._jitter = jitter  # a value in [-1, 1] per new cooldown (the daemon's RNG)
        self.events = EventLog(clock, events_kept)
        self._listeners: list[Callable[[], None]] = []
        self._report_taps: list[Callable[[str, list[Transition]], None]] = []
        self._clear_taps: list[Callable[[str, Transition], None]] = []
        self._notes: dict[str, str] = {}
        self._process_views: dict[str, Callable[[], dict[str, Any]]] = {}
        self.version = 0  # bumped on every change; the snapshot publisher watches it
        self.config = config
        self._by_identity: dict[BackendIdentity, Health] = {}
        self._entries: dict[str, Entry] = {}
        self._by_url: dict[str, str] = {}
        self.tombstones = Tombstones()  # removed identities' health, for when they come back
        self.router = Router(self)
        self._index(config)

    # --- configuration --------------------------------------------------------------

    def _index(self, config: Config) -> None:
        health = {}
        entries = {}
        now = self.clock.now()
        for name, backend in config.backends.items():
            ident = backend.identity
            record = (
                health.get(ident)
                or self._by_identity.get(ident)
                or self.tombstones.revive(ident, now)
                or Health()
            )
            health[ident] = record
            entries[name] = Entry(name, ident, record, backend.model)
        for ident, record in self._by_identity.items():
            if ident not in health:
                self.tombstones.bury(ident, record, now)
        self._by_identity, self._entries = health, entries
        self._policies: dict[str, Policy] = {}
        # Indexes, so no per-request or per-change work grows with the fleet.
        self._by_url = {}
        self._at: dict[BackendIdentity, list[str]] = {}  # a server's names, in config order
        self._by_url_model: dict[tuple[str, str], str] = {}
        for name, entry in entries.items():
            self._by_url.setdefault(entry.identity.base_url, name)
            self._at.setdefault(entry.identity, []).append(name)
            if entry.model:
                self._by_url_model.setdefault((entry.identity.base_url, entry.model), name)
        self.config = config
        self.changed()

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
                if record is not None and record.block in AUTH_REASONS:
                    record.block = None
        self._notes = {n: v for n, v in self._notes.items() if n in config.backends}
        self._index(config)

    def records(self) -> dict[BackendIdentity, Health]:
        """Every health record by identity, removed ones still kept included (for saving)."""
        return self.tombstones.records() | self._by_identity

    def restore(self, records: dict[BackendIdentity, Health]) -> int:
        """Adopt saved records for the identities configured now (keeping the others as
        tombstones, for when they come back); return how many were adopted."""
        restored = 0
        now = self.clock.now()
        for ident, record in records.items():
            if ident in self._by_identity:
                self._by_identity[ident] = record
                restored += 1
            else:
                self.tombstones.bury(ident, record, now)
        for entry in self._entries.values():
            entry.health = self._by_identity[entry.identity]
        self.changed()
        return restored

    def set_note(self, name: str, note: str | None) -> None:
        """A plain-words remark shown with the backend (e.g. its key is not set)."""
        if note:
            self._notes[name] = note
        else:
            self._notes.pop(name, None)

    def note(self, name: str) -> str | None:
        return self._notes.get(name)

    def add_sink(self, sink: EventSink) -> None:
        """Call `sink(event)` for every event (log, journal, metrics)."""
        self.events.add_sink(sink)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change (the snapshot publisher wakes on it)."""
        self._listeners.append(listener)

    def add_report_tap(self, tap: Callable[[str, list[Transition]], None]) -> None:
        """Call `tap(name, changes)` after each client report that changed something (the
        cluster queues what to share; it must not block)."""
        self._report_taps.append(tap)

    def add_clear_tap(self, tap: Callable[[str, Transition], None]) -> None:
        """Call `tap(name, change)` for every hold ended before its time: a probe-confirmed
        recovery or a success report (`change.event == "cooldown_cleared"`, with its scope,
        model, credential, reason and `incident`; `seen_by` when another host told it)."""
        self._clear_taps.append(tap)

    def changed(self) -> None:
        """Something the answers depend on changed: tell of fallbacks, wake the listeners."""
        self.version += 1
        self.router.note_changes()
        for listener in self._listeners:
            listener()

    def policy(self, name: str) -> Policy:
        """The thresholds of `name` (computed once per configuration)."""
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = policy_for(self.config, name)
        return policy

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def identity(self, name: str) -> BackendIdentity:
        return self._entry(name).identity

    def health(self, name: str) -> Health:
        return self._entry(name).health

    def model(self, name: str) -> str | None:
        return self._entry(name).model

    def urls(self) -> dict[str, str]:
        """Normalised base URL → the first backend configured with it."""
        return dict(self._by_url)

    def url_models(self) -> dict[str, dict[str, str]]:
        """Normalised base URL → {model → the first backend configured with both}."""
        out: dict[str, dict[str, str]] = {}
        for (url, model), name in self._by_url_model.items():
            out.setdefault(url, {})[model] = name
        return out

    def models_at(self, name: str) -> tuple[str, ...]:
        """Every model configured on `name`'s server (what its probe checks)."""
        at = self._at[self.identity(name)]
        return tuple(sorted({m for n in at if (m := self._entries[n].model)}))

    def held_by(self, name: str, scope: str, model: str | None = None) -> list[str]:
        """The configured backends a cooldown of `scope` on `name`'s server holds."""
        at = self._at[self.identity(name)]
        if scope == "server" or not model:
            return list(at)
        return [n for n in at if self._entries[n].model == model]

    def resolve(
        self, *, backend: str | None = None, base_url: str | None = None, model: str | None = None
    ) -> str | None:
        """The configured name for a backend name or any spelling of its URL (the one with
        `model` there, when given and configured); None if unknown."""
        if backend is not None:
            return backend if backend in self._entries else None
        if base_url is not None:
            url = normalize_base_url(base_url)
            if model is not None and (url, model) in self._by_url_model:
                return self._by_url_model[(url, model)]
            return self._by_url.get(url)
        return None

    # --- updates ----------------------------------------------------------------------

    def record_probe(self, name: str, outcome: ProbeOutcome) -> None:
        health = self._entry(name).health
        before = health.mark()
        changes = health.on_probe(outcome, self.clock.now(), self.policy(name))
        self._publish(name, changes, visible=health.mark() != before)

    def record_report(self, name: str, report: Report) -> list[Transition]:
        """Apply a client's report. Without a model it counts for the model of `name`."""
        entry = self._entry(name)
        now = self.clock.now()
        policy = self.policy(name)
        ended = entry.health.expire(now, policy)
        if ended:
            self._publish(name, ended)
        if report.model is None and entry.model:
            report = dataclasses.replace(report, model=entry.model)
        make_room(entry.health, report, policy, now)
        before = entry.health.mark()
        changes = entry.health.on_report(report, now, policy, self._jitter())
        self._publish(name, changes, visible=entry.health.mark() != before)
        if changes:
            for tap in self._report_taps:
                tap(name, changes)
        return changes

    def apply_shared(self, shared: Shared, *, newer: bool = False) -> bool:
        """Take another host's record (`sharing.apply_record` says how); False if not ours."""
        if (name := shared_name(self, shared.identity)) is None:
            return False
        health = self._entries[name].health
        self._publish(name, apply_record(health, shared, self.clock.now(), newer=newer))
        return True

    def block(self, name: str, reason: str, detail: str = "") -> None:
        """Unusable at once, whatever its probes say, until `unblock` (a supervisor's verdict:
        its process exited, hangs, is fatal ...). Routes fall through in the same step."""
        self._publish(name, self._entry(name).health.block_for(reason, detail))

    def started(self, name: str, detail: str) -> None:
        """Its supervisor spawned the server: starting (unusable) until a probe says ready."""
        self._publish(name, self._entry(name).health.started(detail))

    def unblock(self, name: str, reasons: Collection[str] | None = None) -> None:
        """Lift a supervisor's block (only one of `reasons`, when given); the probes decide
        from here. hroute's own auth block stays."""
        if self._entry(name).health.unblock(reasons):
            self.changed()

    def set_process_view(self, name: str, view: Callable[[], dict[str, Any]] | None) -> None:
        """Show `view()` as the backend's `process` (its supervisor's state); None removes it."""
        if view is None:
            self._process_views.pop(name, None)
        else:
            self._process_views[name] = view

    def process_view(self, name: str) -> dict[str, Any] | None:
        view = self._process_views.get(name)
        return None if view is None else view()

    def expire(self) -> float | None:
        """Drop run-out cooldowns; return the next deadline to call again at."""
        now = self.clock.now()
        self.tombstones.expire(now)
        deadlines = []
        seen = set()
        for name, entry in self._entries.items():
            if entry.identity in seen:
                continue  # one record per server: tell its changes once
            seen.add(entry.identity)
            changes = entry.health.expire(now, self.policy(name))
            if changes:
                self._publish(name, changes)
            deadline = entry.health.next_deadline()
            if deadline is not None:
                deadlines.append(deadline)
        return min(deadlines, default=None)

    def _publish(self, name: str, changes: Iterable[Transition], *, visible: bool = True) -> None:
        """Tell each transition; then, if anything an answer depends on moved, `changed()`.
        A probe that confirms what was known changes nothing: no snapshot write, no work."""
        changes = list(changes)
        for change in changes:
            held = self.held_by(name, change.scope, change.model)
            fields = dataclasses.asdict(change)  # scope, model, old, new, reason, ...
            if change.cooldown_s is not None:
                fields["cooldown_s"] = round(change.cooldown_s, 3)
            self.emit(
                fields.pop("event"),
                backend=held[0] if held else name,
                server=self.config.backends[self._first_at(name)].kind,
                held=held,
                **fields,
            )
            if change.event == "cooldown_cleared":
                for tap in self._clear_taps:
                    tap(name, change)
        if changes or visible:
            self.changed()  # after the cause is told: a fallback it brings follows it

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record an event in the ring buffer and hand it to every sink (log, journal, metrics)."""
        return self.events.emit(event, **fields)

    # --- queries ----------------------------------------------------------------------

    def verdict(
        self, name: str, credential: str | None = None, model: str | None = None
    ) -> Verdict:
        """Usable now? Server, model (`name`'s, unless given) and key (when given) decide."""
        entry = self._entry(name)
        return entry.health.verdict(self.clock.now(), credential, model or entry.model)

    def usable(
        self, name: str, credential: str | None = None, model: str | None = None
    ) -> dict[str, Any]:
        entry = self._entry(name)
        verdict, scope = entry.health.scoped_verdict(
            self.clock.now(), credential, model or entry.model
        )
        return {
            "backend": name,
            "usable": verdict.usable,
            "state": str(entry.health.state),
            "reason": verdict.reason,
            "retry_after_s": verdict.retry_after_s,
            "scope": scope,
        }

    def route(self, profile: str, exclude: Iterable[str] = (), **kw: Any) -> dict[str, Any]:
        """`Router.route`: the first usable backend of a profile's chain."""
        return self.router.route(profile, exclude, **kw)

    def record_task_failure(
        self, task: str, reason: str, detail: str = "", task_type: str | None = None
    ) -> dict[str, Any]:
        return self.router.record_task_failure(task, reason, detail, task_type)

    def record_usage(self, name: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
        return self.router.record_usage(name, input_tokens, output_tokens)

    @property
    def tasks(self):  # the router's, kept here for the state file
        return self.router.tasks

    @property
    def spend(self):
        return self.router.spend

    def view(self, name: str) -> dict[str, Any]:
        self._entry(name)
        return backend_view(self, name)

    def views(self) -> list[dict[str, Any]]:
        return [backend_view(self, name) for name in self._entries]

    def events_since(self, since: int = 0) -> list[dict[str, Any]]:
        return self.events.since(since)

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self)

    def _first_at(self, name: str) -> str:
        return self._at[self.identity(name)][0]

    def _entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownBackendError(name, list(self._entries)) from None

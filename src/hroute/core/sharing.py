"""Cooldowns shared between hosts: what this host tells the cluster and what it takes back. Pure.

A host shares the cooldowns its agents' reports armed on **remote** backends (tier `cloud`),
at every scope, with the reason and its incident count; never a probe's verdict, a block
without a deadline, a detail (it may quote a request) or anything about a `local` backend
(each host has its own llama-server). The deadline travels as a *remaining time* (Redis'
TTL): monotonic clocks of two machines cannot be compared, and wall clocks drift.

**Versions and clears.** Each record carries the version of its incident and a state, held or
cleared. A new incident's version is a hybrid logical clock: the wall time in ms, or one past
the newest version this host knows for that scope, whichever is larger, so that an incident
that starts after another one ended (anywhere) outranks it. When evidence says the scope works
again (a success report with that key, a probe-confirmed recovery), the host tells a *cleared*
record of the same version, and every host ends that incident early. Records merge by the
order (version, cleared, deadline), largest wins: a max over a total order, so hosts converge
whatever the order messages arrive in and however often they are repeated; a stale or replayed
record of an older version (or a held one of a version already cleared) changes nothing. A
held record never shortens a cooldown held here; incident counts merge by max (one incident
seen by three hosts is one incident, not three escalations).

The record format and the rules for reading an untrusted one are `core/shared_record.py`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from hroute.core import evidence
from hroute.core.cooldowns import ANY_MODEL, MAX_SCOPES, Cooldown, Held, Scope
from hroute.core.health_values import Transition
from hroute.core.identity import BackendIdentity
from hroute.core.reasons import Reason, is_reason
from hroute.core.redact import KEY_SHAPED
from hroute.core.shared_record import MAX_EJECTIONS, MAX_REMAINING_S, MAX_VERSION, Shared

if TYPE_CHECKING:
    from hroute.core.health import Health
    from hroute.core.registry import Registry

# A deadline this close to the one held is the same one told twice (the TTL was read a few
# milliseconds after it was set): not worth an event.
SAME_DEADLINE_S = 0.5
# A cleared record outlives the hold it ends by this much, so that a held copy of the same
# incident still on its way (a host that was away re-pushing it) meets the clear, not nothing.
CLEARED_MARGIN_S = 30.0
MAX_SKEW_S = 3600.0  # how far another host's wall clock may run ahead of ours
MAX_KNOWN = 65_536  # scopes the ledger remembers (only those of backends configured here)


def shareable(registry: Registry, name: str) -> bool:
    """Whether cooldowns of `name`'s server are the fleet's: a remote backend (tier cloud)."""
    return registry.config.backends[name].tier_name == "cloud"


def from_the_future(shared: Shared, wall: float) -> bool:
    """A version far past this host's wall clock is no hybrid clock's: it would outrank every
    real incident of its scope for good, so it is refused (clocks may differ by MAX_SKEW_S)."""
    return shared.version > (wall + MAX_SKEW_S) * 1000


def shared_name(registry: Registry, identity: BackendIdentity) -> str | None:
    """The backend configured here whose cooldowns the fleet shares under `identity`."""
    name = next((n for n in registry.names if registry.identity(n) == identity), None)
    return name if name is not None and shareable(registry, name) else None


def from_changes(
    registry: Registry, name: str, changes: Iterable[Transition], host: str
) -> list[Shared]:
    """What of a local report's transitions the cluster should hear (new or longer cooldowns;
    their versions are the ledger's to give)."""
    if not shareable(registry, name):
        return []
    health = registry.health(name)
    ident = registry.identity(name)
    now = registry.clock.now()
    out = []
    for change in changes:
        if change.event != "cooldown" or change.cooldown_s is None or change.seen_by:
            continue
        scope = Scope(change.scope)
        model = change.model or ANY_MODEL  # a key's: its model, or every model
        record = _record(health, ident, scope, model, change.credential, now)
        if record is not None:
            out.append(replace(record, host=host))
    return out


def from_clear(registry: Registry, name: str, change: Transition, host: str) -> Shared | None:
    """The cleared record to tell for a hold this host ended early (a probe-confirmed recovery,
    a success report), or None: another host's clear told here, a local backend, a key-shaped
    credential. Its version and remaining time are the ledger's to give."""
    if change.event != "cooldown_cleared" or change.seen_by or not shareable(registry, name):
        return None
    scope, credential = Scope(change.scope), change.credential or ""
    if scope is Scope.KEY and (not credential or KEY_SHAPED.search(credential)):
        return None
    if scope is Scope.MODEL and not change.model:
        return None
    reason = Reason(change.reason) if is_reason(change.reason) else Reason.UNKNOWN
    return Shared(
        registry.identity(name), scope, reason, 0.0, host,
        min(MAX_EJECTIONS, max(1, change.incident or 1)),
        change.model or ANY_MODEL, credential, cleared=True,
    )  # fmt: skip


def held_records(registry: Registry, host: str) -> list[Shared]:
    """Every running cooldown with a deadline on a remote backend, this host's own (as `host`)
    and those other hosts told (as theirs): what a reconnect pushes, so that a Redis that lost
    its memory gets back every live record, even one whose origin host is down."""
    now = registry.clock.now()
    out: list[Shared] = []
    seen: set[BackendIdentity] = set()
    for name in registry.names:
        ident = registry.identity(name)
        if ident in seen or not shareable(registry, name):
            continue
        seen.add(ident)
        health = registry.health(name)
        scopes = [(Scope.SERVER, "", None)]
        scopes += [(Scope.MODEL, m, None) for m in health.models]
        scopes += [(Scope.KEY, m, c) for c, m in health.keys]
        for scope, model, credential in scopes:
            record = _record(health, ident, scope, model, credential, now)
            if record is not None:
                out.append(record if record.host else replace(record, host=host))
    return out


class Ledger:
    """The newest record this host knows of each shared scope, by `Shared.order` and then the
    deadline (kept as a monotonic time here). One owner: the cluster edge."""

    def __init__(self, limit: int = MAX_KNOWN) -> None:
        self._known: dict[str, tuple[Shared, float]] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._known)

    def known(self, key: str, now: float) -> tuple[Shared, float] | None:
        """The record known for `key` and its deadline here, unless it ran out."""
        entry = self._known.get(key)
        if entry is not None and entry[1] <= now:
            del self._known[key]
            return None
        return entry

    def take(self, shared: Shared, now: float) -> str:
        """Merge a record from the cluster; what it means here: "newer" (an incident newer
        than the one known: it replaces the hold, even a longer one), "longer" (a hold to
        extend, never to shorten: the scope's first record, or a later deadline of the known
        incident), "cleared" (end the hold), or "" (stale, replayed, told twice)."""
        if shared.remaining_s <= 0:
            return ""
        until = now + shared.remaining_s
        entry = self.known(shared.key, now)
        if entry is not None:
            old, old_until = entry
            if shared.order < old.order:
                return ""
            if shared.order == old.order:
                if until <= old_until:
                    return ""
                self._put(shared, until)
                news = not shared.cleared and until > old_until + SAME_DEADLINE_S
                return "longer" if news else ""
        self._put(shared, until)
        if shared.cleared:
            return "cleared"
        return "newer" if entry is not None else "longer"

    def local(self, shared: Shared, now: float, wall: float) -> Shared | None:
        """Version a cooldown this host's own report armed (or lengthened, or cleared) and
        note it; the record to publish, or None when there is nothing to tell."""
        entry = self.known(shared.key, now)
        running = entry is not None and not entry[0].cleared
        if shared.cleared:
            if entry is None:
                # A hold this ledger never saw (restored from disk before any connect): its
                # version is unknown; 0 loses to any versioned record of the scope.
                record = replace(shared, remaining_s=shared.remaining_s + CLEARED_MARGIN_S)
            elif not running:
                return None  # already cleared
            else:
                old, old_until = entry
                left = max(old_until - now, shared.remaining_s) + CLEARED_MARGIN_S
                record = replace(
                    shared, version=old.version, remaining_s=left, ejections=old.ejections
                )
        elif entry is not None and running:
            old, old_until = entry  # the same incident, lengthened (a later provider reset)
            left = max(old_until - now, shared.remaining_s)
            record = replace(shared, version=old.version, remaining_s=left)
        else:
            newest = entry[0].version + 1 if entry is not None else 0
            record = replace(shared, version=min(MAX_VERSION, max(int(wall * 1000), newest)))
        self._put(record, now + record.remaining_s)
        return record

    def seed(self, shared: Shared, now: float) -> None:
        """Note a hold found in the registry (restored from disk) that the ledger never saw,
        so that it is pushed too; a known scope keeps what is known."""
        if self.known(shared.key, now) is None and shared.remaining_s > 0:
            self._put(shared, now + shared.remaining_s)

    def live(self, now: float) -> list[tuple[Shared, float]]:
        """Every record not run out, with its deadline here (what a reconnect pushes)."""
        for key in [k for k, (_, until) in self._known.items() if until <= now]:
            del self._known[key]
        return list(self._known.values())

    def _put(self, shared: Shared, until: float) -> None:
        key = shared.key
        if key not in self._known and len(self._known) >= self._limit:
            del self._known[min(self._known, key=lambda k: self._known[k][1])]
        self._known[key] = (shared, until)


def apply_record(
    health: Health, shared: Shared, now: float, *, newer: bool = False
) -> list[Transition]:
    """A record from the cluster into `health`: a cleared one ends the scope's cooldown."""
    if shared.cleared:
        return apply_cleared(health, shared, now)
    return apply_shared(health, shared, now, newer=newer)


def apply_shared(
    health: Health, shared: Shared, now: float, *, newer: bool = False
) -> list[Transition]:
    """Take another host's cooldown into `health`: extend, never shorten (unless `newer`: a
    newer incident than the one held replaces its deadline); merge incident counts by max.
    Returns the transition to tell (with the host that saw it), if any."""
    held = _held(health, shared)
    if held is None:
        return []
    held.ejections = min(MAX_EJECTIONS, max(held.ejections, shared.ejections))
    until = now + min(shared.remaining_s, MAX_REMAINING_S)
    current = held.cooldown
    if (
        held.running(now)
        and current is not None
        and (
            current.until is None  # a hold until lifted is this host's own verdict
            or (current.until >= until - SAME_DEADLINE_S and not newer)
            or abs(current.until - until) < SAME_DEADLINE_S
        )
    ):
        return []  # what is held here already lasts as long
    held.cooldown = Cooldown(until, shared.reason, seen_by=shared.host)
    held.decay_anchor = until
    s = str(health.state)
    return [
        Transition(
            "cooldown", s, s, str(shared.reason), shared.remaining_s, scope=shared.scope,
            credential=shared.credential or None, model=shared.model or None,
            seen_by=shared.host,
        )
    ]  # fmt: skip


def apply_cleared(health: Health, shared: Shared, now: float) -> list[Transition]:
    """End the running cooldown of the scope another host cleared (a deadline's: a hold until
    lifted, such as a revoked key, is hroute's own verdict here). Returns what to tell."""
    held = _existing(health, shared)
    if held is None or held.cooldown is None or held.cooldown.until is None:
        return []
    ended = held.clear(now)
    if ended is None:
        return []
    change = evidence.cleared(
        health, held, ended, shared.scope, model=shared.model or None,
        credential=shared.credential or None,
    )  # fmt: skip
    return [dataclasses.replace(change, seen_by=shared.host)]


def _existing(health: Health, shared: Shared) -> Held | None:
    if shared.scope is Scope.SERVER:
        return health.server
    if shared.scope is Scope.MODEL:
        return health.models.get(shared.model)
    return health.keys.get((shared.credential, shared.model))


def _held(health: Health, shared: Shared) -> Held | None:
    """The scope a shared cooldown lands in (made when new, within MAX_SCOPES)."""
    if shared.scope is Scope.SERVER:
        return health.server
    if shared.scope is Scope.MODEL:
        if not shared.model:
            return None
        if shared.model not in health.models and len(health.models) >= MAX_SCOPES:
            return None
        return health.models.setdefault(shared.model, Held())
    key = (shared.credential, shared.model)
    if key not in health.keys and len(health.keys) >= MAX_SCOPES:
        return None
    return health.keys.setdefault(key, Held())


def _record(
    health: Health,
    ident: BackendIdentity,
    scope: Scope,
    model: str,
    credential: str | None,
    now: float,
) -> Shared | None:
    """The running cooldown of one scope, as a record with its original host ("" = here);
    None when nothing with a deadline runs, or the credential looks like a key itself."""
    if scope is Scope.SERVER:
        held: Held | None = health.server
    elif scope is Scope.MODEL:
        held = health.models.get(model)
    else:
        held = health.keys.get((credential or "", model))
        if not credential or KEY_SHAPED.search(credential):
            return None  # only fingerprints leave this host, never something key-shaped
    if held is None or held.cooldown is None or held.cooldown.until is None:
        return None
    left = held.cooldown.until - now
    if left <= 0:
        return None
    return Shared(
        ident, scope, held.cooldown.reason, min(left, MAX_REMAINING_S), held.cooldown.seen_by,
        min(MAX_EJECTIONS, max(1, held.ejections)), model, credential or "",
    )  # fmt: skip

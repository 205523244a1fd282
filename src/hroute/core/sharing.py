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

from collections.abc import Callable, Iterable
from dataclasses import replace

from hroute.core.cooldowns import SAME_DEADLINE_S
from hroute.core.directory import Directory
from hroute.core.health import Health
from hroute.core.health_values import Scope, Transition
from hroute.core.identity import BackendIdentity
from hroute.core.reasons import Reason, is_reason
from hroute.core.redact import KEY_SHAPED
from hroute.core.shared_record import MAX_INCIDENTS, MAX_REMAINING_S, MAX_VERSION, Shared
from hroute.core.verdict import ANY_MODEL

# A cleared record outlives the hold it ends by this much, so that a held copy of the same
# incident still on its way (a host that was away re-pushing it) meets the clear, not nothing.
CLEARED_MARGIN_S = 30.0
MAX_SKEW_S = 3600.0  # how far another host's wall clock may run ahead of ours
MAX_KNOWN = 65_536  # scopes the ledger remembers (only those of backends configured here)


def shareable(directory: Directory, name: str) -> bool:
    """Whether cooldowns of `name`'s server are the fleet's: a remote backend (tier cloud)."""
    return directory.config.backends[name].tier_name == "cloud"


def from_the_future(shared: Shared, wall: float) -> bool:
    """A version far past this host's wall clock is no hybrid clock's: it would outrank every
    real incident of its scope for good, so it is refused (clocks may differ by MAX_SKEW_S)."""
    return shared.version > (wall + MAX_SKEW_S) * 1000


def shared_name(directory: Directory, identity: BackendIdentity) -> str | None:
    """The backend configured here whose cooldowns the fleet shares under `identity`."""
    name = directory.first_at(identity)
    return name if name is not None and shareable(directory, name) else None


def from_changes(
    directory: Directory,
    health: Health,
    name: str,
    changes: Iterable[Transition],
    host: str,
    now: float,
) -> list[Shared]:
    """What of a local report's transitions (on `name`, whose record is `health`) the
    cluster should hear: new or longer cooldowns; their versions are the ledger's to give."""
    if not shareable(directory, name):
        return []
    ident = directory.identity(name)
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


def from_clear(directory: Directory, name: str, change: Transition, host: str) -> Shared | None:
    """The cleared record to tell for a hold this host ended early (a probe-confirmed recovery,
    a success report), or None: another host's clear told here, a local backend, a key-shaped
    credential. Its version and remaining time are the ledger's to give."""
    if change.event != "cooldown_cleared" or change.seen_by or not shareable(directory, name):
        return None
    scope, credential = Scope(change.scope), change.credential or ""
    if scope is Scope.KEY and (not credential or KEY_SHAPED.search(credential)):
        return None
    if scope is Scope.MODEL and not change.model:
        return None
    reason = Reason(change.reason) if is_reason(change.reason) else Reason.UNKNOWN
    return Shared(
        directory.identity(name), scope, reason, 0.0, host,
        min(MAX_INCIDENTS, max(1, change.incident or 1)),
        change.model or ANY_MODEL, credential, cleared=True,
    )  # fmt: skip


def held_records(
    directory: Directory, health_of: Callable[[str], Health], host: str, now: float
) -> list[Shared]:
    """Every running cooldown with a deadline on a remote backend, this host's own (as `host`)
    and those other hosts told (as theirs): what a reconnect pushes, so that a Redis that lost
    its memory gets back every live record, even one whose origin host is down."""
    out: list[Shared] = []
    for ident in directory.identities():
        name = directory.first_at(ident)
        if name is None or not shareable(directory, name):
            continue
        health = health_of(name)
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
                    shared, version=old.version, remaining_s=left, incidents=old.incidents
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
    if scope is Scope.KEY and (not credential or KEY_SHAPED.search(credential)):
        return None  # only fingerprints leave this host, never something key-shaped
    held = health.held_at(scope, model, credential or "")
    if held is None or held.cooldown is None or held.cooldown.until is None:
        return None
    left = held.cooldown.until - now
    if left <= 0:
        return None
    return Shared(
        ident, scope, held.cooldown.reason, min(left, MAX_REMAINING_S), held.cooldown.seen_by,
        min(MAX_INCIDENTS, max(1, held.incidents)), model, credential or "",
    )  # fmt: skip

"""Cooldowns shared between hosts: what this host tells the cluster and what it takes back. Pure.

A host shares the cooldowns its agents' reports armed on **remote** backends (tier `cloud`),
at every scope, with the reason and its incident count; never a probe's verdict, a block
without a deadline, a detail (it may quote a request) or anything about a `local` backend
(each host has its own llama-server). The deadline travels as a *remaining time* (Redis'
TTL): monotonic clocks of two machines cannot be compared, and wall clocks drift.

Taking one back is like a report, with two rules so that hosts converge whatever the order
messages arrive in: a later deadline always wins (a shared cooldown never shortens one held
here), and incident counts merge by max (one incident seen by three hosts is one incident,
not three escalations).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hroute.core.cooldowns import ANY_MODEL, MAX_SCOPES, Cooldown, Held, Scope
from hroute.core.health_values import Transition
from hroute.core.identity import BackendIdentity
from hroute.core.reasons import Reason
from hroute.core.redact import KEY_SHAPED

if TYPE_CHECKING:
    from hroute.core.health import Health
    from hroute.core.registry import Registry

FORMAT = 1
# A deadline this close to the one held is the same one told twice (the TTL was read a few
# milliseconds after it was set): not worth an event.
SAME_DEADLINE_S = 0.5


@dataclass(frozen=True)
class Shared:
    """One scope's cooldown as the cluster carries it."""

    identity: BackendIdentity
    scope: Scope
    reason: Reason
    remaining_s: float
    host: str
    ejections: int = 1
    model: str = ""  # the model scope's model, or a key scope's ("" = every model)
    credential: str = ""  # a key scope's fingerprint

    @property
    def key(self) -> str:
        """Its name in Redis under the prefix: one per scope, whoever saw it."""
        ident = self.identity
        parts = [ident.api_mode, ident.base_url, ident.model_family or "", str(self.scope)]
        digest = hashlib.sha256("\0".join([*parts, self.model, self.credential]).encode())
        return "cd:" + digest.hexdigest()[:32]

    def encode(self) -> str:
        """The value stored under `key` (the deadline is the key's TTL, not in here)."""
        ident = self.identity
        return json.dumps(
            {
                "v": FORMAT,
                "server": [ident.api_mode, ident.base_url, ident.model_family],
                "scope": str(self.scope),
                "model": self.model,
                "credential": self.credential,
                "reason": str(self.reason),
                "n": self.ejections,
                "host": self.host,
            },
            separators=(",", ":"),
        )


def decode(raw: str | bytes, remaining_ms: int) -> Shared:
    """A stored value and its TTL back into a `Shared`; ValueError for anything else (another
    program's key, a newer format, a key without a TTL)."""
    if remaining_ms <= 0:
        raise ValueError(f"no remaining time (TTL {remaining_ms} ms)")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != FORMAT:
            raise ValueError(f"not a format-{FORMAT} hroute record")
        api_mode, base_url, family = data["server"]
        out = Shared(
            identity=BackendIdentity(str(api_mode), str(base_url), family and str(family)),
            scope=Scope(data["scope"]),
            reason=Reason(data["reason"]),
            remaining_s=remaining_ms / 1000,
            host=str(data["host"]),
            ejections=max(1, int(data["n"])),
            model=str(data.get("model") or ""),
            credential=str(data.get("credential") or ""),
        )
    except (KeyError, TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"unreadable: {exc}") from None
    if (out.scope is Scope.KEY) != bool(out.credential):
        raise ValueError("a key scope needs a credential, and only a key scope has one")
    return out


def shareable(registry: Registry, name: str) -> bool:
    """Whether cooldowns of `name`'s server are the fleet's: a remote backend (tier cloud)."""
    return registry.config.backends[name].tier_name == "cloud"


def from_changes(
    registry: Registry, name: str, changes: Iterable[Transition], host: str
) -> list[Shared]:
    """What of a local report's transitions the cluster should hear."""
    if not shareable(registry, name):
        return []
    health = registry.health(name)
    now = registry.clock.now()
    out = []
    for change in changes:
        if change.event != "cooldown" or change.cooldown_s is None or change.seen_by:
            continue
        scope = Scope(change.scope)
        model = change.model or ANY_MODEL  # a key's: its model, or every model
        record = _record(health, registry.identity(name), scope, model, change.credential, now)
        if record is not None:
            out.append(_as(record, host))
    return out


def local_records(registry: Registry, host: str) -> list[Shared]:
    """Every running cooldown this host's own reports armed on a remote backend (what a
    reconnect pushes, so that hosts converge on what happened while Redis was away)."""
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
            if record is not None and not record.host:
                out.append(_as(record, host))
    return out


def apply_shared(health: Health, shared: Shared, now: float) -> list[Transition]:
    """Take another host's cooldown into `health`: extend, never shorten; merge incident
    counts by max. Returns the transition to tell (with the host that saw it), if any."""
    held = _held(health, shared)
    if held is None:
        return []
    held.ejections = max(held.ejections, shared.ejections)
    until = now + shared.remaining_s
    current = held.cooldown
    if (
        held.running(now)
        and current is not None
        and (current.until is None or current.until >= until - SAME_DEADLINE_S)
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
        ident, scope, held.cooldown.reason, left, held.cooldown.seen_by,
        max(1, held.ejections), model, credential or "",
    )  # fmt: skip


def _as(record: Shared, host: str) -> Shared:
    return Shared(
        record.identity, record.scope, record.reason, record.remaining_s, host,
        record.ejections, record.model, record.credential,
    )  # fmt: skip

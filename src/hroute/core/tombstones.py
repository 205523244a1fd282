"""Health of identities a reload removed, kept so that the next save gets it back. Pure.

An editor's truncate-then-write, a file cut short, a backend commented out for a minute:
each is a configuration without some backend, and then one with it again. Forgetting the
removed backend's health would lift a 600 s rate-limit cooldown on the next save. So a
removed identity's record is kept (a tombstone) for at least as long as its longest
cooldown, and at least TOMBSTONE_MIN_S; an identity that comes back gets it back.
"""

from __future__ import annotations

from hroute.core.health import Health
from hroute.core.identity import BackendIdentity

TOMBSTONE_MIN_S = 600.0
TOMBSTONE_MAX_S = 86_400.0  # "until the key changes" is kept a day, not forever
MAX_TOMBSTONES = 256  # config churn cannot grow this without bound


def keep_for(record: Health, now: float) -> float:
    """How long a removed record must be kept: its longest cooldown, within the bounds."""
    longest = 0.0
    held = [record.server, *record.models.values(), *record.keys.values()]
    cooldowns = [h.cooldown for h in held if h.cooldown is not None]
    for cooldown in cooldowns:
        left = TOMBSTONE_MAX_S if cooldown.until is None else cooldown.until - now
        longest = max(longest, left)
    if record.block is not None:
        longest = TOMBSTONE_MAX_S
    return min(TOMBSTONE_MAX_S, max(TOMBSTONE_MIN_S, longest))


class Tombstones:
    """Removed identities' health records and until when they are kept."""

    def __init__(self) -> None:
        self._kept: dict[BackendIdentity, tuple[Health, float]] = {}

    def bury(self, ident: BackendIdentity, record: Health, now: float) -> None:
        """Keep `record` of an identity that is no longer configured."""
        self._kept.pop(ident, None)
        if len(self._kept) >= MAX_TOMBSTONES:
            oldest = min(self._kept, key=lambda i: self._kept[i][1])
            del self._kept[oldest]
        self._kept[ident] = (record, now + keep_for(record, now))

    def revive(self, ident: BackendIdentity, now: float) -> Health | None:
        """The kept record of an identity configured again, or None."""
        kept = self._kept.pop(ident, None)
        if kept is None or kept[1] <= now:
            return None
        record = kept[0]
        record.expire(now)
        return record

    def expire(self, now: float) -> None:
        for ident in [i for i, (_, until) in self._kept.items() if until <= now]:
            del self._kept[ident]

    def records(self) -> dict[BackendIdentity, Health]:
        """Every kept record (saved with the live ones, so a restart keeps them too)."""
        return {ident: record for ident, (record, _) in self._kept.items()}

    def __len__(self) -> int:
        return len(self._kept)

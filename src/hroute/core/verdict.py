"""The one definition of "may this backend be used now?".

The daemon asks it of a live health record and the client asks it of the snapshot file;
both hand it the same few values, so the two answers cannot drift apart. Standard library
only: the client imports it inside agents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

INF = float("inf")


class Verdict(NamedTuple):
    usable: bool
    reason: str | None
    retry_after_s: float | None  # None: unknown or never (a block), or usable


def decide(
    now: float,
    *,
    block: str | None,
    until: float | None,
    until_reason: str | None,
    credentials: Mapping[str, Sequence[Any]],
    credential: str | None = None,
) -> Verdict:
    """Unknown counts as usable: hroute fails open.

    `block` is what makes the backend unusable whatever the time (a probe's verdict, a
    supervisor's, hroute's own auth block); `until` is the end of its cooldown (monotonic);
    `credentials` maps a key fingerprint to (until or None for "until the key changes",
    reason).
    """
    if block:
        return Verdict(False, block, None)
    if until is not None and until > now:
        return Verdict(False, until_reason, _left(until, now))
    if credential is not None:
        cred = credentials.get(credential)
        if cred is not None and (cred[0] is None or cred[0] > now):
            return Verdict(False, cred[1], None if cred[0] is None else _left(cred[0], now))
    return Verdict(True, None, None)


def _left(until: float, now: float) -> float | None:
    return None if until == INF else round(until - now, 3)

"""The one definition of "may this backend be used now?".

The daemon asks it of a live health record and the client asks it of the snapshot file;
both hand it the same few values, so the two answers cannot drift apart. Standard library
only: the client imports it inside agents.

Three scopes can hold a backend, checked in this order: its server (a block, a cooldown),
its model on that server, and the caller's key (for every model, or for this model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

INF = float("inf")
ANY_MODEL = ""  # the model part of a key cooldown that holds the key for every model
_NONE: Mapping[str, Any] = {}


class Verdict(NamedTuple):
    usable: bool
    reason: str | None
    retry_after_s: float | None  # None: unknown or never (a block), or usable


USABLE = Verdict(True, None, None)


def decide(now: float, **question: Any) -> Verdict:
    """Unknown counts as usable: hroute fails open. `decide_scoped` without the scope."""
    return decide_scoped(now, **question)[0]


def decide_scoped(
    now: float,
    *,
    block: str | None,
    until: float | None,
    until_reason: str | None,
    credentials: Mapping[str, Mapping[str, Sequence[Any]]],
    credential: str | None = None,
    models: Mapping[str, Sequence[Any]] = _NONE,
    model: str | None = None,
) -> tuple[Verdict, str | None]:
    """The verdict and the scope that holds the backend (server, model, key, or None).

    `block` is what makes the server unusable whatever the time (a probe's verdict, a
    supervisor's, hroute's own auth block); `until` is the end of the server's cooldown
    (monotonic, INF for "until lifted"); `models` maps a model to (until or None for "until
    lifted", reason); `credentials` maps a key fingerprint to {model or "": (until, reason)}.
    """
    if block:
        return Verdict(False, block, None), "server"
    if until is not None and until > now:
        return Verdict(False, until_reason, _left(until, now)), "server"
    if model is not None and models:
        held = models.get(model)
        if held is not None and (held[0] is None or held[0] > now):
            return Verdict(False, held[1], _left(held[0], now)), "model"
    if credential is not None and credentials:
        by_model = credentials.get(credential)
        if by_model:
            for part in (ANY_MODEL, model):
                held = by_model.get(part) if part is not None else None
                if held is not None and (held[0] is None or held[0] > now):
                    return Verdict(False, held[1], _left(held[0], now)), "key"
    return USABLE, None


def _left(until: float | None, now: float) -> float | None:
    return None if until is None or until == INF else round(until - now, 3)

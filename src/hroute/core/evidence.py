"""What ends a hold before its time: evidence that the failure is over. Pure.

A cooldown hroute *inferred* (a 5xx, a timeout, a refused connection, an overload without a
reset time ...) is a guess at how long an outage lasts. Probes that saw the failure and then
see the backend answer `rise` times in a row know better, so the hold ends then, at its
scope: a server probe lifts a server hold, a listing that shows the model lifts the model's
(Envoy un-ejects a host when an active health check succeeds). Probes that never saw the
failure prove nothing: a 500 that only generation meets would otherwise send agents back
every interval. A hold the *provider* timed (Retry-After and its kin), and a quota an agent
met (rate limit, billing: a listing answering says nothing of a chat quota), run to their
time, unless the probe itself met the limit and now succeeds. The incident count is kept
and decays from the end the hold would have had, so a flapping server still grows its hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hroute.core.cooldowns import Cooldown, Held, provider_hint
from hroute.core.health_values import ProbeOutcome, Scope, Transition
from hroute.core.reasons import Reason

# The reasons whose hold hroute infers (no provider time): the probes can watch them end.
INFERRED = frozenset(
    {
        Reason.CONNECTION,
        Reason.TIMEOUT,
        Reason.SERVER_ERROR,
        Reason.INVALID_RESPONSE,
        Reason.OVERLOADED,
        Reason.MODEL_NOT_FOUND,
    }
)


def inferred(reason: Reason, retry_after_s: float | None) -> bool:
    """Whether a report's hold is hroute's inference: an inferred reason with no usable
    provider time (a zero, past or absurd reset is none)."""
    return reason in INFERRED and provider_hint(retry_after_s) is None


def saw_down(holds: Iterable[Held], now: float) -> None:
    """A probe saw the server fail: the running inferred `holds` (the server's and its
    models', unreachable with it) may now be lifted by the probes' success."""
    for held in holds:
        held.saw_down(now)


def lift(
    server: Held, models: Mapping[str, Held], outcome: ProbeOutcome, now: float, state: str
) -> list[Transition]:
    """After `rise` successful probes in a row: end the inferred holds the probes saw fail,
    the server's and those of the models the listing showed."""
    out = []
    if (ended := _lift(server, now)) is not None:
        out.append(cleared(state, server, ended, Scope.SERVER))
    for m in outcome.checked:
        held = models.get(m)
        if m not in outcome.missing and held is not None and (ended := _lift(held, now)):
            out.append(cleared(state, held, ended, Scope.MODEL, model=m))
    return out


def _lift(held: Held, now: float) -> Cooldown | None:
    c = held.cooldown
    if c is None or not (c.inferred and c.seen_down) or not held.running(now):
        return None
    return held.clear(now)


def cleared(
    state: str,
    held: Held,
    ended: Cooldown,
    scope: Scope,
    *,
    model: str | None = None,
    credential: str | None = None,
) -> Transition:
    """The value that tells a hold ended early: `cooldown_cleared` at `scope`, with the
    incident it ended (the scope's incident count), for the log and for other hosts."""
    return Transition(
        "cooldown_cleared", state, state, str(ended.reason), scope=scope, model=model or None,
        credential=credential, incident=max(1, held.incidents),
    )  # fmt: skip

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

from typing import TYPE_CHECKING

from hroute.core.cooldowns import Cooldown, Held, Scope, provider_hint
from hroute.core.health_values import Policy, ProbeOutcome, Transition
from hroute.core.reasons import Reason

if TYPE_CHECKING:
    from hroute.core.health import Health

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


def saw_down(health: Health, now: float, models: tuple[str, ...] | None = None) -> None:
    """A probe saw the server fail (or, with `models`, those models missing): the running
    inferred holds it concerns may now be lifted by the probes' success."""
    helds = [health.models[m] for m in models if m in health.models] if models is not None else [
        health.server, *health.models.values()
    ]  # fmt: skip
    for held in helds:
        if held.running(now) and held.cooldown is not None and held.cooldown.inferred:
            held.cooldown.seen_down = True


def lift(health: Health, outcome: ProbeOutcome, now: float, policy: Policy) -> list[Transition]:
    """After a successful probe: end the inferred holds the probes saw fail, once `rise`
    probes in a row succeeded — the server's, and those of the models the listing showed."""
    if health.consecutive_successes < policy.rise:
        return []
    out = []
    if (ended := _lift(health.server, now)) is not None:
        out.append(cleared(health, health.server, ended, Scope.SERVER))
    for m in outcome.checked:
        held = health.models.get(m)
        if m not in outcome.missing and held is not None and (ended := _lift(held, now)):
            out.append(cleared(health, held, ended, Scope.MODEL, model=m))
    return out


def _lift(held: Held, now: float) -> Cooldown | None:
    c = held.cooldown
    if c is None or not (c.inferred and c.seen_down) or not held.running(now):
        return None
    return held.clear(now)


def cleared(
    health: Health,
    held: Held,
    ended: Cooldown,
    scope: Scope,
    *,
    model: str | None = None,
    credential: str | None = None,
) -> Transition:
    """The value that tells a hold ended early: `cooldown_cleared` at `scope`, with the
    incident it ended (the scope's incident count), for the log and for other hosts."""
    s = str(health.state)
    return Transition(
        "cooldown_cleared", s, s, str(ended.reason), scope=scope, model=model or None,
        credential=credential, incident=max(1, held.ejections),
    )  # fmt: skip

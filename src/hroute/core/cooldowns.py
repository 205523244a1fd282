"""Scoped cooldowns: what a failure holds (a server, a model, a key) and for how long. Pure.

A failure is told about many times — twenty agents see the same 503 within a second — but
it is one incident. Like Envoy, which counts ejections rather than failed requests, a scope's
cooldown grows once per incident: a report that arrives while a cooldown of the same scope
runs neither grows nor shortens it; only a provider's later reset time extends it. The n-th
cooldown is the n-th failure after the previous cooldown ran out, and n decays by one per
`base_s` after a cooldown ends. Jitter (a value in [-1, 1] handed in: nothing here draws
random numbers) spreads the ends so that many agents and hosts do not return in one second.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hroute.core.health_values import Policy
from hroute.core.reasons import Reason
from hroute.core.verdict import ANY_MODEL

# A provider's reset longer than a day is not a reset time but a broken header (or a hostile
# one); with a zero or past one, it is no hint at all: see `provider_hint`.
MAX_HINT_S = 86400.0
# A deadline this close to the one held is the same one told twice (another host's TTL was
# read a few milliseconds after it was set): not worth an event.
SAME_DEADLINE_S = 0.5
# Models and keys come from reports: a server remembers at most this many of each, so a
# client that invents names cannot grow the registry without bound.
MAX_SCOPES = 256


def provider_hint(retry_after_s: float | None) -> float | None:
    """A provider's reset as a cooldown length, or None when it is no usable hint.

    Zero, past (negative) and absurd (beyond MAX_HINT_S, or not finite) resets are no hint:
    providers answer `Retry-After: 0` and resets equal to now routinely, and a cooldown that
    ends at once pokes the prober, whose probe gets the same 429 — a loop at hundreds of
    probes a second. Without a hint the normal growing cooldown applies.
    """
    if retry_after_s is None or not 0.0 < retry_after_s <= MAX_HINT_S:
        return None
    return retry_after_s


@dataclass
class Cooldown:
    until: float | None  # None: until lifted (a new key, a probe that finds the model)
    reason: Reason
    detail: str = ""
    seen_by: str = ""  # the host that saw it, when another host did (cluster sharing)
    # hroute inferred it (no provider time): probes that saw the failure (`seen_down`) and
    # then succeed lift it early (evidence.py).
    inferred: bool = False
    seen_down: bool = False


@dataclass
class Held:
    """One scope's cooldown and how many incidents it has had (Envoy's ejection count;
    `n` in a shared record, `ejections` in the state file)."""

    cooldown: Cooldown | None = None
    incidents: int = 0
    decay_anchor: float = 0.0  # when the last cooldown ended (or will end)

    def running(self, now: float) -> bool:
        c = self.cooldown
        return c is not None and (c.until is None or c.until > now)

    def remaining(self, now: float) -> float:
        if not self.running(now):
            return 0.0
        assert self.cooldown is not None
        return float("inf") if self.cooldown.until is None else self.cooldown.until - now

    def arm(
        self,
        reason: Reason,
        now: float,
        policy: Policy,
        *,
        retry_after_s: float | None = None,
        fixed_s: float | None = None,
        jitter: float = 0.0,
        down: bool = False,
        detail: str = "",
        inferred: bool = False,
        seen_down: bool = False,
    ) -> float | None:
        """Start this scope's cooldown for a new incident; return its length, or None when a
        running one is kept as it is (same incident) or extended by a later provider reset
        (then the new length).

        `down`: the probes hold the server unhealthy, so the outage has not ended; a failure
        told now re-arms the current step rather than a higher one.
        """
        current = self.cooldown
        running = self.running(now)
        retry_after_s = provider_hint(retry_after_s)
        if retry_after_s is not None:
            # The provider said when, and Retry-After passes it on: kept exactly.
            until = now + retry_after_s
            if running and (current is None or current.until is None or current.until >= until):
                return None
            self.cooldown = Cooldown(until, reason, detail, "", inferred, seen_down)
            self.decay_anchor = until
            return until - now
        if running:
            return None  # one incident, however many report it
        if fixed_s is not None:
            duration = fixed_s
        else:
            duration = self._grown(now, policy, down) * (1 + policy.jitter * jitter)
        self.cooldown = Cooldown(now + duration, reason, detail, "", inferred, seen_down)
        self.decay_anchor = now + duration
        return duration

    def hold(self, reason: Reason, detail: str = "") -> bool:
        """Hold until lifted (no deadline); True if that is new."""
        c = self.cooldown
        if c is not None and c.until is None and c.reason is reason and c.detail == detail:
            return False
        self.cooldown = Cooldown(None, reason, detail)
        return True

    def lift(self, reason: Reason) -> bool:
        """End a hold of `reason` (a deadline runs out by itself); True if one ended."""
        c = self.cooldown
        if c is None or c.until is not None or c.reason is not reason:
            return False
        self.cooldown = None
        return True

    def merge(
        self, until: float, reason: Reason, host: str, incidents: int, now: float, *, newer: bool
    ) -> bool:
        """Take another host's cooldown of this scope (shared through the cluster): extend,
        never shorten (unless `newer`: a newer incident than the one held replaces its
        deadline); incident counts merge by max (one incident seen by three hosts is one).
        True if the hold changed (a deadline within SAME_DEADLINE_S is the same one)."""
        self.incidents = max(self.incidents, incidents)
        current = self.cooldown
        if (
            self.running(now)
            and current is not None
            and (
                current.until is None  # a hold until lifted is this host's own verdict
                or (current.until >= until - SAME_DEADLINE_S and not newer)
                or abs(current.until - until) < SAME_DEADLINE_S
            )
        ):
            return False  # what is held here already lasts as long
        self.cooldown = Cooldown(until, reason, seen_by=host)
        self.decay_anchor = until
        return True

    def saw_down(self, now: float) -> None:
        """A probe saw the failure behind this running inferred hold: the probes' later
        success may lift it (evidence.py)."""
        if self.running(now) and self.cooldown is not None and self.cooldown.inferred:
            self.cooldown.seen_down = True

    def clear(self, now: float) -> Cooldown | None:
        """End the running cooldown now, before its time (evidence says the failure is over;
        another host cleared it); return it. The incident count stays and decays from the
        end the cooldown had, as if it had run: a server that flaps still grows its hold."""
        c = self.cooldown
        if c is None or not self.running(now):
            return None
        self.cooldown = None
        return c

    def expire(self, now: float) -> Cooldown | None:
        """Drop the cooldown if it ran out; return it then."""
        c = self.cooldown
        if c is None or c.until is None or c.until > now:
            return None
        self.cooldown = None
        self.decay_anchor = c.until
        return c

    def forgotten(self, now: float, base_s: float) -> bool:
        """No cooldown, and long enough since the last one that n has decayed to zero."""
        return self.cooldown is None and now - self.decay_anchor >= base_s * max(1, self.incidents)

    def _grown(self, now: float, policy: Policy, down: bool) -> float:
        """Envoy: base x n for the n-th incident; n drops by one per base_s after a cooldown."""
        if self.incidents and not down:
            decay = int(max(0.0, now - self.decay_anchor) // policy.base_s)
            if decay:
                self.incidents = max(0, self.incidents - decay)
                self.decay_anchor += decay * policy.base_s
        if not (down and self.incidents):
            self.incidents += 1
        return min(policy.base_s * self.incidents, policy.max_s)


def scope_maps(
    models: Mapping[str, Held],
    keys: Mapping[tuple[str, str], Held],
    credential: str | None = None,
    model: str | None = None,
    *,
    every: bool | None = None,
) -> tuple[dict[str, list[Any]], dict[str, dict[str, list[Any]]]]:
    """Model and key cooldowns as `verdict.decide` and the snapshot take them: every running
    one (no question given), or only those one question concerns (`credential`, `model`)."""
    every = (credential is None and model is None) if every is None else every
    out_models: dict[str, list[Any]] = {}
    out_keys: dict[str, dict[str, list[Any]]] = {}
    if every:
        wanted_models: list[Any] = list(models)
        wanted_keys: list[Any] = list(keys)
    else:
        wanted_models = [model] if model is not None else []
        parts = {ANY_MODEL, model or ANY_MODEL}
        wanted_keys = [(credential, part) for part in parts] if credential is not None else []
    for m in wanted_models:
        held = models.get(m)
        if held is not None and held.cooldown is not None:
            out_models[m] = [held.cooldown.until, str(held.cooldown.reason)]
    for k in wanted_keys:
        held = keys.get(k)
        if held is not None and held.cooldown is not None:
            out_keys.setdefault(k[0], {})[k[1]] = [held.cooldown.until, str(held.cooldown.reason)]
    return out_models, out_keys

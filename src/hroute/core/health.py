"""Health and cooldown of one backend: a pure state machine over an injected time.

Active probes move the state (rise/fall). Passive reports and rate-limit answers arm
cooldowns that escalate like Envoy's outlier ejection (base x n, capped, decaying while
healthy). Nothing here reads a clock, sleeps or does I/O; every call takes `now`, a
monotonic timestamp in seconds.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from hroute.core.reasons import CREDENTIAL_SCOPED, HEALTH_NEUTRAL, SEVERE, Reason
from hroute.core.verdict import INF, Verdict, decide

AUTH_REASONS = (Reason.AUTH, Reason.AUTH_PERMANENT)
# Credentials cooled per backend: a burst of distinct fingerprints cannot grow the record,
# the snapshot and the cost of every report without bound. Past it, the cooldown ending
# soonest makes room (its key is usable a little early: hroute fails open).
MAX_CREDENTIALS = 64


class State(StrEnum):
    UNKNOWN = "unknown"
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Policy:
    """Thresholds of one backend (from its probe and cooldown settings)."""

    fall: int = 3
    rise: int = 1
    base_s: float = 30.0
    max_s: float = 900.0
    # Seed 000's fallback rules: reports of a reason in a row before the backend is left.
    switch_after: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeOutcome:
    """What one active probe saw. `reason` is None on success."""

    reason: Reason | None = None
    starting: bool = False
    retry_after_s: float | None = None
    detail: str = ""
    latency_ms: float | None = None


@dataclass(frozen=True)
class Report:
    """A failure or success a client saw while using the backend."""

    success: bool
    reason: Reason | None = None
    retry_after_s: float | None = None
    credential: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Transition:
    """Something an operator should hear about: a state change or a cooldown."""

    event: str  # backend_up | backend_down | starting | cooldown | cooldown_end | auth_blocked
    old: str
    new: str
    reason: str | None
    cooldown_s: float | None = None
    credential: str | None = None
    detail: str = ""


@dataclass
class Cooldown:
    until: float | None  # None: until the key or the config changes
    reason: Reason


@dataclass
class Health:
    """The mutable health record of one backend identity; owned by the registry."""

    state: State = State.UNKNOWN
    reason: str | None = None
    detail: str = ""
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    ejections: int = 0  # n of the n-th consecutive cooldown (Envoy's multiplier)
    decay_anchor: float = 0.0
    cooldown: Cooldown | None = None
    credentials: dict[str, Cooldown] = field(default_factory=dict)
    # What holds the backend unusable whatever its probes say, until lifted: hroute's own
    # auth verdict (until the key or config changes) or a supervisor's (exited, hang, fatal ...).
    block: str | None = None
    last_probe_at: float | None = None
    latency_ms: float | None = None
    streak: tuple[str, int] = ("", 0)  # the reason reported last and how often in a row

    # --- queries ------------------------------------------------------------------

    def cooldown_remaining(self, now: float) -> float:
        if self.cooldown is None:
            return 0.0
        if self.cooldown.until is None:
            return float("inf")
        return max(0.0, self.cooldown.until - now)

    def blocker(self) -> str | None:
        """What makes the backend unusable whatever the time, or None."""
        if self.block:
            return self.block
        if self.state is State.UNHEALTHY:
            return self.reason or "unhealthy"
        if self.state is State.STARTING:
            return "starting"
        return None

    def verdict(self, now: float, credential: str | None = None) -> Verdict:
        """(usable, reason, retry_after_s): `verdict.decide`, the one definition."""
        cooldown = self.cooldown
        return decide(
            now,
            block=self.blocker(),
            until=None if cooldown is None else (INF if cooldown.until is None else cooldown.until),
            until_reason=None if cooldown is None else str(cooldown.reason),
            credentials={fp: (c.until, str(c.reason)) for fp, c in self.credentials.items()}
            if credential is not None and credential in self.credentials
            else {},
            credential=credential,
        )

    # --- updates ------------------------------------------------------------------

    def on_probe(self, outcome: ProbeOutcome, now: float, policy: Policy) -> list[Transition]:
        """Apply one active probe; return what changed."""
        self.last_probe_at = now
        self.latency_ms = outcome.latency_ms
        out: list[Transition] = []
        if outcome.reason is None and outcome.starting:
            self.consecutive_successes = 0
            if self.state is not State.STARTING:
                out.append(self._move(State.STARTING, "starting", "starting", outcome.detail))
            return out
        if outcome.reason is None:
            self.consecutive_failures = 0
            self.consecutive_successes += 1
            if self.block in AUTH_REASONS:
                # Only our own probe, made with the configured key, can clear an auth block.
                self.block = None
            if self.state is not State.HEALTHY and (
                self.consecutive_successes >= policy.rise
                or self.state in (State.UNKNOWN, State.STARTING)
            ):
                out.append(self._move(State.HEALTHY, "backend_up", None, outcome.detail))
            return out
        reason = outcome.reason
        if reason in HEALTH_NEUTRAL:
            return out
        self.consecutive_successes = 0
        if reason in AUTH_REASONS:
            if self.block != reason:
                self.block = reason
                out.append(
                    Transition(
                        "auth_blocked",
                        str(self.state),
                        str(self.state),
                        reason,
                        detail=outcome.detail,
                    )
                )
            return out
        if reason in (Reason.RATE_LIMIT, Reason.UPSTREAM_RATE_LIMIT, Reason.BILLING):
            # The server answered: it is up, but says wait. That is a cooldown, not a state.
            out += self._arm(reason, outcome.retry_after_s, now, policy, outcome.detail)
            return out
        self.consecutive_failures += 1
        if self.state is not State.UNHEALTHY and (
            self.consecutive_failures >= policy.fall or self.state is State.UNKNOWN
        ):
            out.append(self._move(State.UNHEALTHY, "backend_down", reason, outcome.detail))
        elif self.state is State.UNHEALTHY:
            self.reason, self.detail = str(reason), outcome.detail
        return out

    def on_report(self, report: Report, now: float, policy: Policy) -> list[Transition]:
        """Apply a client's report of a request it made; return what changed."""
        if report.success:
            self.consecutive_failures = 0
            self.streak = ("", 0)
            if report.credential:
                cred = self.credentials.get(report.credential)
                if cred is not None and cred.reason is not Reason.AUTH_PERMANENT:
                    del self.credentials[report.credential]
            return []
        reason = report.reason or Reason.UNKNOWN
        if reason in HEALTH_NEUTRAL or reason is Reason.UNKNOWN:
            return []
        last, count = self.streak
        self.streak = (str(reason), count + 1 if last == reason else 1)
        if self.streak[1] < policy.switch_after.get(str(reason), 1):
            return []  # counted; the fallback rule says not yet
        if reason in CREDENTIAL_SCOPED and report.credential:
            return self._arm_credential(report, now, policy)
        if reason in AUTH_REASONS:
            # Without a fingerprint we cannot tell whose key is bad: one client's bad key
            # must never take the backend away from everyone. Our own probe decides.
            return []
        if reason in SEVERE:
            self.consecutive_failures += 1
        return self._arm(reason, report.retry_after_s, now, policy, report.detail)

    def block_for(self, reason: str, detail: str = "") -> list[Transition]:
        """Unhealthy at once and held so until `unblock` (a supervisor's verdict: its process
        exited, hangs, is fatal ...). hroute's own auth block is kept: only a probe lifts it."""
        self.consecutive_successes = 0
        out = []
        if not (self.state is State.UNHEALTHY and self.reason == reason):
            out.append(self._move(State.UNHEALTHY, "backend_down", reason, detail))
        if self.block not in AUTH_REASONS:
            self.block = reason
        return out

    def unblock(self, reasons: Collection[str] | None = None) -> bool:
        """Lift a supervisor's block (only one of `reasons`, when given); True if it changed."""
        if self.block is None or self.block in AUTH_REASONS:
            return False
        if reasons is not None and self.block not in reasons:
            return False
        self.block = None
        return True

    def expire(self, now: float) -> list[Transition]:
        """Drop cooldowns that have run out; say so when the backend's own one ends."""
        out = []
        if (
            self.cooldown is not None
            and self.cooldown.until is not None
            and self.cooldown.until <= now
        ):
            out.append(
                Transition(
                    "cooldown_end", str(self.state), str(self.state), str(self.cooldown.reason)
                )
            )
            self.cooldown = None
            self.decay_anchor = now
        for fp, cred in list(self.credentials.items()):
            if cred.until is not None and cred.until <= now:
                del self.credentials[fp]
        return out

    def next_deadline(self) -> float | None:
        """The earliest cooldown deadline, for the owner to schedule `expire`."""
        deadlines = [c.until for c in self.credentials.values() if c.until is not None]
        if self.cooldown is not None and self.cooldown.until is not None:
            deadlines.append(self.cooldown.until)
        return min(deadlines, default=None)

    # --- internals ----------------------------------------------------------------

    def _move(self, new: State, event: str, reason: str | None, detail: str) -> Transition:
        old = self.state
        self.state, self.reason, self.detail = new, reason, detail
        if new is State.HEALTHY:
            self.consecutive_failures = 0
        return Transition(event, str(old), str(new), reason, detail=detail)

    def _escalated(self, now: float, policy: Policy) -> float:
        """Envoy: base x n for the n-th consecutive cooldown; n drops by one per base_s of health."""
        if self.cooldown is None and self.ejections and self.state is not State.UNHEALTHY:
            healthy_for = max(0.0, now - self.decay_anchor)
            decay = int(healthy_for // policy.base_s)
            if decay:
                self.ejections = max(0, self.ejections - decay)
                self.decay_anchor += decay * policy.base_s
        self.ejections += 1
        return min(policy.base_s * self.ejections, policy.max_s)

    def _arm(
        self, reason: Reason, retry_after_s: float | None, now: float, policy: Policy, detail: str
    ) -> list[Transition]:
        if retry_after_s is not None:
            duration = retry_after_s
        elif reason is Reason.BILLING:
            duration = policy.max_s
        else:
            duration = self._escalated(now, policy)
        until = now + duration
        current = self.cooldown
        if current is not None and (current.until is None or current.until >= until):
            return []  # a later deadline is never shortened by a shorter one
        self.cooldown = Cooldown(until, reason)
        self.decay_anchor = until
        return [
            Transition(
                "cooldown", str(self.state), str(self.state), reason, duration, detail=detail
            )
        ]

    def _arm_credential(self, report: Report, now: float, policy: Policy) -> list[Transition]:
        reason = report.reason or Reason.UNKNOWN
        if reason is Reason.AUTH_PERMANENT:
            until = None
        elif report.retry_after_s is not None:
            until = now + report.retry_after_s
        elif reason in (Reason.BILLING, Reason.AUTH):
            until = now + policy.max_s
        else:
            until = now + policy.base_s
        current = self.credentials.get(report.credential or "")
        if current is not None and (
            current.until is None or (until is not None and current.until >= until)
        ):
            return []
        key = report.credential or ""
        if key not in self.credentials and len(self.credentials) >= MAX_CREDENTIALS:
            soonest = min(
                self.credentials,
                key=lambda fp: INF if (u := self.credentials[fp].until) is None else u,
            )
            del self.credentials[soonest]
        self.credentials[key] = Cooldown(until, reason)
        duration = None if until is None else until - now
        return [
            Transition(
                "cooldown",
                str(self.state),
                str(self.state),
                reason,
                duration,
                credential=report.credential,
                detail=report.detail,
            )
        ]

"""Health of one server and the cooldowns of its three scopes: a pure state machine.

Active probes move the server's state (rise/fall) and say which configured models it lacks.
Passive reports and rate-limit answers arm cooldowns of the scope they concern — the server,
one model on it, or one key (`cooldowns.py`) — once per incident, growing like Envoy's
outlier ejection (base x n, capped, decaying). Nothing here reads a clock, sleeps or does
I/O; every call takes `now`, a monotonic timestamp in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from hroute.core import evidence
from hroute.core.cooldowns import MAX_SCOPES, Cooldown, Held, scope_maps
from hroute.core.health_values import Policy, ProbeOutcome, Report, Scope, State, Transition
from hroute.core.reasons import HEALTH_NEUTRAL, SEVERE, Reason
from hroute.core.scopes import ProbeEffect, key_model, probe_effect, report_scope
from hroute.core.shared_record import MAX_INCIDENTS, MAX_REMAINING_S, Shared
from hroute.core.verdict import ANY_MODEL, INF, USABLE, Verdict, decide_scoped

__all__ = [
    "AUTH_REASONS",
    "Health",
    "Policy",
    "ProbeOutcome",
    "Report",
    "Scope",
    "State",
    "Transition",
]

AUTH_REASONS = (Reason.AUTH, Reason.AUTH_PERMANENT)
STREAKS_KEPT = 256  # keys whose failure streak one backend remembers


_OPEN_STATES = (State.UNKNOWN, State.HEALTHY)  # blocker() is None in these, unless blocked


@dataclass
class Health:
    """The mutable health record of one server identity; owned by the registry.

    The only writer of health: probes, reports, supervisors' verdicts, other hosts' records
    and configuration changes all come in through its methods (scope rules: `scopes.py`).
    """

    state: State = State.UNKNOWN
    reason: str | None = None
    detail: str = ""
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    server: Held = field(default_factory=Held)
    models: dict[str, Held] = field(default_factory=dict)
    keys: dict[tuple[str, str], Held] = field(default_factory=dict)  # (credential, model or "")
    # What holds the server unusable whatever its probes say, until lifted: hroute's own
    # auth verdict (until the key or config changes) or a supervisor's (exited, hang, fatal ...).
    block: str | None = None
    # Its supervisor spawned it and it has not been ready since: a refused connection means
    # "not bound yet" (starting), not an outage, until the supervisor's startup_timeout_s.
    spawned: bool = False
    last_probe_at: float | None = None
    probe_failed: bool = False  # the last probe saw the server fail (evidence.py)
    latency_ms: float | None = None
    # Per key fingerprint ("" without one): the reason reported last and how often in a row,
    # for the fallback rules (switch_after). One key's 429s never count toward another's.
    streaks: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def cooldown(self) -> Cooldown | None:
        """The server's cooldown."""
        return self.server.cooldown

    @property
    def incidents(self) -> int:
        """The server's incident count."""
        return self.server.incidents

    # --- queries ------------------------------------------------------------------

    def cooldown_remaining(self, now: float, model: str | None = None) -> float:
        """Seconds until the server's cooldown (and `model`'s, when given) ends."""
        left = self.server.remaining(now)
        held = self.models.get(model) if model is not None else None
        return max(left, held.remaining(now)) if held is not None else left

    def mark(self) -> tuple[Any, ...]:
        """Everything an answer depends on, to tell a change from a confirmation (model and
        key cooldowns that start or end come with a Transition; a success drops keys)."""
        c = self.server.cooldown
        return (
            self.state,
            self.blocker(),
            None if c is None else (c.until, c.reason),
            len(self.models),
            len(self.keys),
        )

    def blocker(self) -> str | None:
        """What makes the server unusable whatever the time, or None."""
        if self.block:
            return self.block
        if self.state is State.UNHEALTHY:
            return self.reason or "unhealthy"
        if self.state is State.STARTING:
            return "starting"
        return None

    def scope_maps(self) -> tuple[dict[str, list[Any]], dict[str, dict[str, list[Any]]]]:
        """The model and key cooldowns as `verdict.decide` and the snapshot take them."""
        return scope_maps(self.models, self.keys)

    def scoped_verdict(
        self, now: float, credential: str | None = None, model: str | None = None
    ) -> tuple[Verdict, str | None]:
        """`verdict.decide_scoped`, the one definition, and which scope holds the backend."""
        cooldown = self.server.cooldown
        if (
            cooldown is None
            and self.block is None
            and self.state in _OPEN_STATES
            and not self.models
            and not self.keys
        ):
            return USABLE, None  # the common answer, without building decide()'s arguments
        models, keys = scope_maps(self.models, self.keys, credential, model, every=False)
        return decide_scoped(
            now,
            block=self.blocker(),
            until=None if cooldown is None else (INF if cooldown.until is None else cooldown.until),
            until_reason=None if cooldown is None else str(cooldown.reason),
            credentials=keys,
            credential=credential,
            models=models,
            model=model,
        )

    def verdict(
        self, now: float, credential: str | None = None, model: str | None = None
    ) -> Verdict:
        """(usable, reason, retry_after_s) for `model` on this server, with `credential`."""
        return self.scoped_verdict(now, credential, model)[0]

    def holding(
        self, scope: str | None, credential: str | None, model: str | None
    ) -> Cooldown | None:
        """The cooldown of the scope that holds a backend (for its detail), if it is one."""
        if scope == Scope.SERVER:
            return self.server.cooldown
        if scope == Scope.MODEL and model is not None and model in self.models:
            return self.models[model].cooldown
        if scope == Scope.KEY and credential is not None:
            for part in (ANY_MODEL, model or ANY_MODEL):
                held = self.keys.get((credential, part))
                if held is not None and held.cooldown is not None:
                    return held.cooldown
        return None

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
            self.consecutive_failures, self.probe_failed = 0, False
            self.consecutive_successes += 1
            if self.block in AUTH_REASONS:
                # Only our own probe, made with the configured key, can clear an auth block.
                self.block = None
            if self.state is not State.HEALTHY and (
                self.consecutive_successes >= policy.rise
                or self.state in (State.UNKNOWN, State.STARTING)
            ):
                out.append(self._move(State.HEALTHY, "backend_up", None, outcome.detail))
            out += self._check_models(outcome)
            if self.consecutive_successes >= policy.rise:
                out += evidence.lift(self.server, self.models, outcome, now, str(self.state))
            return out
        reason = outcome.reason
        effect = probe_effect(reason)
        if effect is ProbeEffect.NOTHING:
            return out
        if reason is Reason.CONNECTION and self.spawned and self.state is State.STARTING:
            self.detail = outcome.detail
            return out
        self.consecutive_successes = 0
        if effect is ProbeEffect.BLOCK:
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
        if effect is ProbeEffect.COOLDOWN:
            # The server answered: it is up, but says wait. That is a cooldown, not a state;
            # the probe met the limit itself, so its success is evidence the limit is over.
            fixed = policy.max_s if reason is Reason.BILLING else None
            duration = self.server.arm(
                reason, now, policy, retry_after_s=outcome.retry_after_s, fixed_s=fixed,
                detail=outcome.detail, inferred=True, seen_down=True,
            )  # fmt: skip
            return out + self._cooled(duration, reason, outcome.detail, Scope.SERVER)
        self.consecutive_failures += 1
        self.probe_failed = True
        evidence.saw_down((self.server, *self.models.values()), now)
        if self.state is not State.UNHEALTHY and (
            self.consecutive_failures >= policy.fall or self.state is State.UNKNOWN
        ):
            out.append(self._move(State.UNHEALTHY, "backend_down", reason, outcome.detail))
        elif self.state is State.UNHEALTHY:
            self.reason, self.detail = str(reason), outcome.detail
        return out

    def on_report(
        self, report: Report, now: float, policy: Policy, jitter: float = 0.0
    ) -> list[Transition]:
        """Apply a client's report of a request it made; return what changed.

        `jitter` is a value in [-1, 1] the caller drew; it spreads a new cooldown's end.
        """
        if report.success:
            self.consecutive_failures = 0
            if report.credential:
                self.streaks.pop(report.credential, None)
                self.streaks.pop("", None)
            else:
                self.streaks.clear()
            out = []
            for part in (ANY_MODEL, report.model or ANY_MODEL) if report.credential else ():
                held = self.keys.get((report.credential or "", part))
                if held is not None and (
                    held.cooldown is None or held.cooldown.reason is not Reason.AUTH_PERMANENT
                ):
                    del self.keys[(report.credential or "", part)]
                    if (ended := held.clear(now)) is not None:  # a key's holds are agents' to end
                        out.append(evidence.cleared(
                            str(self.state), held, ended, Scope.KEY, model=part,
                            credential=report.credential,
                        ))  # fmt: skip
            return out
        reason = report.reason or Reason.UNKNOWN
        if reason in HEALTH_NEUTRAL or reason is Reason.UNKNOWN:
            return []
        self._make_room(reason, report, policy, now)
        key = report.credential or ""
        last, count = self.streaks.pop(key, ("", 0))
        if len(self.streaks) >= STREAKS_KEPT:
            del self.streaks[next(iter(self.streaks))]  # the key reported least recently
        self.streaks[key] = (str(reason), count + 1 if last == reason else 1)
        if self.streaks[key][1] < policy.switch_after.get(str(reason), 1):
            return []  # counted; the fallback rule says not yet
        scope = report_scope(
            reason, credential=report.credential, model=report.model, local=policy.local
        )
        retry, detail = report.retry_after_s, report.detail
        guess, seen = evidence.inferred(reason, retry), self.probe_failed  # may probes lift it?
        if scope is Scope.SERVER:
            if reason in SEVERE:
                self.consecutive_failures += 1
            duration = self.server.arm(
                reason, now, policy, retry_after_s=retry, jitter=jitter, detail=detail,
                fixed_s=policy.max_s if reason is Reason.BILLING else None,
                down=self.state is State.UNHEALTHY, inferred=guess, seen_down=seen,
            )  # fmt: skip
            return self._cooled(duration, reason, detail, scope)
        if scope is Scope.MODEL:
            assert report.model
            held = self.models.setdefault(report.model, Held())
            duration = held.arm(
                reason, now, policy, retry_after_s=retry, jitter=jitter, detail=detail,
                inferred=guess, seen_down=seen,
            )  # fmt: skip
            return self._cooled(duration, reason, detail, scope, model=report.model)
        if scope is Scope.KEY:
            assert report.credential
            model = key_model(reason, report.model)
            held = self.keys.setdefault((report.credential, model), Held())
            if reason is Reason.AUTH_PERMANENT:
                new = held.hold(reason, detail)
                return self._cooled(None, reason, detail, scope, report.credential, model, hold=new)
            duration = held.arm(
                reason, now, policy, retry_after_s=retry, jitter=jitter, detail=detail,
                fixed_s=policy.max_s if reason in (Reason.BILLING, Reason.AUTH) else None,
            )  # fmt: skip
            return self._cooled(duration, reason, detail, scope, report.credential, model)
        return []

    def take_shared(self, shared: Shared, now: float, *, newer: bool = False) -> list[Transition]:
        """Another host's record of one of this server's scopes (from the cluster): a held
        one merges into the scope's hold (`Held.merge`), a cleared one ends the scope's
        running cooldown with a deadline (a hold until lifted, such as a revoked key, is this
        host's own verdict). Returns what to tell, with the host that saw it."""
        s = str(self.state)
        if shared.cleared:
            held = self.held_at(shared.scope, shared.model, shared.credential)
            if held is None or held.cooldown is None or held.cooldown.until is None:
                return []
            if (ended := held.clear(now)) is None:
                return []
            change = evidence.cleared(
                s, held, ended, shared.scope, model=shared.model or None,
                credential=shared.credential or None,
            )  # fmt: skip
            return [dataclasses.replace(change, seen_by=shared.host)]
        held = self._scope_for(shared.scope, shared.model, shared.credential)
        if held is None:
            return []
        until = now + min(shared.remaining_s, MAX_REMAINING_S)
        incidents = min(MAX_INCIDENTS, shared.incidents)
        if not held.merge(until, shared.reason, shared.host, incidents, now, newer=newer):
            return []
        return [
            Transition(
                "cooldown", s, s, str(shared.reason), shared.remaining_s, scope=shared.scope,
                credential=shared.credential or None, model=shared.model or None,
                seen_by=shared.host,
            )
        ]  # fmt: skip

    def new_key(self) -> bool:
        """The configured key changed: lift hroute's own auth block (the new key gets its
        chance; a probe with it decides). True if one was lifted."""
        if self.block not in AUTH_REASONS:
            return False
        self.block = None
        return True

    def held_at(self, scope: Scope, model: str = "", credential: str = "") -> Held | None:
        """The held record of one scope, if this server has one (`model`: the model scope's,
        or a key scope's model part; "" = every model)."""
        if scope is Scope.SERVER:
            return self.server
        if scope is Scope.MODEL:
            return self.models.get(model)
        return self.keys.get((credential, model))

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

    def started(self, detail: str) -> list[Transition]:
        """A supervisor just spawned the server: lift its block and hold the server as
        starting until a probe says it is ready (unknown would count as usable)."""
        self.unblock()
        self.consecutive_successes = self.consecutive_failures = 0
        self.spawned = True
        if self.state is State.STARTING:
            return []
        return [self._move(State.STARTING, "starting", "starting", detail)]

    def unblock(self, reasons: Collection[str] | None = None) -> bool:
        """Lift a supervisor's block (only one of `reasons`, when given); True if it changed."""
        if self.block is None or self.block in AUTH_REASONS:
            return False
        if reasons is not None and self.block not in reasons:
            return False
        self.block = None
        return True

    def expire(self, now: float, policy: Policy | None = None) -> list[Transition]:
        """Drop cooldowns that have run out; say so when a server's or a model's ends.

        With `policy`, also forget model and key scopes whose incident count has decayed away.
        """
        out = []
        ended = self.server.expire(now)
        if ended is not None:
            out.append(self._ended(ended, Scope.SERVER))
        for m, held in list(self.models.items()):
            ended = held.expire(now)
            if ended is not None:
                out.append(self._ended(ended, Scope.MODEL, model=m))
            if policy is not None and held.forgotten(now, policy.base_s):
                del self.models[m]
        for key, held in list(self.keys.items()):
            held.expire(now)
            if policy is not None and held.forgotten(now, policy.base_s):
                del self.keys[key]
        return out

    def next_deadline(self) -> float | None:
        """The earliest cooldown deadline, for the owner to schedule `expire`."""
        helds = [self.server, *self.models.values(), *self.keys.values()]
        deadlines = [h.cooldown.until for h in helds if h.cooldown and h.cooldown.until is not None]
        return min(deadlines, default=None)

    # --- internals ----------------------------------------------------------------

    def _scope_for(self, scope: Scope, model: str, credential: str) -> Held | None:
        """The held record a shared cooldown lands in, made when new (within MAX_SCOPES)."""
        if scope is Scope.SERVER:
            return self.server
        if scope is Scope.MODEL:
            if not model:
                return None
            if model not in self.models and len(self.models) >= MAX_SCOPES:
                return None
            return self.models.setdefault(model, Held())
        if (credential, model) not in self.keys and len(self.keys) >= MAX_SCOPES:
            return None
        return self.keys.setdefault((credential, model), Held())

    def _make_room(self, reason: Reason, report: Report, policy: Policy, now: float) -> None:
        """Before a failure for a new model or key when the server already remembers
        MAX_SCOPES, forget one: a scope with no running cooldown first (only its incident
        count goes), else the one ending soonest (that key is usable a little early: hroute
        fails open). So the agent that reports always reads its own report back, and the
        record stays bounded."""
        scope = report_scope(
            reason, credential=report.credential, model=report.model, local=policy.local
        )
        table: dict[Any, Held]
        if scope is Scope.MODEL:
            table, key = self.models, report.model
        elif scope is Scope.KEY:
            table, key = self.keys, (report.credential or "", key_model(reason, report.model))
        else:
            return
        if key in table or len(table) < MAX_SCOPES:
            return
        idle = next((k for k, h in table.items() if not h.running(now)), None)
        if idle is None:
            idle = min(table, key=lambda k: _ends(table[k]))
        del table[idle]

    def _check_models(self, outcome: ProbeOutcome) -> list[Transition]:
        """A model the probe did not find is held until a probe finds it; only that model."""
        out = []
        for m in outcome.checked:
            held = self.models.get(m)
            if m in outcome.missing:
                held = held or self.models.setdefault(m, Held())
                if held.hold(Reason.MODEL_NOT_FOUND, outcome.missing[m]):
                    why = outcome.missing[m]
                    out += self._cooled(
                        None, Reason.MODEL_NOT_FOUND, why, Scope.MODEL, model=m, hold=True
                    )
            elif held is not None and held.lift(Reason.MODEL_NOT_FOUND):
                out.append(
                    self._ended(Cooldown(None, Reason.MODEL_NOT_FOUND), Scope.MODEL, model=m)
                )
        return out

    def _move(self, new: State, event: str, reason: str | None, detail: str) -> Transition:
        old = self.state
        self.state, self.reason, self.detail = new, reason, detail
        self.spawned = self.spawned and new is State.STARTING
        if new is State.HEALTHY:
            self.consecutive_failures = 0
        return Transition(event, str(old), str(new), reason, detail=detail)

    def _cooled(
        self,
        duration: float | None,
        reason: Reason,
        detail: str,
        scope: Scope,
        credential: str | None = None,
        model: str | None = None,
        *,
        hold: bool = False,
    ) -> list[Transition]:
        if duration is None and not hold:
            return []  # the running cooldown stays as it was: same incident
        s = str(self.state)
        return [
            Transition(
                "cooldown", s, s, reason, duration, credential=credential, detail=detail,
                scope=scope, model=model or None,
            )
        ]  # fmt: skip

    def _ended(self, ended: Cooldown, scope: Scope, model: str | None = None) -> Transition:
        s = str(self.state)
        return Transition("cooldown_end", s, s, str(ended.reason), scope=scope, model=model)


def _ends(held: Held) -> float:
    c = held.cooldown
    return float("inf") if c is None or c.until is None else c.until

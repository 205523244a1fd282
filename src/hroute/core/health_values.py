"""The values health works on: scopes, states, thresholds, what a probe saw, what a client
reported, and what changed. Pure, frozen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hroute.core.reasons import Reason


class Scope(StrEnum):
    """What a failure holds: the server, one model on it, or one key (of one model)."""

    SERVER = "server"  # identity: api mode + normalised URL (+ model_family)
    MODEL = "model"  # identity + model
    KEY = "key"  # identity + credential (+ model, for a rate limit that names one)


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
    jitter: float = 0.0  # cooldown ends spread by +/- this fraction (Envoy's ejection jitter)
    local: bool = False  # a local server: its `overloaded` holds the server, not one model
    # Seed 000's fallback rules: reports of a reason in a row before the backend is left.
    switch_after: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeOutcome:
    """What one active probe saw. `reason` is None when the server answered well."""

    reason: Reason | None = None
    starting: bool = False
    retry_after_s: float | None = None
    detail: str = ""
    latency_ms: float | None = None
    # The configured models the probe looked for, and those it did not find (-> why).
    checked: tuple[str, ...] = ()
    missing: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """A failure or success a client saw while using the backend."""

    success: bool
    reason: Reason | None = None
    retry_after_s: float | None = None
    credential: str | None = None
    detail: str = ""
    model: str | None = None


@dataclass(frozen=True)
class Transition:
    """Something an operator should hear about: a state change or a cooldown."""

    # backend_up | backend_down | starting | cooldown | cooldown_end | cooldown_cleared |
    # auth_blocked
    event: str
    old: str
    new: str
    reason: str | None
    cooldown_s: float | None = None
    credential: str | None = None
    detail: str = ""
    scope: str = Scope.SERVER
    model: str | None = None
    seen_by: str | None = None  # another host, for a cooldown shared through the cluster
    incident: int | None = None  # cooldown_cleared: the scope's incident count it ended


def policy_for(config: Any, name: str) -> Policy:
    """The thresholds of backend `name` under `config` (its probe and cooldown settings)."""
    probe, cooldown = config.probe_for(name), config.cooldown_for(name)
    rules = {reason: rule.threshold for reason, rule in config.fallback_rules.items()}
    return Policy(
        fall=probe.fall,
        rise=probe.rise,
        base_s=cooldown.base_s,
        max_s=cooldown.max_s,
        jitter=cooldown.jitter,
        local=config.backends[name].tier_name == "local",
        switch_after=rules,
    )

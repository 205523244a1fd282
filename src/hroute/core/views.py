"""What the registry shows: one backend's view (status, `/v1/backends`) and the snapshot.

Pure functions of the registry's records and the clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hroute.core.registry import Registry


def backend_view(registry: Registry, name: str) -> dict[str, Any]:
    """Everything an operator wants to know about one configured backend."""
    backend = registry.config.backends[name]
    health = registry.health(name)
    clock = registry.clock
    now = clock.now()
    verdict = health.verdict(now)
    last_probe = health.last_probe_at
    view = {
        "name": name,
        "kind": backend.kind,
        "base_url": backend.base_url,
        "model": backend.model,
        "state": str(health.state),
        "usable": verdict.usable,
        "reason": verdict.reason,
        "detail": health.detail,
        "cooldown_remaining_s": _seconds(health.cooldown_remaining(now)),
        "consecutive_failures": health.consecutive_failures,
        "last_probe_at": None
        if last_probe is None
        else round(clock.wall() - (now - last_probe), 3),
        "latency_ms": None if health.latency_ms is None else round(health.latency_ms, 2),
        "credential_cooldowns": len(health.credentials),
        "tier": backend.tier_name,
    }
    if backend.paid:
        view["spent_today_usd"] = round(registry.router.spent_today(name), 6)
    note = registry.note(name)
    if note:
        view["note"] = note
    process = registry.process_view(name)
    if process is not None:
        view["process"] = process
    return view


def snapshot(registry: Registry) -> dict[str, Any]:
    """What agents may read without a round trip: per backend, what blocks it and until when.

    Deadlines are CLOCK_MONOTONIC seconds, which every process on this machine shares. The
    client decides from these fields with the same `verdict.decide` as the daemon.
    """
    backends = {}
    for name in registry.names:
        h = registry.health(name)
        backends[name] = {
            "state": str(h.state),
            "blocked": h.blocker(),
            "until": None if h.cooldown is None else h.cooldown.until,
            "until_reason": None if h.cooldown is None else str(h.cooldown.reason),
            "creds": {fp: [c.until, str(c.reason)] for fp, c in h.credentials.items()},
        }
    return {"backends": backends, "urls": registry.urls()}


def _seconds(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)

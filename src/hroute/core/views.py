"""What the registry shows: one backend's view (status, `/v1/backends`) and the snapshot.

Pure functions of values: a backend's configuration and health record, the time, and what
is shown beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hroute.core.directory import Directory
from hroute.core.health import Health


def backend_view(
    name: str,
    backend: Any,
    health: Health,
    now: float,
    wall: float,
    *,
    spent_today: float | None = None,
    note: str | None = None,
    process: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything an operator wants to know about one configured backend (`backend`: its
    configuration; `now`: monotonic seconds, `wall`: the wall clock at the same moment)."""
    verdict, scope = health.scoped_verdict(now, model=backend.model)
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
        "blocked_by": None
        if scope is None
        else _blocked_by(health, scope, verdict.reason, backend.model),
        "cooldown_remaining_s": _seconds(health.cooldown_remaining(now, backend.model)),
        "consecutive_failures": health.consecutive_failures,
        "last_probe_at": None if last_probe is None else round(wall - (now - last_probe), 3),
        "latency_ms": None if health.latency_ms is None else round(health.latency_ms, 2),
        "credential_cooldowns": sum(
            1
            for (_, m), held in health.keys.items()
            if held.running(now) and m in ("", backend.model)
        ),
        "tier": backend.tier_name,
    }
    if backend.paid and spent_today is not None:
        view["spent_today_usd"] = round(spent_today, 6)
    if note:
        view["note"] = note
    if process is not None:
        view["process"] = process
    return view


def snapshot(directory: Directory, health_of: Callable[[str], Health]) -> dict[str, Any]:
    """What agents may read without a round trip: per backend, what blocks it and until when.

    Deadlines are CLOCK_MONOTONIC seconds, which every process on this machine shares. The
    client decides from these fields with the same `verdict.decide` as the daemon: the
    server's block and cooldown, each model's cooldown on that server (`models`), each key's
    for every model ("") or for one (`creds`). `url_models` finds the backend configured
    with a URL and a model.
    """
    backends = {
        name: snapshot_entry(directory.model(name), health_of(name)) for name in directory.names
    }
    return {"backends": backends, "urls": directory.urls(), "url_models": directory.url_models()}


def snapshot_entry(model: str | None, h: Health) -> dict[str, Any]:
    """One backend's part of the snapshot: `model` is its configured model, `h` its record."""
    models, creds = h.scope_maps()
    return {
        "state": str(h.state),
        "model": model,
        "blocked": h.blocker(),
        "until": None if h.cooldown is None else h.cooldown.until,
        "until_reason": None if h.cooldown is None else str(h.cooldown.reason),
        "models": models,
        "creds": creds,
    }


def _blocked_by(
    health: Health, scope: str, reason: str | None, model: str | None
) -> dict[str, Any]:
    """Which layer holds a backend, why, and in the words of whoever said so."""
    held = health.holding(scope, None, model)
    detail = health.detail if held is None or not held.detail else held.detail
    out = {"scope": scope, "reason": reason, "detail": detail}
    if held is not None and held.seen_by:
        out["seen_by"] = held.seen_by  # another host's report, shared through the cluster
    if scope == "model":
        out["model"] = model
    return out


def _seconds(value: float) -> float | None:
    return None if value == float("inf") else round(value, 3)

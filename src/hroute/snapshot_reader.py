"""Answering `usable()` from the snapshot file the daemon publishes. Standard library only."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from hroute.core.identity import normalize_base_url
from hroute.core.verdict import decide


@dataclass(slots=True)
class Usable:
    """hroute's answer to "may I use this backend now?"."""

    usable: bool
    backend: str | None = None
    state: str = "unknown"
    reason: str | None = None
    retry_after_s: float | None = None
    source: str = "snapshot"  # snapshot | socket | fail-open

    def __bool__(self) -> bool:
        return self.usable


def _from_snapshot(
    snap: dict[str, Any],
    backend: str | None,
    base_url: str | None,
    credential: str | None,
    model: str | None = None,
) -> Usable:
    backends = snap["backends"]
    name = backend if backend in backends else None
    if name is None and base_url:
        url = _normalized(base_url)
        name = (snap["url_models"].get(url) or {}).get(model) or snap["urls"].get(url)
    if name is None:
        return Usable(True, backend, "unknown", "not_monitored", None)
    entry = backends[name]
    verdict = decide(
        time.monotonic(),
        block=entry["blocked"],
        until=entry["until"],
        until_reason=entry["until_reason"],
        credentials=entry["creds"],
        credential=credential,
        models=entry["models"],
        model=model or entry["model"],
    )
    return Usable(verdict.usable, name, entry["state"], verdict.reason, verdict.retry_after_s)


@functools.lru_cache(maxsize=256)
def _normalized(base_url: str) -> str:
    return normalize_base_url(base_url)  # agents ask about the same few URLs every turn

"""Answering `usable()` from the snapshot file the daemon publishes. Standard library only."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from hroute.core.identity import normalize_base_url
from hroute.core.snapshot_format import SnapshotFile
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
    snap: SnapshotFile,
    backend: str | None,
    base_url: str | None,
    credential: str | None,
    model: str | None = None,
) -> Usable:
    """The answer from the snapshot; KeyError, TypeError, ValueError, AttributeError or
    RecursionError when the file is not what the daemon writes (then ask the socket)."""
    name = backend if backend in snap else None
    if name is None and base_url:
        url = _normalized(base_url)
        found = snap.urls()
        name = (found["url_models"].get(url) or {}).get(model) or found["urls"].get(url)
    if name is None:
        return Usable(True, backend, "unknown", "not_monitored", None)
    entry = snap.backend(name)
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

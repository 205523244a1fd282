"""The snapshot agents read without a round trip, published atomically next to the socket.

Readers stat the file and re-parse only when it changed, so `usable()` costs a stat and a
dict lookup. The file carries an expiry: a snapshot left behind by a dead daemon stops
counting within SNAPSHOT_TTL_S and readers fall back to the socket (and so fail open).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import anyio

from hroute.core.clock import Clock
from hroute.core.registry import Registry
from hroute.edges.files import write_atomically

log = logging.getLogger("hroute")

SNAPSHOT_VERSION = 2  # 2: model and key scopes (client.SNAPSHOT_V reads it)
SNAPSHOT_TTL_S = 5.0
REFRESH_S = 2.0  # well inside the TTL: a busy loop may be late


class SnapshotPublisher:
    """Owns the snapshot file: rewrites it on every registry change and refreshes its expiry."""

    def __init__(self, registry: Registry, clock: Clock, path: Path) -> None:
        self._registry, self._clock, self.path = registry, clock, path
        self._written_version = -1
        self._last_body: dict[str, Any] | None = None
        self._last_write = float("-inf")
        self._failing = False
        # Written synchronously on every change, so the file is never behind what the socket
        # answers: an agent that reported a failure reads it back at once.
        registry.add_listener(self.flush)

    def flush(self, *, force: bool = False) -> None:
        """Write now if the registry changed (or the expiry needs refreshing)."""
        now = self._clock.now()
        stale = now - self._last_write >= REFRESH_S
        if not force and not stale and self._registry.version == self._written_version:
            return
        body = self._registry.snapshot()
        self._written_version = self._registry.version
        if body == self._last_body and not stale and not force:
            return
        doc = {"v": SNAPSHOT_VERSION, "pid": os.getpid(), "expires": now + SNAPSHOT_TTL_S, **body}
        try:
            write_atomically(self.path, json.dumps(doc, separators=(",", ":")).encode())
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "cannot write %s (%s); agents will ask the socket instead", self.path, exc
                )
            self._failing = True
            return
        self._failing = False
        self._last_body, self._last_write = body, now

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            self.flush(force=True)
            task_status.started()
            while True:
                due = self._last_write + REFRESH_S - self._clock.now()
                await self._clock.sleep(max(0.05, min(due, REFRESH_S)))
                self.flush()  # keeps the expiry fresh while nothing changes
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()

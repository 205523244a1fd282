"""The snapshot agents read without a round trip, published atomically next to the socket.

Readers stat the file and re-read it only when it changed, and then parse only its index and
the section of the backend asked about (`core/snapshot_format.py`), so `usable()` costs a
stat and a dict lookup, and a change costs a reader microseconds, not a parse of the fleet. The file carries an expiry: a snapshot left behind by a dead daemon stops
counting within SNAPSHOT_TTL_S and readers fall back to the socket (and so fail open).

Writing it costs time in proportion to the fleet (10,000 backends: tens of ms), so changes
are coalesced: a change is written at once when the last write is old enough, else at most
one write interval later, the interval growing with what a write costs in CPU time (the
publisher stays under a tenth of a core however busy the registry; a write that other
processes' load preempted costs no more, so a busy machine does not delay every change). The file carries the registry's
version; a report's answer does too, and the client asks the socket until the snapshot has
caught up with its own report: read-your-write for the agent that reported, a few ms of
delay for the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import anyio

from hroute.core.clock import Clock
from hroute.core.events import Topic
from hroute.core.registry import Registry
from hroute.core.snapshot_format import encode
from hroute.edges.clock import wait_until
from hroute.edges.files import write_atomically

log = logging.getLogger("hroute")

SNAPSHOT_TTL_S = 5.0
REFRESH_S = 2.0  # well inside the TTL: a busy loop may be late
MIN_GAP_S = 0.02  # changes closer than this are written together
MAX_GAP_S = 1.0


class SnapshotPublisher:
    """Owns the snapshot file: rewrites it soon after registry changes and refreshes its expiry."""

    def __init__(self, registry: Registry, clock: Clock, path: Path) -> None:
        self._registry, self._clock, self.path = registry, clock, path
        self._written_version = -1
        self._last_body: dict[str, Any] | None = None
        self._last_write = float("-inf")
        self._gap_s = MIN_GAP_S  # between two writes of changes: 10 x the last one's CPU time
        self._failing = False
        self._dirty = anyio.Event()
        registry.subscribe(Topic.CHANGED, self._changed)

    def _changed(self) -> None:
        if self._clock.now() - self._last_write >= self._gap_s:
            self.flush()  # an isolated change is written at once
        else:
            self._dirty.set()  # a burst: the run loop writes it when the gap has passed

    def flush(self, *, force: bool = False) -> None:
        """Write now if the registry changed (or the expiry needs refreshing)."""
        now = self._clock.now()
        stale = now - self._last_write >= REFRESH_S
        if not force and not stale and self._registry.version == self._written_version:
            return
        started = time.thread_time()  # CPU time: being preempted is no cost of ours
        version = self._registry.version
        body = self._registry.snapshot()
        self._written_version = version
        if body == self._last_body and not stale and not force:
            return
        header = {"pid": os.getpid(), "version": version, "expires": now + SNAPSHOT_TTL_S}
        urls = {"urls": body["urls"], "url_models": body["url_models"]}
        try:
            write_atomically(self.path, encode(header, body["backends"], urls))
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "cannot write %s (%s); agents will ask the socket instead", self.path, exc
                )
            self._failing = True
            return
        self._failing = False
        self._last_body, self._last_write = body, now
        self._gap_s = min(MAX_GAP_S, max(MIN_GAP_S, 10 * (time.thread_time() - started)))

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            self.flush(force=True)
            task_status.started()
            while True:
                refresh_at = self._last_write + REFRESH_S
                if await wait_until(self._clock, self._dirty, refresh_at):
                    self._dirty = anyio.Event()
                    gap_end = self._last_write + self._gap_s
                    if gap_end > self._clock.now():
                        await self._clock.sleep(gap_end - self._clock.now())
                self.flush()  # the burst's changes, or the expiry while nothing changes
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()

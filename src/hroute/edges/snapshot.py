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
from collections.abc import Generator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from hroute.core.clock import Clock
from hroute.core.events import Topic
from hroute.core.registry import Registry
from hroute.core.snapshot_format import encode_parts, section
from hroute.core.views import snapshot_entry
from hroute.edges.clock import wait_until
from hroute.edges.files import write_atomically

log = logging.getLogger("hroute")

SNAPSHOT_TTL_S = 5.0
REFRESH_S = 3.0  # inside the TTL, with 2 s for a busy loop to be late
MIN_GAP_S = 0.02  # changes closer than this are written together
MAX_GAP_S = 1.0
# A write rebuilds the sections of the backends whose record changed since the last one; many
# changed (a fleet re-sync) are rebuilt in slices of this much CPU time, between which the
# loop answers agents.
SLICE_S = 0.001
# A file at least this big is written by a worker thread (2 MB held the loop 2-5 ms).
THREAD_WRITE_BYTES = 512 * 1024


_SLICE = object()  # `_advance`: a slice was done, the build goes on
_Built = tuple[list[bytes], float, float]  # the file's parts, when, the CPU time it cost


def _advance(steps: Generator[None, None, _Built | None]) -> object:
    """One slice of a build: `_SLICE`, or what the build returned once it is done."""
    try:
        next(steps)
    except StopIteration as done:
        return done.value
    return _SLICE


class SnapshotPublisher:
    """Owns the snapshot file: rewrites it soon after registry changes and refreshes its expiry.

    Each backend's section is kept, encoded, with the registry's stamp of its record; a write
    re-encodes only the sections whose stamp moved, so a change costs what changed, not the
    fleet. The run loop writes in slices (`SLICE_S`) and yields between them; `flush` writes
    at once (at start, and for tests).
    """

    def __init__(self, registry: Registry, clock: Clock, path: Path) -> None:
        self._registry, self._clock, self.path = registry, clock, path
        self._written_version = -1
        self._sections: dict[str, tuple[int, bytes]] = {}  # name -> (stamp, encoded entry)
        self._urls: tuple[Any, bytes] | None = None  # (the directory, its encoded URL maps)
        self._last_write = float("-inf")
        self._gap_s = MIN_GAP_S  # between two writes of changes: 10 x the last one's CPU time
        self._failing = False
        self._dirty = anyio.Event()
        registry.subscribe(Topic.CHANGED, lambda: self._dirty.set())

    def flush(self, *, force: bool = False) -> None:
        """Write now if the registry changed (or the expiry needs refreshing)."""
        steps = self._build(force=force)
        while (built := _advance(steps)) is _SLICE:
            pass  # no yielding: all at once
        if built is not None:
            self._commit(*built)

    async def _write_sliced(self) -> None:
        steps = self._build(force=False)
        while (built := _advance(steps)) is _SLICE:
            await anyio.lowlevel.checkpoint()  # a slice done: agents' requests go first
        if built is None:
            return
        if sum(map(len, built[0])) < THREAD_WRITE_BYTES:
            self._commit(*built)  # a fraction of a ms: a thread hop costs more
        else:
            # Megabytes at fleet scale: written by a worker thread, part by part; the writes
            # release the loop, which a join and a write here held for ms.
            await anyio.to_thread.run_sync(self._commit, *built)

    def _build(self, *, force: bool) -> Generator[None, None, _Built | None]:
        """Bring the sections up to date (yielding after each slice); return the file's parts,
        when it is to be written, with the time and the CPU time this cost."""
        now = self._clock.now()
        stale = now - self._last_write >= REFRESH_S
        reg = self._registry
        if not force and not stale and reg.version == self._written_version:
            return
        cost = 0.0  # CPU time: being preempted is no cost of ours
        started = time.thread_time()
        version, moved = reg.version, False
        while True:  # again if a reload replaced the directory while we yielded
            directory = reg.directory
            names = directory.names
            for name in names:
                stamp = reg.stamp(name)
                kept = self._sections.get(name)
                if kept is None or kept[0] != stamp:
                    entry = snapshot_entry(directory.model(name), reg.health(name))
                    self._sections[name] = (stamp, section(entry))
                    moved = True
                    if time.thread_time() - started >= SLICE_S:
                        cost += time.thread_time() - started
                        yield
                        started = time.thread_time()
                        if reg.directory is not directory:
                            break
            else:
                break
        if self._urls is None or self._urls[0] is not directory:
            urls = {"urls": directory.urls(), "url_models": directory.url_models()}
            self._urls, moved = (directory, section(urls)), True
        if len(self._sections) > len(names):
            self._sections = {n: self._sections[n] for n in names}
            moved = True
        self._written_version = version
        if not moved and not stale and not force:
            return None
        header = {"pid": os.getpid(), "version": version, "expires": now + SNAPSHOT_TTL_S}
        blobs = {n: self._sections[n][1] for n in names}
        parts = encode_parts(header, blobs, self._urls[1])
        return parts, now, cost + time.thread_time() - started

    def _commit(self, parts: list[bytes], now: float, cost: float) -> None:
        """Write the file (in a worker thread when the loop runs)."""
        try:
            write_atomically(self.path, parts)
        except OSError as exc:
            if not self._failing:
                log.warning(
                    "cannot write %s (%s); agents will ask the socket instead", self.path, exc
                )
            self._failing = True
            return
        self._failing = False
        self._last_write = now
        self._gap_s = min(MAX_GAP_S, max(MIN_GAP_S, 10 * cost))

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
                # the changes (a burst's, coalesced), or the expiry while nothing changes
                await self._write_sliced()
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()

"""Durable state: health and cooldowns that survive a daemon restart.

Deadlines are monotonic in memory but wall-clock on disk (monotonic time restarts with
the machine). The file is replaced atomically (temp, fsync, rename, fsync dir), so a
`kill -9` at any moment leaves the old file or the new one. A file that cannot be read
is set aside (renamed, never overwritten) with a warning; only one that can be neither
read nor moved stops the start. How the file is written and read: `edges/files.py`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hroute.core.clock import Clock
from hroute.core.cooldowns import Held
from hroute.core.credentials import is_fingerprint
from hroute.core.errors import HrouteError
from hroute.core.escalation import TaskState
from hroute.core.events import Topic
from hroute.core.health import Cooldown, Health, State
from hroute.core.identity import BackendIdentity
from hroute.core.reasons import Reason
from hroute.core.registry import Registry
from hroute.core.verdict import ANY_MODEL
from hroute.edges.files import UnreadableFileError, read_regular_file, write_atomically

log = logging.getLogger("hroute")

STATE_FORMAT = "hroute-state/1"
SAVE_DELAY_S = 0.2  # coalesce a burst of changes into one write
SLICE_S = 0.001  # CPU time a save re-encodes records for before the loop answers agents
# Far above any real fleet's file (10,000 backends: a few MB), far below what would hurt.
MAX_STATE_BYTES = 64 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Deadline(_Strict):
    until_wall: float | None  # None: until lifted (the key or the config changes, a probe)
    reason: Reason
    detail: str = Field("", max_length=2000)
    ejections: int = Field(0, ge=0, le=10_000)  # Held.incidents; the file keeps its name
    seen_by: str = Field("", max_length=64)  # another host's, shared through the cluster
    inferred: bool = False  # hroute's inference, and whether the probes met the failure:
    seen_down: bool = False  # then their success lifts it (core/evidence.py)


class _Record(_Strict):
    identity: tuple[str, str, str | None]
    state: State
    reason: str | None = None
    detail: str = ""
    ejections: int = Field(0, ge=0, le=10_000)
    blocked: str | None = None  # the file keeps its name for Health.block
    cooldown: _Deadline | None = None
    # Files written before scopes carry only `credentials` (a key's cooldown for every model).
    credentials: dict[str, _Deadline] = Field(default_factory=dict)
    key_models: dict[str, dict[str, _Deadline]] = Field(default_factory=dict)
    models: dict[str, _Deadline] = Field(default_factory=dict)


class _Task(_Strict):
    reasons: list[str] = Field(max_length=50)
    last_wall: float


class _Spend(_Strict):
    day: str = Field(max_length=10)
    by_backend: dict[str, float]
    ends_wall: float | None = None  # when that budget day ends (absent in older files)


class _File(_Strict):
    format: Literal["hroute-state/1"]
    saved_at: float
    backends: list[_Record]
    tasks: dict[str, _Task] = Field(default_factory=dict)
    spend: _Spend | None = None


@dataclass
class Saved:
    """What a state file restores: health by identity, task escalation counters, spend."""

    records: dict[BackendIdentity, Health] = field(default_factory=dict)
    tasks: dict[str, TaskState] = field(default_factory=dict)
    spend: tuple[str, dict[str, float], float | None] | None = None


def encode_state(
    records: dict[BackendIdentity, Health],
    now: float,
    wall: float,
    tasks: dict[str, TaskState] | None = None,
    spend: tuple[str, dict[str, float], float | None] | None = None,
) -> dict[str, Any]:
    """The durable part of every health record, deadlines turned into wall-clock time."""
    out = [encode_record(ident, h, wall - now) for ident, h in records.items()]
    doc: dict[str, Any] = {"format": STATE_FORMAT, "saved_at": round(wall, 3), "backends": out}
    doc["tasks"] = encode_tasks(tasks or {}, wall - now)
    if spend is not None:
        doc["spend"] = encode_spend(spend)
    return doc


def encode_record(ident: BackendIdentity, h: Health, offset: float) -> dict[str, Any]:
    """One health record as the file keeps it; `offset` is wall time minus monotonic time."""

    def deadline(c: Cooldown, ejections: int = 0) -> dict[str, Any]:
        until = None if c.until is None else round(c.until + offset, 3)
        out = {"until_wall": until, "reason": str(c.reason), "ejections": ejections}
        return (
            out
            | ({"detail": c.detail} if c.detail else {})
            | ({"seen_by": c.seen_by} if c.seen_by else {})
            | ({"inferred": True, "seen_down": c.seen_down} if c.inferred else {})
        )

    keys: dict[str, dict[str, Any]] = {}
    for (fp, m), held in h.keys.items():
        if held.cooldown is not None:
            keys.setdefault(fp, {})[m] = deadline(held.cooldown, held.incidents)
    return {
        "identity": list(ident),
        "state": str(h.state),
        "reason": h.reason,
        "detail": h.detail,
        "ejections": h.incidents,
        "blocked": h.block,
        "cooldown": deadline(h.cooldown) if h.cooldown else None,
        "credentials": {fp: by[ANY_MODEL] for fp, by in keys.items() if ANY_MODEL in by},
        "key_models": {
            fp: {m: d for m, d in by.items() if m != ANY_MODEL}
            for fp, by in keys.items()
            if set(by) - {ANY_MODEL}
        },
        "models": {
            m: deadline(held.cooldown, held.incidents)
            for m, held in h.models.items()
            if held.cooldown is not None
        },
    }


def encode_tasks(tasks: dict[str, TaskState], offset: float) -> dict[str, Any]:
    return {
        t: {"reasons": list(st.reasons), "last_wall": round(st.last_at + offset, 3)}
        for t, st in tasks.items()
    }


def encode_spend(spend: tuple[str, dict[str, float], float | None]) -> dict[str, Any]:
    return {"day": spend[0], "by_backend": spend[1], "ends_wall": spend[2]}


def decode_state(data: Any, now: float, wall: float) -> dict[BackendIdentity, Health]:
    """Health records from a saved document; run-out cooldowns are dropped.

    Raises ValueError for anything that is not a state file of ours.
    """
    return decode_saved(data, now, wall).records


def decode_saved(data: Any, now: float, wall: float) -> Saved:
    """Everything a saved document restores; raises ValueError when it is not ours."""
    try:
        doc = _File.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"not an hroute state file: {exc.error_count()} problems") from exc

    def live(d: _Deadline | None) -> Cooldown | None:
        if d is None:
            return None
        if d.until_wall is None:
            return Cooldown(None, d.reason, d.detail, d.seen_by)
        left = d.until_wall - wall
        if left <= 0:
            return None
        return Cooldown(now + left, d.reason, d.detail, d.seen_by, d.inferred, d.seen_down)

    def held(d: _Deadline) -> Held | None:
        c = live(d)
        return None if c is None else Held(c, d.ejections, now if c.until is None else c.until)

    records = {}
    for r in doc.backends:
        # Only fingerprints: a raw key an older version stored is dropped, not kept on disk.
        keyed = [((fp, ANY_MODEL), d) for fp, d in r.credentials.items()] + [
            ((fp, m), d) for fp, by in r.key_models.items() for m, d in by.items()
        ]
        records[BackendIdentity(*r.identity)] = Health(
            state=r.state,
            reason=r.reason,
            detail=r.detail,
            server=Held(live(r.cooldown), r.ejections, now),
            models={m: x for m, d in r.models.items() if (x := held(d)) is not None},
            keys={k: x for k, d in keyed if is_fingerprint(k[0]) and (x := held(d)) is not None},
            block=r.blocked,
        )
    tasks = {
        t: TaskState(list(v.reasons), now - (wall - v.last_wall)) for t, v in doc.tasks.items()
    }
    spend = (doc.spend.day, dict(doc.spend.by_backend), doc.spend.ends_wall) if doc.spend else None
    return Saved(records, tasks, spend)


def load_state(path: Path, clock: Clock) -> Saved:
    """Read the state file; a missing one is empty, a bad one is set aside with a warning.

    A FIFO, a device, a symlink or a file over MAX_STATE_BYTES is never read (a FIFO would
    hang the start, /dev/zero would fill memory), and a file that cannot be read at all
    (mode 000) is set aside too: were it left, the next save would overwrite its cooldowns.
    Raises HrouteError only when such a file can be neither read nor moved.
    """
    try:
        raw = read_regular_file(path, MAX_STATE_BYTES, follow=False)
    except FileNotFoundError:
        return Saved()
    except OSError as exc:
        _set_aside(path, clock, str(exc) if isinstance(exc, UnreadableFileError) else exc)
        return Saved()
    try:
        return decode_saved(
            json.loads(raw, parse_constant=_no_constants), clock.now(), clock.wall()
        )
    except (ValueError, RecursionError) as exc:  # JSON/Unicode errors are ValueErrors; "[[[[..."
        _set_aside(path, clock, exc)
        return Saved()


def _set_aside(path: Path, clock: Clock, why: object) -> None:
    """Rename `path` to a name of its own (never over an earlier one), with a warning."""
    stamp = int(clock.wall())
    for n in range(100):
        aside = path.with_name(f"{path.name}.bad-{stamp}" + (f".{n}" if n else ""))
        if not os.path.lexists(aside):
            break
    try:
        os.rename(path, aside)
    except OSError as exc:
        raise HrouteError(
            f"saved state {path} cannot be read ({why}) nor set aside ({exc.strerror or exc}); "
            "move it away to start fresh"
        ) from None
    log.warning(
        "saved state %s is unreadable (%s); set aside as %s, starting fresh", path, why, aside
    )


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON; a NaN deadline would never run out (NaN <= now is False).
    raise ValueError(f"{name} is not a number hroute writes")


class StateSaver:
    """Owns the state file: saves soon after a change (coalesced) and at shutdown.

    The file is built from parts kept encoded: each configured server's record with the
    registry's stamp of its last change (and the wall-clock offset it was encoded with), the
    tasks with their change count. A save re-encodes only what changed, in slices that yield
    to the loop (a fleet re-sync changes every record at once), and writes in a thread. The
    file is one record a line, and reads as before.
    """

    def __init__(self, registry: Registry, clock: Clock, path: Path) -> None:
        self._registry, self._clock, self.path = registry, clock, path
        self._dirty = anyio.Event()
        self._failing = False
        self._records: dict[BackendIdentity, tuple[Any, bytes]] = {}  # ident -> (key, bytes)
        self._tasks: tuple[Any, bytes] | None = None
        # Built after the restore: what was just restored is already on disk. (Taken here,
        # not when run() starts: the socket serves, and reports change state, before that.)
        self._saved_key: Any = self._key()
        registry.subscribe(Topic.CHANGED, lambda: self._dirty.set())

    def _key(self) -> Any:
        reg = self._registry
        return (reg.version, reg.router.tasks.changes, reg.router.spend.dump(), len(reg.records()))

    async def save_if_changed(self) -> bool:
        key = self._key()
        if key == self._saved_key:
            return False
        data = None
        for data in self._build():
            if data is None:
                await anyio.lowlevel.checkpoint()  # a slice done: agents' requests go first
        assert data is not None
        try:
            await anyio.to_thread.run_sync(self._write, data)
        except OSError as exc:
            if not self._failing:  # once, not at every change: a full disk stays full
                log.warning(
                    "cannot save state: %s (%s); the last saved file is kept, "
                    "trying again at the next change",
                    exc.strerror or exc,
                    self.path,
                )
            self._failing = True
            return False
        if self._failing:
            log.info("state saved again to %s", self.path)
            self._failing = False
        self._saved_key = key
        return True

    def _build(self) -> Iterator[bytes | None]:
        """Yield None after each slice of re-encoding, then the file's bytes."""
        reg = self._registry
        now, wall = self._clock.now(), self._clock.wall()
        offset = wall - now
        # Encoded deadlines stay right while the wall clock keeps pace with the monotonic one;
        # a step of a second (NTP, a suspend) re-encodes them.
        drift = round(offset)
        started = time.thread_time()
        parts: list[bytes] = []
        records = reg.records()
        for ident, health in records.items():
            stamp = reg.stamp_of(ident)  # None for a removed server's kept record
            kept = self._records.get(ident)
            if stamp is None or kept is None or kept[0] != (stamp, drift):
                blob = _dumps(encode_record(ident, health, offset))
                kept = (None, blob) if stamp is None else ((stamp, drift), blob)
                if stamp is not None:
                    self._records[ident] = kept
                if time.thread_time() - started >= SLICE_S:
                    yield None
                    started = time.thread_time()
            parts.append(kept[1])
        if len(self._records) > len(records):
            self._records = {i: k for i, k in self._records.items() if i in records}
        tasks = reg.router.tasks
        if self._tasks is None or self._tasks[0] != (tasks.changes, drift):
            self._tasks = ((tasks.changes, drift), _dumps(encode_tasks(tasks.dump(), offset)))
        spend = reg.router.spend.dump()
        head = _dumps({"format": STATE_FORMAT, "saved_at": round(wall, 3)})
        tail = b',\n"tasks":' + self._tasks[1]
        if spend is not None:
            tail += b',\n"spend":' + _dumps(encode_spend(spend))
        yield head[:-1] + b',\n"backends":[\n' + b",\n".join(parts) + b"\n]" + tail + b"}\n"

    def _write(self, data: bytes) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(self.path, data, mode=0o600, durable=True)

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self._dirty.wait()
                self._dirty = anyio.Event()
                await self._clock.sleep(SAVE_DELAY_S)
                await self.save_if_changed()
        finally:
            with anyio.CancelScope(shield=True):
                await self.save_if_changed()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()

"""Hot reload: validate a new configuration completely, then switch to it in one step.

Triggers: the file changing (watched through its directory, so write-and-rename and
symlink swaps are seen), SIGHUP, and `POST /v1/reload`. A configuration that does not
validate changes nothing: the daemon keeps running on the last good one.

The file is read, parsed and validated in a worker thread: a 5,000-backend file takes
about a second, and the loop goes on answering agents meanwhile. Only the switch itself
(the appliers) runs on the loop, in one synchronous step.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
from watchfiles import Change, watch

from hroute.config.model import Config
from hroute.core.errors import ConfigError
from hroute.edges.config_file import MAX_CONFIG_BYTES, read_config
from hroute.edges.files import read_regular_file

log = logging.getLogger("hroute")

DEBOUNCE_MS = 50  # editors write a file in several steps; one reload per burst
# How often the watcher thread wakes to look for changes and for its stop: each wake takes the
# GIL (at 10 ms this thread alone cost an idle daemon 0.45 % of a core, at 200 ms 0.06 %).
# A change waits at most a step more before it is read (plus SETTLE_S); SIGHUP and
# `hroute reload` do not wait. A stop does not wait for the thread (it is let go).
STEP_MS = 1000
# A reload reads the file only once it has stopped changing: an in-place save (truncate,
# then write) or a slow writer must not be applied half way. Its (inode, size, mtime) must
# hold still for SETTLE_S; a file that never settles is read after SETTLE_MAX_S anyway.
SETTLE_S = 0.2
SETTLE_MAX_S = 5.0


@dataclass(frozen=True)
class ConfigDiff:
    """What a new configuration changes, by backend name."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # same identity, other fields changed: health is kept
    renewed: tuple[str, ...] = ()  # identity changed: health starts fresh
    restart: tuple[str, ...] = ()  # supervised command/env/cwd changed
    profiles: tuple[str, ...] = ()  # added, removed or changed profiles
    daemon_changed: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.added
            or self.removed
            or self.changed
            or self.renewed
            or self.profiles
            or self.daemon_changed
        )

    def summary(self) -> str:
        n = len
        parts = [
            f"+{n(self.added)} backend{'s' if n(self.added) != 1 else ''}",
            f"-{n(self.removed)}",
            f"{n(self.changed) + n(self.renewed)} changed",
            f"{n(self.restart)} restart{'s' if n(self.restart) != 1 else ''}",
        ]
        if self.profiles:
            parts.append(f"profiles changed: {', '.join(self.profiles)}")
        return "reloaded: " + ", ".join(parts)


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Compare two configurations (pure)."""
    ob, nb = old.backends, new.backends
    common = [name for name in nb if name in ob]
    changed = tuple(n for n in common if ob[n] != nb[n] and ob[n].identity == nb[n].identity)
    renewed = tuple(n for n in common if ob[n].identity != nb[n].identity)
    restart = tuple(
        n
        for n in common
        if None not in (ob[n].process_spec, nb[n].process_spec)
        and ob[n].process_spec != nb[n].process_spec
    )
    profile_names = set(old.profiles) | set(new.profiles)
    profiles = tuple(sorted(p for p in profile_names if old.profiles.get(p) != new.profiles.get(p)))
    return ConfigDiff(
        added=tuple(n for n in nb if n not in ob),
        removed=tuple(n for n in ob if n not in nb),
        changed=changed,
        renewed=renewed,
        restart=restart,
        profiles=profiles,
        daemon_changed=old.daemon != new.daemon,
    )


@dataclass
class ReloadResult:
    ok: bool
    summary: str = ""
    error: str = ""
    diff: ConfigDiff | None = None

    def as_json(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "summary": self.summary}
        return {"ok": False, "error": {"code": "config_rejected", "message": self.error}}


Applier = Callable[[Config, Config, ConfigDiff], None]


@dataclass
class Reloader:
    """Owns the switch from one configuration to the next."""

    path: Path
    current: Config
    apply: list[Applier] = field(default_factory=list)  # called in order, without awaiting
    on_result: Callable[[ReloadResult, str], None] = lambda result, trigger: None
    on_start: Callable[[], None] = lambda: None  # systemd: RELOADING=1
    sleep: Callable[[float], Any] = anyio.sleep  # a fake clock's, in tests
    # Cheap checks the watcher's thread runs once a second besides its own (the socket
    # file's): the loop is woken only when one finds something to do.
    also_check: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = anyio.Lock()
        self._digest = _digest(self.path)  # at start-up, before the loop serves anyone
        self._attempted = self._digest  # the content last tried, good or bad

    async def reload(self, trigger: str) -> ReloadResult:
        """Read, validate and apply the file; on any error keep the running configuration."""
        async with self._lock:
            self.on_start()
            await self._settled()
            result = await self._reload()
            self.on_result(result, trigger)
            return result

    async def _settled(self) -> None:
        last, waited = _stat_key(self.path), 0.0
        while waited < SETTLE_MAX_S:
            await self.sleep(SETTLE_S)
            waited += SETTLE_S
            now = _stat_key(self.path)
            if now == last:
                return
            last = now

    async def _reload(self) -> ReloadResult:
        # The lock is held: nothing else changes `current` until this reload is done.
        digest, read = await anyio.to_thread.run_sync(self._read, self.current)
        self._attempted = digest
        if isinstance(read, str):
            return ReloadResult(False, error=read)
        new, diff = read
        old, self.current, self._digest = self.current, new, digest
        # Every applier runs in this one synchronous step: no query sees half of each.
        for applier in self.apply:
            applier(old, new, diff)
        if diff.daemon_changed:
            log.warning("daemon settings changed; socket and metrics_listen take effect at restart")
        return ReloadResult(
            True, summary=diff.summary() if not diff.empty else "reloaded: no change", diff=diff
        )

    def _read(self, current: Config) -> tuple[str | None, tuple[Config, ConfigDiff] | str]:
        """In a worker thread: the file's digest, and its configuration with what it changes
        from `current`, or why it is refused."""
        digest = _digest(self.path)
        try:
            with _gc_paused():
                new = read_config(self.path)
            return digest, (new, diff_configs(current, new))
        except ConfigError as exc:
            return digest, str(exc)
        except Exception as exc:  # whatever goes wrong, the running config stays
            log.exception("reading %s failed", self.path)
            return digest, f"{self.path}: cannot be read: {type(exc).__name__}: {exc}"

    async def watch(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """Reload when the file (or the target of its symlink) changes.

        inotify events make it immediate (within a step); a check every second (a stat, and
        a read when the stat moved) also catches what events cannot: a change made before
        the watcher started, or an edit of a symlink target that moved to another directory.
        A file that was tried and rejected is not tried again until its content changes.

        The watching and the content check run in one worker thread for the daemon's life;
        the loop hears from it only when the content changed (an idle daemon's loop spent
        more on a thread hop and a cancel scope every second than on its probes).
        """
        target = self.path.absolute()
        dirs = {target.parent, target.resolve().parent}
        # The watcher's thread cannot be cancelled: only this event, looked at every `step`,
        # ends it. Set when this task is cancelled; the task does not wait for the thread.
        stop = threading.Event()
        async with anyio.create_task_group() as tg:

            async def stop_on_cancel() -> None:
                try:
                    await anyio.sleep_forever()
                finally:
                    stop.set()

            tg.start_soon(stop_on_cancel)
            task_status.started()
            await anyio.to_thread.run_sync(
                self._watch_in_thread, dirs, stop, abandon_on_cancel=True
            )
            tg.cancel_scope.cancel()

    def _watch_in_thread(self, dirs: set[Path], stop: threading.Event) -> None:
        seen: tuple[int, int, int] | None | bool = False  # nothing seen yet: read it once
        for _changes in watch(
            *dirs,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            recursive=False,
            watch_filter=lambda change, p: self._concerns(change, p),
            ignore_permission_denied=True,
            rust_timeout=1000,
            yield_on_timeout=True,
            stop_event=stop,
            raise_interrupt=False,
        ):
            if stop.is_set():
                return
            for check in self.also_check:
                check()
            # The content is read only when the file's (inode, size, mtime) moved: a read
            # each second woke the watcher's own inotify thread as well (open, close).
            if (key := _stat_key(self.path)) == seen:
                continue
            seen = key
            if _digest(self.path) != self._attempted:
                anyio.from_thread.run(self.reload, "file changed")

    def _concerns(self, change: Change, changed: str) -> bool:
        p = Path(changed)
        target = self.path.absolute()
        return p == target or p == target.resolve() or p.name == target.name


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Parsing builds some 10**5 objects, and the cyclic collector, run in this thread each
    # time they pass its threshold, holds the GIL over all of them: a 5,000-backend reload
    # stalled the loop for 300-400 ms that way, and for under 100 ms with it paused (the
    # parse itself takes half the time). Reloads are serialised: one pause at a time.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _digest(path: Path) -> str | None:
    # Blocking I/O: called in a worker thread. A FIFO or a device in the file's place has
    # no digest (and is refused by read_config), rather than a read that never ends.
    try:
        return hashlib.sha256(read_regular_file(path, MAX_CONFIG_BYTES)).hexdigest()
    except OSError:
        return None

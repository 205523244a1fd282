"""sd_notify: tell systemd when hroute is ready, what it is doing, and that it is alive.

Under `Type=notify` systemd waits for READY=1 before it calls the service started, shows the
last STATUS= in `systemctl status`, and (with `WatchdogSec=`) kills and restarts a daemon that
stops sending WATCHDOG=1. The pings come from the event loop itself, so a loop wedged by a
blocking call is exactly what stops them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
import sdnotify

from hroute.core.events import Topic

STATUS_REFRESH_S = 1.0  # also puts STATUS= back after a reload's READY=1 replaced it
STATUS_NOTES_MAX = 3  # keep STATUS= one short line


class Notifier:
    """A thin wrapper over `sdnotify`; does nothing when not started by systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._env = env
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self.last_status: str | None = None
        self._sd: sdnotify.SystemdNotifier | None = None

    def _send(self, message: str) -> None:
        if self.enabled and self._sd is None:
            self._sd = sdnotify.SystemdNotifier()
        if self._sd is not None:
            # sdnotify encodes as latin-1 and silently drops what does not fit; hand it the
            # UTF-8 bytes spelled as latin-1 so a backend named "llama-café" still shows.
            self._sd.notify(message.encode().decode("latin-1"))

    def ready(self, status: str) -> None:
        self.last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.last_status = status
        self._send(f"STATUS={status}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """Say a reload began; `ready()` ends it. MONOTONIC_USEC lets systemd ≥ 253 tell this
        reload from an earlier one; 252 ignores it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._sd is not None and self._sd.socket is not None:
            self._sd.socket.close()
        self._sd = None

    def watchdog_interval_s(self) -> float | None:
        """`WatchdogSec=` in seconds when systemd expects pings from this process, else None."""
        if not self.enabled:
            return None
        pid = self._env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            return None  # the variable was inherited from a parent that is the watched one
        try:
            usec = int(self._env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        return usec / 1e6 if usec > 0 else None


async def keep_watchdog(notifier: Notifier, sleep: Callable[[float], Awaitable[None]]) -> None:
    """Ping systemd's watchdog from the event loop at half its interval, for as long as the
    loop runs; return at once when no watchdog is configured. `sleep` is the real clock's:
    the watchdog is systemd's timer, not ours."""
    interval_s = notifier.watchdog_interval_s()
    if interval_s is None:
        return
    while True:
        notifier.watchdog()
        await sleep(interval_s / 2)


async def keep_status(registry: Any, notifier: Notifier) -> None:
    """Keep STATUS= equal to `status_line()` of the registry: recomputed when the registry
    changes, sent only when it differs from the last STATUS= sent (which a reload's READY=1
    may have set meanwhile)."""
    if not notifier.enabled:
        return
    changed = anyio.Event()

    def wake() -> None:
        changed.set()

    registry.subscribe(Topic.CHANGED, wake)
    seen: int | None = None
    line = None
    while True:
        if seen != registry.version or notifier.last_status != line:
            seen = registry.version
            line = status_line(registry.views())
            if line != notifier.last_status:
                notifier.status(line)
        with anyio.move_on_after(STATUS_REFRESH_S):
            await changed.wait()
        changed = anyio.Event()


def status_line(views: Iterable[Mapping[str, Any]]) -> str:
    """One line for `systemctl status`, e.g. "4 backends: 3 usable; llama-local starting"."""
    views = list(views)
    usable = sum(1 for v in views if v["usable"])
    notes = []
    for v in views:
        why = v.get("reason") or v["state"]
        if v["state"] == "starting":
            notes.append(f"{v['name']} starting")
        elif v["usable"]:
            continue
        elif v["state"] == "unhealthy":
            notes.append(f"{v['name']} down ({why})")
        elif v.get("cooldown_remaining_s"):
            notes.append(f"{v['name']} cooling down ({why})")
        else:
            notes.append(f"{v['name']} unusable ({why})")
    if len(notes) > STATUS_NOTES_MAX:
        notes[STATUS_NOTES_MAX:] = [f"{len(notes) - STATUS_NOTES_MAX} more"]
    noun = "backend" if len(views) == 1 else "backends"
    return "; ".join([f"{len(views)} {noun}: {usable} usable", *notes])

"""`mode: systemd`: the server runs as its own unit; hroute watches it and restarts it on a hang.

So restarting hroute never reloads a 30 GB model. systemd restarts crashes (the unit's own
`Restart=`); hroute reads the unit's state (`systemctl show`), notices the main process
exiting at once (a pidfd on MainPID), and on a hang, which systemd cannot see, runs
`systemctl restart`. One task owns all of this, like the child supervisor.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from hroute.config.model import BackendConfig
from hroute.core.clock import Clock
from hroute.core.health import ProbeOutcome
from hroute.core.registry import Registry
from hroute.core.supervisor import HangCount, ProcState
from hroute.edges.clock import call_within

log = logging.getLogger("hroute.supervise")

UNIT_POLL_S = 1.0  # how often the unit's state is read; an exit is seen at once anyway
SYSTEMCTL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class UnitState:
    """What `systemctl show -p ActiveState,SubState,MainPID UNIT` says."""

    active: str
    sub: str
    main_pid: int | None


def parse_unit_state(text: str) -> UnitState:
    """Parse `systemctl show` output (KEY=value lines)."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    pid = fields.get("MainPID", "0").strip()
    return UnitState(
        fields.get("ActiveState", "unknown").strip(),
        fields.get("SubState", "unknown").strip(),
        int(pid) if pid.isdigit() and int(pid) > 0 else None,
    )


def process_state(unit: UnitState) -> ProcState:
    """The supervisor state that a unit's ActiveState amounts to."""
    return {
        "active": ProcState.RUNNING,
        "reloading": ProcState.RUNNING,
        "activating": ProcState.STARTING,
        "deactivating": ProcState.STOPPING,
        "failed": ProcState.FATAL,
    }.get(unit.active, ProcState.STOPPED)


@dataclass(frozen=True)
class _PidExited:
    pid: int


MAILBOX_SIZE = 64  # probe results and exit notices; a restart request never waits in it


@dataclass(frozen=True)
class _Wake:
    pass  # look at the restart flag


_Message = ProbeOutcome | _PidExited | _Wake


class UnitSupervisor:
    """Watches `backend.supervise.unit`; restarts it through systemctl on a hang or on request."""

    def __init__(
        self,
        name: str,
        backend: BackendConfig,
        registry: Registry,
        clock: Clock,
        *,
        systemctl: Sequence[str] = ("systemctl",),
    ) -> None:
        assert backend.supervise is not None and backend.supervise.unit is not None
        self.name, self.backend, self.settings = name, backend, backend.supervise
        self.unit: str = backend.supervise.unit
        self._registry, self._clock, self._systemctl = registry, clock, list(systemctl)
        self.state = ProcState.STOPPED
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit: dict[str, Any] | None = None
        self.last_restart_reason: str | None = None
        self.detail = ""
        self._hangs = HangCount()
        self._restarting_from: int | None = None  # the hung pid, until a new one runs
        self._watched: int | None = None
        self._send, self._mailbox = anyio.create_memory_object_stream[_Message](MAILBOX_SIZE)
        self._restart_wanted = False
        self._new_backend: BackendConfig | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    def observe(self, outcome: ProbeOutcome) -> None:
        self._post(outcome)

    def request_restart(self) -> dict[str, Any]:
        """Restart now (an operator's request): a flag, so a full mailbox never drops it."""
        self._restart_wanted = True
        self._post(_Wake())
        return self.view()

    def reconfigure(self, backend: BackendConfig) -> None:
        """New policy settings for the same unit; the owner takes them at its next turn."""
        self._new_backend = backend
        self._post(_Wake())

    def _post(self, message: _Message) -> None:
        # A dropped probe result: the next one comes. A dropped wake: the flag is already set.
        with contextlib.suppress(
            anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
        ):
            self._send.send_nowait(message)

    def view(self) -> dict[str, Any]:
        return {
            "mode": "systemd",
            "unit": self.unit,
            "state": str(self.state),
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_restart_reason": self.last_restart_reason,
            "detail": self.detail,
        }

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                while True:
                    await self._refresh()
                    message = await call_within(self._clock, UNIT_POLL_S, self._mailbox.receive)
                    if self._new_backend is not None:
                        self.backend, self._new_backend = self._new_backend, None
                        self.settings = self.backend.supervise  # type: ignore[assignment]
                    if self._restart_wanted:
                        self._restart_wanted = False
                        await self._handle("restart")
                    if message is not None and not isinstance(message, _Wake):
                        await self._handle(message)
            finally:
                self._send.close()
                tg.cancel_scope.cancel()

    async def _handle(self, message: _Message | str) -> None:
        if message == "restart":
            self._registry.emit(
                "restart", backend=self.name, reason="manual", detail=f"restarting {self.unit}"
            )
            await self._restart("manual", reset_failed=True)
        elif isinstance(message, _PidExited):
            if message.pid == self.pid:
                self.last_exit = {"code": None, "signal": None, "at": round(self._clock.wall(), 3)}
                detail = f"{self.unit}: main pid {message.pid} exited; the unit's Restart= decides"
                self._down("exited", detail, "unit_exited")
        elif isinstance(message, ProbeOutcome) and self.state is ProcState.RUNNING:
            if self._restarting_from is not None:
                self._hangs = HangCount()
                return
            if self._hangs.observe(message.reason, self.settings.hang_restart_after):
                detail = (
                    f"{self.unit}: pid {self.pid} is alive but {self._hangs.count} probes in a row "
                    f"got no answer ({message.detail}); systemctl restart {self.unit}"
                )
                self._down("hang", detail, "restart")
                await self._restart("hang")

    async def _restart(self, reason: str, *, reset_failed: bool = False) -> None:
        self._hangs = HangCount()
        self.restarts += 1
        self.last_restart_reason = reason
        self._restarting_from = self.pid or 0
        # --no-ask-password: never wait for a password prompt; authorisation is root or polkit.
        if reset_failed:  # else a unit that hit its own start limit refuses to start
            await self._systemctl_run("--no-ask-password", "reset-failed", self.unit)
        ok, out = await self._systemctl_run("--no-ask-password", "restart", "--no-block", self.unit)
        if not ok:
            self.detail = f"systemctl restart {self.unit} failed: {out}"
            log.error("%s: %s", self.name, self.detail)

    async def _refresh(self) -> None:
        ok, out = await self._systemctl_run(
            "show", "-p", "ActiveState", "-p", "SubState", "-p", "MainPID", self.unit
        )
        if not ok:
            self._set(ProcState.STOPPED, None, f"cannot read the state of {self.unit}: {out}")
            return
        unit = parse_unit_state(out)
        state = process_state(unit)
        if self._restarting_from is not None and state is ProcState.RUNNING:
            if unit.main_pid == self._restarting_from:
                state = ProcState.STOPPING  # systemd has not acted on the restart yet
            else:
                self._restarting_from = None
        old, old_pid = self.state, self.pid
        self._set(state, unit.main_pid, f"{self.unit}: {unit.active} ({unit.sub})")
        if state is ProcState.RUNNING and (old is not ProcState.RUNNING or old_pid != self.pid):
            self._registry.unblock(self.name)  # the probes decide from here
        elif state is ProcState.FATAL and old is not ProcState.FATAL:
            detail = (
                f"{self.unit} failed and systemd gave up on it (see: systemctl status {self.unit}; "
                f"journalctl -u {self.unit}); then run: hroute restart {self.name}"
            )
            self._down("fatal", detail, "fatal", reason="unit_failed")
        if unit.main_pid is not None and unit.main_pid != self._watched:
            self._watched = unit.main_pid
            assert self._tg is not None
            self._tg.start_soon(self._watch_pid, unit.main_pid)

    def _down(self, block: str, detail: str, event: str, reason: str | None = None) -> None:
        """Unusable from now on, whatever probes say, for `block`; told as `event`."""
        self._registry.block(self.name, block, detail)
        self._registry.emit(event, backend=self.name, reason=reason or block, detail=detail)

    def _set(self, state: ProcState, pid: int | None, detail: str) -> None:
        self.state, self.pid, self.detail = state, pid, detail

    async def _watch_pid(self, pid: int) -> None:
        """Post an exit of the unit's main process the moment it happens (not at the next poll)."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # gone already, or not visible from here: the next poll sees it
        try:
            await anyio.wait_readable(fd)
        finally:
            os.close(fd)
        self._post(_PidExited(pid))

    async def _systemctl_run(self, *args: str) -> tuple[bool, str]:
        try:
            with anyio.fail_after(SYSTEMCTL_TIMEOUT_S):
                done = await anyio.run_process([*self._systemctl, *args], check=False)
        except (OSError, TimeoutError) as exc:
            return False, str(exc) or type(exc).__name__
        text = (done.stdout if done.returncode == 0 else done.stderr or done.stdout).decode(
            "utf-8", "replace"
        )
        return done.returncode == 0, text.strip()

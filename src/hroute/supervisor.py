"""One task per supervised server that owns its process: start, watch, restart, stop.

Other tasks never touch the process. They send intents (`request_restart`) and health
observations (`observe`, from the prober) into the owner's mailbox; the owner handles them
one at a time along with the process's own exit. The restart policy (`backoff.py`) decides
delays and when to give up; this module does what it decides and tells the registry, which
keeps the backend unusable from the moment the process is gone.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import anyio

from .backoff import RestartPolicy
from .child import Child, describe_exit, forward_lines, port_listener, spawn_child, stop_child
from .classify import Reason
from .config import BackendConfig
from .health import ProbeOutcome
from .registry import Clock, Registry

log = logging.getLogger("hroute.supervise")
child_log = logging.getLogger("hroute.child")

MAILBOX_SIZE = 64  # observations beyond this are dropped: the next probe brings another
STARTUP_POLL_MIN_S = 0.05  # ask the prober for /health this soon after a spawn ...
STARTUP_POLL_MAX_S = 1.0  # ... then less and less often while a big model loads
STARTUP_POLL_GROWTH = 1.2

# systemd hands these to hroute alone; a server that saw them could answer for hroute.
SYSTEMD_ONLY_FOR_HROUTE = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}
)

# Reasons the supervisor holds a backend unusable for, whatever its probes say.
HOLD_REASONS = ("exited", "hang", "startup_timeout", "port_in_use", "spawn_failed", "fatal")


class ProcState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FATAL = "fatal"


@dataclass(frozen=True)
class _Exited:
    child: Child
    returncode: int


@dataclass(frozen=True)
class _Observed:
    outcome: ProbeOutcome
    began_at: float  # when the probe was sent: one sent before a spawn says nothing of it


@dataclass(frozen=True)
class _RestartRequested:
    pass


_Message = _Exited | _Observed | _RestartRequested


@dataclass(frozen=True)
class _Ended:
    why: str  # exited | hang | startup_timeout | port_in_use | spawn_failed | manual
    detail: str = ""
    ran_for_s: float = 0.0  # time since it became ready, for the backoff reset


class ChildSupervisor:
    """Runs `backend.supervise.command` as hroute's child and keeps it alive."""

    def __init__(
        self,
        name: str,
        backend: BackendConfig,
        registry: Registry,
        clock: Clock,
        *,
        poke: Callable[[str], None],
        spawn: Callable[..., Child] = spawn_child,
        env: dict[str, str] | None = None,
    ) -> None:
        assert backend.supervise is not None
        self.name, self.backend, self.settings = name, backend, backend.supervise
        self._registry, self._clock, self._poke, self._spawn = registry, clock, poke, spawn
        inherited = os.environ if env is None else env
        self._env = {
            **{k: v for k, v in inherited.items() if k not in SYSTEMD_ONLY_FOR_HROUTE},
            **self.settings.env,
        }
        self.policy = RestartPolicy(self.settings.restart, self.settings.start_limit)
        self.state = ProcState.STOPPED
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit: dict[str, Any] | None = None
        self.last_restart_reason: str | None = None
        self.detail = ""
        self._child: Child | None = None
        self._hangs = 0
        self._send, self._mailbox = anyio.create_memory_object_stream[_Message](MAILBOX_SIZE)
        self._tg: anyio.abc.TaskGroup | None = None

    # --- doors for other tasks (never block, never touch the process) -------------------

    def observe(self, outcome: ProbeOutcome) -> None:
        """A probe of this backend finished (called by the prober)."""
        began_at = self._clock.now() - (outcome.latency_ms or 0.0) / 1000
        self._post(_Observed(outcome, began_at))

    def request_restart(self) -> dict[str, Any]:
        """Restart now, whatever the state; clears `fatal` and the start history."""
        self._post(_RestartRequested())
        return self.view()

    def _post(self, message: _Message) -> None:
        try:
            self._send.send_nowait(message)
        except anyio.WouldBlock:
            log.debug("%s: mailbox full, dropping %s", self.name, type(message).__name__)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def view(self) -> dict[str, Any]:
        return {
            "mode": "child",
            "state": str(self.state),
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_restart_reason": self.last_restart_reason,
            "detail": self.detail,
        }

    # --- the owner task -------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the server and keep it going until cancelled; then stop it gracefully."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await self._lifecycle()
            finally:
                with anyio.CancelScope(shield=True):
                    if self._child is not None:
                        await self._stop(self._child, "hroute is stopping")
                    self._set(ProcState.STOPPED, "")
                    self._send.close()
                tg.cancel_scope.cancel()

    async def _lifecycle(self) -> None:
        reason: str | None = None  # why the next start happens; None for the first
        delay = 0.0
        while True:
            if self.state is ProcState.FATAL:
                await self._next(lambda m: isinstance(m, _RestartRequested))
                reason = "manual"
            elif delay > 0:
                with anyio.move_on_after(delay):
                    await self._next(lambda m: isinstance(m, _RestartRequested))
                    reason = "manual"
            if reason == "manual":
                self.policy.reset()
                self._emit("restart", "manual", "restart requested; start history cleared")
            ended = await self._run_once(reason)
            reason, detail = ended.why, ended.detail
            if ended.why == "manual":
                delay = 0.0
                continue
            decision = self.policy.after_failure(self._clock.now(), ended.ran_for_s)
            delay = decision.delay_s
            if decision.fatal:
                self._fatal(ended, decision.why)
            else:
                # journald: HROUTE_EVENT=restart, HROUTE_REASON=exited|hang|startup_timeout|...
                self._emit("restart", ended.why, f"{ended.detail}; restarting in {delay:g}s")
                self._set(ProcState.BACKOFF, f"{detail}; next start in {delay:g}s")

    async def _next(self, wanted: Callable[[_Message], bool]) -> _Message:
        """The next message `wanted` accepts; others (stale exits, observations) are dropped."""
        while True:
            message = await self._mailbox.receive()
            if wanted(message):
                return message

    async def _run_once(self, reason: str | None) -> _Ended:
        """Start the process once and supervise it until it has to be started again."""
        now = self._clock.now()
        self.policy.record_start(now)
        if reason is not None:
            self.restarts += 1
            self.last_restart_reason = reason
        host, port = _host_port(self.backend.base_url)
        if await port_listener(host, port):
            detail = (
                f"port {port} on {host} is already in use by another process; not starting "
                f"the server (find the other one with: ss -ltnp 'sport = :{port}')"
            )
            return self._failed_start("port_in_use", detail)
        try:
            child = self._spawn(self.settings.command, self._env, self.settings.cwd, now)
        except OSError as exc:
            return self._failed_start(
                "spawn_failed", f"cannot start {self.settings.command[0]}: {exc}"
            )
        self._child, self.pid, self._hangs = child, child.pid, 0
        assert self._tg is not None
        self._tg.start_soon(forward_lines, child.output_fd, self._forward)
        self._tg.start_soon(self._watch_exit, child)
        self._registry.hold(self.name, None)
        self._set(ProcState.STARTING, "waiting for /health")
        why = f" ({reason})" if reason else ""
        self._emit(
            "process_started",
            reason,
            f"started pid {child.pid}{why}: {' '.join(self.settings.command)}",
        )
        return await self._watch(child)

    async def _watch(self, child: Child) -> _Ended:
        deadline = child.started_at + self.settings.startup_timeout_s
        ready_at: float | None = None
        poll_s = STARTUP_POLL_MIN_S
        next_poke = child.started_at + poll_s
        confirm_at: float | None = None  # when to probe a suspected hang again
        while True:
            now = self._clock.now()
            if self.state is ProcState.STARTING:
                if now >= deadline:
                    s = self.settings.startup_timeout_s
                    detail = f"pid {child.pid} not ready within startup_timeout_s {s:g}s"
                    self._down("startup_timeout", detail)
                    await self._stop(child, "startup timeout")
                    return _Ended("startup_timeout", detail)
                if now >= next_poke:  # /health now, not at the prober's next turn
                    self._poke(self.name)
                    poll_s = min(poll_s * STARTUP_POLL_GROWTH, STARTUP_POLL_MAX_S)
                    next_poke = now + poll_s
                wake_at: float | None = min(next_poke, deadline)
            else:
                if confirm_at is not None and now >= confirm_at:
                    self._poke(self.name)
                    confirm_at = None
                wake_at = confirm_at
            message = await self._receive(wake_at)
            now = self._clock.now()
            ran_for = 0.0 if ready_at is None else now - ready_at
            if message is None or (
                isinstance(message, _Observed) and message.began_at < child.started_at
            ):
                continue
            if isinstance(message, _Exited):
                if message.child is child:
                    return self._exited(child, message.returncode, ran_for)
            elif isinstance(message, _RestartRequested):
                await self._stop(child, "restart requested")
                return _Ended("manual")
            elif self.state is ProcState.STARTING:
                if message.outcome.reason is None and not message.outcome.starting:
                    ready_at = now
                    self._set(ProcState.RUNNING, "")
                    took = now - child.started_at
                    self._emit("process_ready", None, f"pid {child.pid} ready after {took:.2f}s")
            elif message.outcome.reason is Reason.TIMEOUT:
                self._hangs += 1
                if self._hangs >= self.settings.hang_restart_after:
                    detail = (
                        f"pid {child.pid} is alive but {self._hangs} probes in a row got no "
                        f"answer ({message.outcome.detail})"
                    )
                    self._down("hang", detail)
                    await self._stop(child, "hang")
                    return _Ended("hang", detail, ran_for)
                # The prober waits a full interval after a probe that timed out: start the
                # confirming probe one interval after the last one began instead, so a hang
                # is acted on within hang_restart_after x interval + timeout.
                interval = self._registry.config.probe_for(self.name).interval_s
                took = (message.outcome.latency_ms or 0.0) / 1000
                confirm_at = now + max(0.0, interval - took)
            else:
                self._hangs, confirm_at = 0, None

    async def _receive(self, until: float | None) -> _Message | None:
        """The next message, or None once the clock reaches `until`."""
        if until is None:
            return await self._mailbox.receive()
        with anyio.move_on_after(max(0.0, until - self._clock.now())):
            return await self._mailbox.receive()
        return None

    async def _watch_exit(self, child: Child) -> None:
        # Shielded: the exit is awaited even while hroute shuts down, so stop_child can rely on it.
        with anyio.CancelScope(shield=True):
            code = await child.wait()
        self._post(_Exited(child, code))

    def _exited(self, child: Child, code: int, ran_for: float) -> _Ended:
        self._record_exit(child, code)
        child.signal_group(signal.SIGKILL)  # anything it forked goes with it
        uptime = self._clock.now() - child.started_at
        detail = f"pid {child.pid} {describe_exit(code)} after {uptime:.1f}s"
        self._down("exited", detail)
        return _Ended("exited", detail, ran_for)

    async def _stop(self, child: Child, why: str) -> None:
        self._set(ProcState.STOPPING, why)
        how = await stop_child(child, self.settings.stop_timeout_s)
        self._record_exit(child, child.returncode)
        level = logging.WARNING if how.startswith("killed") else logging.INFO
        log.log(level, "%s: pid %d %s (%s)", self.name, child.pid, how, why)

    def _record_exit(self, child: Child, code: int | None) -> None:
        signal_name = (
            describe_exit(code).removeprefix("was killed by ") if code and code < 0 else None
        )
        self.last_exit = {
            "code": code if code is not None and code >= 0 else None,
            "signal": signal_name,
            "uptime_s": round(self._clock.now() - child.started_at, 3),
            "at": round(self._clock.wall(), 3),
        }
        if self._child is child:
            self._child, self.pid = None, None

    def _failed_start(self, why: str, detail: str) -> _Ended:
        self._down(why, detail)
        return _Ended(why, detail)

    def _fatal(self, last: _Ended, why: str) -> None:
        detail = (
            f"{last.detail}; giving up after {why}; not restarting. Fix the cause (see the "
            f"lines above, tagged [{self.name}]), then run: hroute restart {self.name}"
        )
        self._set(ProcState.FATAL, why)
        self._down("fatal", detail)
        self._emit("fatal", last.why, detail)

    def _down(self, reason: str, detail: str) -> None:
        """The server is gone or useless from now on: routes must fall through at once."""
        self._registry.mark_down(self.name, reason, detail)
        self._registry.hold(self.name, reason)

    def _set(self, state: ProcState, detail: str) -> None:
        self.state, self.detail = state, detail

    def _emit(self, event: str, reason: str | None, detail: str) -> None:
        self._registry.emit(event, backend=self.name, reason=reason, detail=detail)

    def _forward(self, line: str) -> None:
        child_log.info("[%s] %s", self.name, line)


def _host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)

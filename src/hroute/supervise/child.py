"""`mode: child`: the effects loop that runs one server as hroute's child process.

It decides nothing. `hroute.core.supervisor.ChildMachine` decides; this loop performs its
actions (spawn, stop, block the backend, tell the journal, probe now) and feeds back what
happened. It is the only code that touches the process. Other tasks reach it through three
doors that never block and never drop what matters: `observe` (a probe result; the last
64 are kept), `request_restart` (a flag: an operator's restart is never lost) and
`reconfigure` (the latest settings win). Exits are kept until handled.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import anyio

from hroute.config.model import BackendConfig
from hroute.core.clock import Clock
from hroute.core.gpu import GpuOom, describe_oom, match_gpu_oom
from hroute.core.health import ProbeOutcome
from hroute.core.registry import Registry
from hroute.core.supervisor import (
    BLOCK_REASONS,
    Action,
    Block,
    ChildMachine,
    Event,
    Exited,
    GpuResetSeen,
    KillGroup,
    MarkStarting,
    Poke,
    Probed,
    ProcState,
    RestartRequested,
    Spawn,
    Spawned,
    StartFailed,
    Stop,
    Stopped,
    Tell,
)
from hroute.edges.clock import wait_until
from hroute.supervise.process import (
    Child,
    describe_exit,
    forward_lines,
    port_listener,
    spawn_child,
    stop_child,
)

__all__ = ["BLOCK_REASONS", "ChildSupervisor", "ProcState"]

log = logging.getLogger("hroute.supervise")
child_log = logging.getLogger("hroute.child")

OBSERVATIONS_KEPT = 64  # older probe results are dropped: the next probe brings another
OUTPUT_DRAIN_S = 0.5  # after an exit, wait this long at most for its last lines (an OOM line)

# systemd hands these to hroute alone; a server that saw them could answer for hroute.
SYSTEMD_ONLY_FOR_HROUTE = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}
)


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
        probe: Callable[[str], Awaitable[None]] | None = None,
        spawn: Callable[..., Child] = spawn_child,
        env: dict[str, str] | None = None,
        explain_oom: Callable[[GpuOom], str] | None = None,
    ) -> None:
        assert backend.supervise is not None
        self.name, self.backend = name, backend
        self._registry, self._clock, self._poke, self._spawn = registry, clock, poke, spawn
        self._probe = probe  # the readiness poll while starting, apart from the prober's pace
        self._probing = False
        self._explain_oom = explain_oom  # what is free and who holds it (reads telemetry)
        self._ooms: dict[int, GpuOom] = {}  # pid -> its output's out-of-GPU-memory line
        self._gpu_resets: deque[str] = deque(maxlen=4)
        inherited = os.environ if env is None else env
        self._env = {
            **{k: v for k, v in inherited.items() if k not in SYSTEMD_ONLY_FOR_HROUTE},
            **backend.supervise.env,
        }
        self.machine = ChildMachine(name, backend.supervise)
        self.last_exit: dict[str, Any] | None = None
        self._child: Child | None = None
        self._exits: deque[tuple[Child, int, str | None]] = deque()
        self._probes: deque[tuple[ProbeOutcome, float]] = deque(maxlen=OBSERVATIONS_KEPT)
        self._restart_wanted = False
        self._new_backend: BackendConfig | None = None
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    # --- doors for other tasks (never block, never touch the process) -------------------

    def observe(self, outcome: ProbeOutcome) -> None:
        """A probe of this backend finished (called by the prober)."""
        began_at = self._clock.now() - (outcome.latency_ms or 0.0) / 1000
        self._probes.append((outcome, began_at))
        self._wake.set()

    def request_restart(self) -> dict[str, Any]:
        """Restart now, whatever the state; clears `fatal` and the start history."""
        self._restart_wanted = True
        self._wake.set()
        return self.view()

    def gpu_reset(self, line: str) -> None:
        """The kernel reset this server's GPU: restart it, whatever /health says."""
        self._gpu_resets.append(line)
        self._wake.set()

    def reconfigure(self, backend: BackendConfig) -> None:
        """New policy settings (timeouts, backoff, limits) for the same command."""
        self._new_backend = backend
        self._wake.set()

    def view(self) -> dict[str, Any]:
        m = self.machine
        return {
            "mode": "child",
            "state": str(m.state),
            "pid": m.pid,
            "restarts": m.restarts,
            "last_exit": self.last_exit,
            "last_restart_reason": m.last_restart_reason,
            "detail": m.detail,
        }

    @property
    def state(self) -> ProcState:
        return self.machine.state

    # --- the owner task -------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the server and keep it going until cancelled; then stop it gracefully."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await self._perform(self.machine.start(self._clock.now()))
                while True:
                    await wait_until(self._clock, self._wake, self.machine.wake_at)
                    self._wake = anyio.Event()
                    for event in self._drain():
                        await self._perform(self.machine.handle(event, self._clock.now()))
                    await self._perform(self.machine.tick(self._clock.now()))
            finally:
                with anyio.CancelScope(shield=True):
                    if self._child is not None:
                        await self._stop(self._child, "hroute is stopping")
                    self.machine.state, self.machine.detail = ProcState.STOPPED, ""
                tg.cancel_scope.cancel()

    def _drain(self) -> list[Event]:
        """What happened since the last turn, exits first: they are facts, the rest follows."""
        events: list[Event] = []
        while self._exits:
            child, code, oom = self._exits.popleft()
            if child is self._child:
                self._record_exit(child, code)
                events.append(Exited(child.pid, describe_exit(code), gpu_oom=oom))
        if self._new_backend is not None:
            self.backend, self._new_backend = self._new_backend, None
            assert self.backend.supervise is not None
            self.machine.reconfigure(self.backend.supervise)
        if self._restart_wanted:
            self._restart_wanted = False
            events.append(RestartRequested())
        while self._gpu_resets:
            events.append(GpuResetSeen(self._gpu_resets.popleft()))
        interval = self._registry.config.probe_for(self.name).interval_s
        while self._probes:
            outcome, began_at = self._probes.popleft()
            events.append(
                Probed(
                    None if outcome.reason is None else str(outcome.reason),
                    outcome.starting,
                    outcome.detail,
                    began_at,
                    (outcome.latency_ms or 0.0) / 1000,
                    interval,
                )
            )
        return events

    async def _perform(self, actions: list[Action]) -> None:
        todo = deque(actions)
        while todo:
            action = todo.popleft()
            if isinstance(action, Spawn):
                todo.extend(self.machine.handle(await self._start(), self._clock.now()))
            elif isinstance(action, Stop):
                if self._child is not None and self._child.pid == action.pid:
                    await self._stop(self._child, action.why)
                todo.extend(self.machine.handle(Stopped(action.pid), self._clock.now()))
            elif isinstance(action, KillGroup):
                self._kill_stragglers(action.pid)
            elif isinstance(action, Block):
                self._registry.block(self.name, action.reason, action.detail)
            elif isinstance(action, MarkStarting):
                self._registry.started(self.name, action.detail)
            elif isinstance(action, Tell):
                self._registry.emit(
                    action.event, backend=self.name, reason=action.reason, detail=action.detail
                )
            elif isinstance(action, Poke):
                self._poke_now()

    def _poke_now(self) -> None:
        """Probe now. While starting, the supervisor polls /health itself (every 50 ms: the
        server is local), one probe at a time, whatever pace the prober keeps for others."""
        if self._probe is None or self.machine.state is not ProcState.STARTING:
            self._poke(self.name)
        elif not self._probing and self._tg is not None:
            self._probing = True
            self._tg.start_soon(self._readiness_probe)

    async def _readiness_probe(self) -> None:
        assert self._probe is not None
        try:
            await self._probe(self.name)  # the outcome comes back through `observe`
        finally:
            self._probing = False

    async def _start(self) -> Event:
        settings = self.backend.supervise
        assert settings is not None and settings.command is not None
        host, port = _host_port(self.backend.base_url)
        if await port_listener(host, port):
            return StartFailed(
                "port_in_use",
                f"port {port} on {host} is already in use by another process; not starting "
                f"the server (find the other one with: ss -ltnp 'sport = :{port}')",
            )
        try:
            child = self._spawn(settings.command, self._env, settings.cwd, self._clock.now())
        except OSError as exc:
            return StartFailed("spawn_failed", f"cannot start {settings.command[0]}: {exc}")
        self._child = child
        assert self._tg is not None
        drained = anyio.Event()
        self._tg.start_soon(self._forward_output, child, drained)
        self._tg.start_soon(self._watch_exit, child, drained)
        return Spawned(child.pid)

    async def _forward_output(self, child: Child, drained: anyio.Event) -> None:
        def line_of_child(line: str) -> None:
            self._forward(line)
            known = self._ooms.get(child.pid)
            if known is None or known.asked_bytes is None:
                oom = match_gpu_oom(line)
                if oom is not None and (known is None or oom.asked_bytes is not None):
                    self._ooms[child.pid] = oom

        try:
            await forward_lines(child.output_fd, line_of_child)
        finally:
            drained.set()

    async def _watch_exit(self, child: Child, drained: anyio.Event) -> None:
        # Shielded: the exit is awaited even while hroute shuts down, so stop_child can rely on it.
        with anyio.CancelScope(shield=True):
            code = await child.wait()
            with anyio.move_on_after(OUTPUT_DRAIN_S):
                await drained.wait()  # its last lines may say why it died
            oom = self._ooms.pop(child.pid, None)
            said = None if oom is None else await self._explain(oom)
        self._exits.append((child, code, said))
        self._wake.set()

    async def _explain(self, oom: GpuOom) -> str:
        if self._explain_oom is None:
            return describe_oom(oom, [], [], [])
        try:
            return await anyio.to_thread.run_sync(self._explain_oom, oom)
        except Exception:  # telemetry must never stop a restart
            log.debug("%s: GPU telemetry failed", self.name, exc_info=True)
            return describe_oom(oom, [], [], [])

    def _kill_stragglers(self, pid: int) -> None:
        if self._child is not None and self._child.pid == pid:
            self._child.signal_group(signal.SIGKILL)
            self._child = None

    async def _stop(self, child: Child, why: str) -> None:
        settings = self.backend.supervise
        assert settings is not None
        how = await stop_child(child, settings.stop_timeout_s)
        self._record_exit(child, child.returncode)
        if self._child is child:
            self._child = None
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

    def _forward(self, line: str) -> None:
        child_log.info("[%s] %s", self.name, line)


def _host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)

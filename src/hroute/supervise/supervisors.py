"""Every supervised backend's owner task, and the doors other parts use to reach them.

The daemon runs one `Supervision`; it starts a supervisor (child or systemd unit) per
backend with a `supervise:` block, routes probe outcomes to it, forwards restart requests,
and follows configuration reloads (a changed command restarts the server; a removed block
stops it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from hroute.config.model import BackendConfig, Config
from hroute.core.clock import Clock
from hroute.core.errors import NotSupervisedError
from hroute.core.gpu import GpuOom, GpuReset, ResetDebounce, describe_oom, same_card
from hroute.core.health import ProbeOutcome
from hroute.core.registry import Registry
from hroute.core.supervisor import BLOCK_REASONS
from hroute.edges.gpu import GpuTelemetry, follow_kernel_log
from hroute.supervise.child import ChildSupervisor
from hroute.supervise.process import spawn_child
from hroute.supervise.systemd_unit import UnitSupervisor

Supervisor = ChildSupervisor | UnitSupervisor

log = logging.getLogger("hroute.supervise")


class Supervision:
    """Owns the supervisor tasks; `run` it in the daemon's task group."""

    def __init__(
        self,
        registry: Registry,
        clock: Clock,
        *,
        poke: Callable[[str], None],
        probe: Callable[[str], Awaitable[None]] | None = None,
        spawn: Callable[..., Any] = spawn_child,
        systemctl: Sequence[str] = ("systemctl",),
        gpu: GpuTelemetry | None = None,
        kernel_log: Path | None = None,
    ) -> None:
        self._registry, self._clock, self._poke, self._probe = registry, clock, poke, probe
        self._spawn, self._systemctl = spawn, systemctl
        self._gpu, self._kernel_log = gpu, kernel_log
        self._resets = ResetDebounce()
        self._children_started = anyio.Event()  # the kernel log is followed from the first
        self._supervisors: dict[str, Supervisor] = {}
        self._backends: dict[str, BackendConfig] = {}  # what each supervisor was last given
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._done: dict[str, anyio.Event] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        # A block saved by a previous run (state.json) belongs to a process that is gone.
        for name in registry.directory.names:
            registry.unblock(name, BLOCK_REASONS)

    @property
    def names(self) -> list[str]:
        return list(self._supervisors)

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """Start every supervisor; on cancellation each stops its server gracefully."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self.sync(self._registry.config)
            if self._kernel_log is not None:
                tg.start_soon(self._follow_resets, self._kernel_log)
            task_status.started()
            await anyio.sleep_forever()

    async def _follow_resets(self, path: Path) -> None:
        await self._children_started.wait()  # no child on a GPU, nothing to restart
        await follow_kernel_log(path, self.gpu_reset, self._clock)

    def gpu_reset(self, reset: GpuReset) -> None:
        """A GPU was reset: restart at once every server on it (every one when the line names
        no card, or when it is not known which card a server uses)."""
        if not self._resets.fresh(reset, self._clock.now()):
            return
        children = {n: s for n, s in self._supervisors.items() if isinstance(s, ChildSupervisor)}
        on_card = self._cards_of(children) if reset.pci is not None else {}
        hit = [
            name
            for name, sup in children.items()
            if reset.pci is None
            or not on_card.get(sup.machine.pid or -1)
            or any(same_card(reset.pci, pci) for pci in on_card[sup.machine.pid or -1])
        ]
        log.warning(
            "GPU reset (kernel: %s): restarting %s", reset.line, ", ".join(hit) or "nothing"
        )
        for name in hit:
            children[name].gpu_reset(reset.line)

    def _cards_of(self, children: dict[str, ChildSupervisor]) -> dict[int, set[str]]:
        """pid -> the PCI addresses of the GPUs it holds memory on, where the platform says."""
        if self._gpu is None:
            return {}
        pids = {s.machine.pid for s in children.values()}
        try:
            holders = self._gpu.holders()
        except OSError:
            return {}
        cards: dict[int, set[str]] = {}
        for h in holders:
            if h.pid in pids and h.pci:
                cards.setdefault(h.pid, set()).add(h.pci)
        return cards

    def child_pids(self) -> list[int]:
        """The servers hroute runs now (not another user's, not a stale one)."""
        return [
            pid
            for s in self._supervisors.values()
            if isinstance(s, ChildSupervisor) and (pid := s.machine.pid) is not None
        ]

    def _explain_oom(self, oom: GpuOom) -> str:
        """Called in a worker thread: reads the GPUs and scans /proc for who holds VRAM."""
        if self._gpu is None:
            return describe_oom(oom, [], [], [])
        return describe_oom(oom, self._gpu.samples(), self._gpu.holders(), self.child_pids())

    def sync(self, config: Config) -> None:
        """Supervise exactly what `config` asks for (at start and after a reload)."""
        wanted = {name: b for name, b in config.backends.items() if b.supervise is not None}
        for name, sup in list(self._supervisors.items()):
            backend = wanted.get(name)
            current = self._backends[name]
            if backend is None or backend.process_spec != current.process_spec:
                self._retire(name)
            elif backend != current:
                # Only the policy changed (timeouts, backoff, limits): keep the process. The
                # supervisor's own task applies it; nothing here reaches into its state.
                sup.reconfigure(backend)
                self._backends[name] = backend
        for name, backend in wanted.items():
            if name not in self._supervisors:
                self._launch(name, backend)

    def observe(self, name: str, outcome: ProbeOutcome) -> None:
        """A probe finished; its supervisor (same server, whatever the name) hears of it."""
        if not self._supervisors:
            return
        ident = self._registry.directory.identity(name)
        names = set(self._registry.directory.names)
        for sup_name, sup in self._supervisors.items():
            if sup_name == name or (
                sup_name in names and self._registry.directory.identity(sup_name) == ident
            ):
                sup.observe(outcome)

    async def restart(self, name: str) -> dict[str, Any]:
        """`POST /v1/backends/{name}/restart`: restart now, clearing `fatal`."""
        sup = self._supervisors.get(name)
        if sup is None:
            raise NotSupervisedError(name)
        return {"backend": name, "restart": "requested", "process": sup.request_restart()}

    def _launch(self, name: str, backend: BackendConfig) -> None:
        assert backend.supervise is not None and self._tg is not None
        if backend.supervise.mode == "systemd":
            sup: Supervisor = UnitSupervisor(
                name, backend, self._registry, self._clock, systemctl=self._systemctl
            )
        else:
            sup = ChildSupervisor(
                name,
                backend,
                self._registry,
                self._clock,
                poke=self._poke,
                probe=self._probe,
                spawn=self._spawn,
                explain_oom=self._explain_oom,
            )
            self._children_started.set()
        previous = self._done.get(name)
        scope, done = anyio.CancelScope(), anyio.Event()
        self._supervisors[name], self._scopes[name], self._done[name] = sup, scope, done
        self._backends[name] = backend
        self._registry.annotations.set_process_view(name, sup.view)
        self._tg.start_soon(self._run_one, sup, scope, done, previous)

    def _retire(self, name: str) -> None:
        del self._supervisors[name]
        del self._backends[name]
        self._scopes.pop(name).cancel()  # its task stops the server, then sets done
        if name in self._registry.directory.names:
            self._registry.annotations.set_process_view(name, None)
            self._registry.unblock(name, BLOCK_REASONS)

    async def _run_one(
        self,
        sup: Supervisor,
        scope: anyio.CancelScope,
        done: anyio.Event,
        previous: anyio.Event | None,
    ) -> None:
        try:
            with scope:
                if previous is not None:
                    await previous.wait()  # the old server has let go of the port
                await sup.run()
        finally:
            done.set()

"""Every supervised backend's owner task, and the doors other parts use to reach them.

The daemon runs one `Supervision`; it starts a supervisor (child or systemd unit) per
backend with a `supervise:` block, routes probe outcomes to it, forwards restart requests,
and follows configuration reloads (a changed command restarts the server; a removed block
stops it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from hroute.config.model import BackendConfig, Config
from hroute.core.clock import Clock
from hroute.core.health import ProbeOutcome
from hroute.core.registry import Registry
from hroute.core.supervisor import BLOCK_REASONS
from hroute.errors import NotSupervisedError
from hroute.supervise.child import ChildSupervisor
from hroute.supervise.process import spawn_child
from hroute.supervise.systemd_unit import UnitSupervisor

Supervisor = ChildSupervisor | UnitSupervisor


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
    ) -> None:
        self._registry, self._clock, self._poke, self._probe = registry, clock, poke, probe
        self._spawn, self._systemctl = spawn, systemctl
        self._supervisors: dict[str, Supervisor] = {}
        self._backends: dict[str, BackendConfig] = {}  # what each supervisor was last given
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._done: dict[str, anyio.Event] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        # A block saved by a previous run (state.json) belongs to a process that is gone.
        for name in registry.names:
            registry.unblock(name, BLOCK_REASONS)

    @property
    def names(self) -> list[str]:
        return list(self._supervisors)

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """Start every supervisor; on cancellation each stops its server gracefully."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self.sync(self._registry.config)
            task_status.started()
            await anyio.sleep_forever()

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
        ident = self._registry.identity(name)
        names = set(self._registry.names)
        for sup_name, sup in self._supervisors.items():
            if sup_name == name or (
                sup_name in names and self._registry.identity(sup_name) == ident
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
            )
        previous = self._done.get(name)
        scope, done = anyio.CancelScope(), anyio.Event()
        self._supervisors[name], self._scopes[name], self._done[name] = sup, scope, done
        self._backends[name] = backend
        self._registry.set_process_view(name, sup.view)
        self._tg.start_soon(self._run_one, sup, scope, done, previous)

    def _retire(self, name: str) -> None:
        del self._supervisors[name]
        del self._backends[name]
        self._scopes.pop(name).cancel()  # its task stops the server, then sets done
        if name in self._registry.names:
            self._registry.set_process_view(name, None)
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

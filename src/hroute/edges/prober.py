"""Runs the active probes: one task per backend identity, each on its own schedule.

HTTP client connections are kept per server between probes (a thousand backends probed
every few seconds must not pay a TCP handshake each), except for llama-server: an idle
kept connection would hold one of its few server threads (`edges/probe_http.py`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Callable
from typing import Any

import anyio

from hroute.config.model import Config
from hroute.core.clock import Clock
from hroute.core.health import ProbeOutcome
from hroute.core.redact import redact
from hroute.core.registry import Registry
from hroute.edges.clock import wait_until
from hroute.edges.probe_http import ProbeClient
from hroute.edges.probe_requests import probe_backend

log = logging.getLogger("hroute.probe")

FIRST_ROUND_RATE = 200.0  # probes a second while a large fleet is probed the first time


class Prober:
    """Owns the probe tasks. A slow backend only ever delays its own next probe."""

    def __init__(
        self,
        registry: Registry,
        clock: Clock,
        *,
        client: ProbeClient | None = None,
        env: dict[str, str] | None = None,
        on_outcome: Callable[[str, ProbeOutcome], None] = lambda name, outcome: None,
        rng: random.Random | None = None,
    ) -> None:
        self._registry, self._clock = registry, clock
        self._client = client or ProbeClient()
        self._env = os.environ if env is None else env
        self._on_outcome = on_outcome  # metrics; the supervisor of a local server (hangs)
        self._rng = rng or random.Random()
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._pokes: dict[str, anyio.Event] = {}
        self._unfloored: set[str] = set()  # poked by a supervisor: its own schedule
        self._owners: dict[Any, str] = {}  # identity -> the name it is probed under
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """Probe until cancelled; the kept connections close with it."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self.sync(self._registry.config)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            await self._client.aclose()

    def sync(self, config: Config) -> None:
        """Probe exactly the backends `config` names: start new ones, stop removed ones."""
        if self._tg is None:
            return  # not probing yet: run() syncs with the configuration in force then
        wanted = {name for name, b in config.backends.items() if b.probe.enabled}
        # Two names for one server share a record: probe it once, under the first name.
        seen, owners = set(), set()
        self._owners = {}
        for name in config.backends:
            ident = self._registry.directory.identity(name)
            if name in wanted and ident not in seen:
                seen.add(ident)
                owners.add(name)
                self._owners[ident] = name
        for name in list(self._scopes):
            if name not in owners:
                self._scopes.pop(name).cancel()
                self._pokes.pop(name, None)
                self._unfloored.discard(name)
        for name in owners - set(self._scopes):
            scope = anyio.CancelScope()
            self._scopes[name] = scope
            self._pokes[name] = anyio.Event()
            assert self._tg is not None
            self._tg.start_soon(self._loop, name, scope)

    def poke(self, name: str, *, floor: bool = True) -> None:
        """Probe `name` now rather than at its next turn (a client just saw it fail), but
        not closer than the interval to its last probe. `floor=False` is for the supervisor
        of a local server hroute started: it polls readiness and confirms hangs on its own
        bounded schedule, against its own child, with no provider's key."""
        owner = self._owner_of(name)
        if owner is not None:
            if not floor:
                self._unfloored.add(owner)
            self._pokes[owner].set()

    def _owner_of(self, name: str) -> str | None:
        if name in self._pokes:
            return name
        owner = self._owners.get(self._registry.directory.identity(name))
        return owner if owner in self._pokes else None

    async def _loop(self, name: str, scope: anyio.CancelScope) -> None:
        with scope:
            # Spread the first round: forty backends must not fire in the same millisecond,
            # nor ten thousand in the same second (at most FIRST_ROUND_RATE probes a second).
            settings = self._registry.config.probe_for(name)
            spread = min(settings.interval_s, len(self._scopes) / FIRST_ROUND_RATE)
            await self._clock.sleep(self._rng.uniform(0, max(0.05, spread)))
            while True:
                settings = self._registry.config.probe_for(name)
                started = self._clock.now()
                await self.probe_once(name)
                jitter = settings.interval_s * settings.jitter
                delay = settings.interval_s + self._rng.uniform(-jitter, jitter)
                deadline = self._clock.now() + max(0.05, delay)
                await wait_until(self._clock, self._pokes[name], deadline)
                self._pokes[name] = anyio.Event()
                if name in self._unfloored:
                    self._unfloored.discard(name)
                    continue
                # The floor: a poke (a failure report, a cooldown's end) brings the next probe
                # forward, never closer than the interval to the last one. Whatever loops
                # elsewhere (a reset time that ends a cooldown at once), the backend sees
                # at most one probe per interval, and a key is never spent faster.
                if (wait_s := min_gap(settings) - (self._clock.now() - started)) > 0:
                    await self._clock.sleep(wait_s)

    async def probe_once(self, name: str) -> None:
        """Probe `name` once, now, and record the outcome. A supervisor's readiness poll
        calls this directly, every 50 ms while its server starts: keep it free of any floor
        on the probe loop's pace (the server is local; readiness seen late delays a restart)."""
        backend = self._registry.config.backends.get(name)
        if backend is None:
            return  # removed by a reload

        settings = self._registry.config.probe_for(name)
        key = self._env.get(backend.key_env) if backend.key_env else None
        if backend.key_env and not key:
            return  # said once at start and shown on the backend; a keyless probe would only 401
        outcome = await probe_backend(
            self._client,
            backend,
            api_key=key,
            timeout_s=settings.timeout_s,
            wall=self._clock.wall,
            models=self._registry.directory.models_at(name),
        )
        secrets = [s for s in (key, backend.basic_auth and backend.basic_auth[1]) if s]
        texts = [outcome.detail, *outcome.missing.values()]
        if any(s in t for s in secrets for t in texts):
            outcome = dataclasses.replace(
                outcome,
                detail=redact(outcome.detail, secrets),
                missing={m: redact(d, secrets) for m, d in outcome.missing.items()},
            )
        log.debug("probe %s: %s %s", name, outcome.reason or "ok", outcome.detail)
        self._registry.record_probe(name, outcome)
        self._on_outcome(name, outcome)


def min_gap(settings: Any) -> float:
    """The least time between two probes of one backend: its interval, less the jitter its
    own schedule may take off (so the floor never changes the schedule, only pokes)."""
    return max(0.05, settings.interval_s * (1 - settings.jitter))

"""The supervisor's decisions for a server run as hroute's child: a pure state machine.

Events come in (the process spawned, exited, was stopped; a probe finished; an operator
asked for a restart; time passed) and actions go out (spawn, stop, block the backend, tell
the journal, probe now). The effects loop in `hroute.supervise.child` performs the actions
and feeds back what happened; it decides nothing. So crash, hang, backoff, start limit and
an operator's restart are tested here with a hand-moved clock, in microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from hroute.core.reasons import Reason
from hroute.core.restart_policy import RestartPolicy, RestartSettings, StartLimitSettings


class SuperviseSettings(Protocol):
    """What the decisions read of a `supervise:` block (`config.supervise.SuperviseSettings`)."""

    command: list[str] | None
    startup_timeout_s: float
    hang_restart_after: int
    restart: RestartSettings
    start_limit: StartLimitSettings


# Probe /health this often while a spawned server starts: it is local and cheap, and every
# restart waits for readiness to be seen (a poll slowing to 1 s added up to 0.8 s to each).
STARTUP_POLL_S = 0.05

# Reasons a supervisor blocks a backend for, whatever its probes say. They are its own words
# for its process, apart from `Reason` (a request's failure, in Hermes' words).
BLOCK_REASONS = (
    "exited",
    "hang",
    "startup_timeout",
    "port_in_use",
    "spawn_failed",
    "fatal",
    "gpu_oom",  # the server said it could not allocate GPU memory, then exited
    "gpu_reset",  # the kernel reset its GPU (or lost its work): restarted at once
)


class ProcState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FATAL = "fatal"


# --- events in ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawned:
    pid: int


@dataclass(frozen=True)
class StartFailed:
    why: str  # port_in_use | spawn_failed
    detail: str


@dataclass(frozen=True)
class Exited:
    pid: int
    described: str  # "exited with code 2", "was killed by SIGKILL"
    gpu_oom: str | None = None  # its output said it could not allocate GPU memory: why, in words


@dataclass(frozen=True)
class Stopped:
    pid: int


@dataclass(frozen=True)
class Probed:
    reason: str | None
    starting: bool
    detail: str
    began_at: float  # a probe sent before the spawn says nothing of this process
    latency_s: float
    interval_s: float  # the probe interval now, to time the probe that confirms a hang


@dataclass(frozen=True)
class RestartRequested:
    pass


@dataclass(frozen=True)
class GpuResetSeen:
    line: str  # the kernel's line: the server's GPU was reset; it may answer /health, not work


Event = Spawned | StartFailed | Exited | Stopped | Probed | RestartRequested | GpuResetSeen


# --- actions out -------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    reason: str | None  # why this start: None for the first


@dataclass(frozen=True)
class Stop:
    pid: int
    why: str


@dataclass(frozen=True)
class KillGroup:
    pid: int  # whatever the exited server forked goes with it


@dataclass(frozen=True)
class Block:
    reason: str
    detail: str


@dataclass(frozen=True)
class MarkStarting:
    detail: str  # lift the block; starting (unusable) until a probe says ready


@dataclass(frozen=True)
class Tell:
    event: str  # process_started | process_ready | restart | fatal
    reason: str | None
    detail: str


@dataclass(frozen=True)
class Poke:
    pass  # probe now, not at the prober's next turn


Action = Spawn | Stop | KillGroup | Block | MarkStarting | Tell | Poke


class HangCount:
    """Probes in a row that got no answer while the process lives (a hang that `/health` on
    a wedged GPU cannot see). Both modes count with this."""

    def __init__(self) -> None:
        self.count = 0

    def observe(self, reason: str | None, limit: int) -> bool:
        """Count one probe; True when `limit` timeouts in a row make it a hang."""
        if reason != Reason.TIMEOUT:
            self.count = 0
            return False
        self.count += 1
        return self.count >= limit


@dataclass(frozen=True)
class _After:
    """Why the running process is being stopped, and so what follows its stop."""

    why: str  # hang | startup_timeout | gpu_reset | manual
    detail: str = ""
    ran_for_s: float = 0.0


class ChildMachine:
    """Start, watch, restart and give up on one server. Every call takes `now`."""

    def __init__(self, name: str, settings: SuperviseSettings) -> None:
        self.name, self.settings = name, settings
        self.command = " ".join(settings.command or [])
        self.policy = RestartPolicy(settings.restart, settings.start_limit)
        self.state = ProcState.STOPPED
        self.detail = ""
        self.pid: int | None = None
        self.restarts = 0
        self.last_restart_reason: str | None = None
        self._reason: str | None = None  # why the current or next start happens
        self._started_at = 0.0
        self._ready_at: float | None = None
        self._hangs = HangCount()
        self._confirm_at: float | None = None  # when to probe a suspected hang again
        self._polls = 0
        self._next_poke = 0.0
        self._start_at: float | None = None  # in backoff: when to start again
        self._after: _After | None = None

    def reconfigure(self, settings: SuperviseSettings) -> None:
        """New timeouts, backoff or limits (the command is unchanged: else it is a new machine)."""
        self.settings = settings
        self.policy.restart, self.policy.start_limit = settings.restart, settings.start_limit

    @property
    def wake_at(self) -> float | None:
        """When `tick` has something to do, if nothing else happens first."""
        if self.state is ProcState.BACKOFF:
            return self._start_at
        if self.state is ProcState.STARTING and self.pid is not None:
            return min(self._next_poke, self._started_at + self.settings.startup_timeout_s)
        if self.state is ProcState.RUNNING:
            return self._confirm_at
        return None

    def start(self, now: float) -> list[Action]:
        """The first start, when supervision begins."""
        return self._begin(now, None)

    def tick(self, now: float) -> list[Action]:
        """Time has passed: a backoff ran out, a startup deadline passed, a probe is due."""
        if self.state is ProcState.BACKOFF and self._start_at is not None and now >= self._start_at:
            return self._begin(now, self._reason)
        if self.state is ProcState.STARTING and self.pid is not None:
            timeout = self.settings.startup_timeout_s
            if now >= self._started_at + timeout:
                detail = f"pid {self.pid} not ready within startup_timeout_s {timeout:g}s"
                return self._stop(_After("startup_timeout", detail), "startup timeout")
            if now >= self._next_poke:
                # On the spawn's grid, not after `now`: a late wake-up does not slow the pace.
                self._polls = max(self._polls + 1, int((now - self._started_at) / STARTUP_POLL_S))
                self._next_poke = self._started_at + (self._polls + 1) * STARTUP_POLL_S
                return [Poke()]
        confirm_at = self._confirm_at
        if self.state is ProcState.RUNNING and confirm_at is not None and now >= confirm_at:
            self._confirm_at = None
            return [Poke()]
        return []

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event; return what to do."""
        if isinstance(event, Spawned):
            return self._spawned(event, now)
        if isinstance(event, StartFailed):
            return [Block(event.why, event.detail), *self._ended(now, event.why, event.detail, 0)]
        if isinstance(event, Exited):
            return self._exited(event, now)
        if isinstance(event, Stopped):
            return self._stopped(event, now)
        if isinstance(event, RestartRequested):
            return self._restart_requested(now)
        if isinstance(event, GpuResetSeen):
            return self._gpu_reset(event)
        return self._probed(event, now)

    # --- transitions ------------------------------------------------------------------

    def _begin(self, now: float, reason: str | None) -> list[Action]:
        out: list[Action] = []
        if reason == "manual":
            self.policy.reset()
            out.append(Tell("restart", "manual", "restart requested; start history cleared"))
        self.policy.record_start(now)
        if reason is not None:
            self.restarts += 1
            self.last_restart_reason = reason
        self._reason, self._start_at, self._after = reason, None, None
        self.state, self.detail = ProcState.STARTING, "starting"
        return [*out, Spawn(reason)]

    def _spawned(self, event: Spawned, now: float) -> list[Action]:
        self.pid, self._started_at, self._ready_at = event.pid, now, None
        self._hangs, self._confirm_at = HangCount(), None
        self._polls = 0
        self._next_poke = now + STARTUP_POLL_S
        self.state, self.detail = ProcState.STARTING, "waiting for /health"
        why = f" ({self._reason})" if self._reason else ""
        return [
            MarkStarting(f"pid {event.pid} spawned; waiting for /health"),
            Tell("process_started", self._reason, f"started pid {event.pid}{why}: {self.command}"),
        ]

    def _exited(self, event: Exited, now: float) -> list[Action]:
        if event.pid != self.pid or self.state is ProcState.STOPPING:
            return []  # a process we already let go of, or one we are stopping ourselves
        ran_for = 0.0 if self._ready_at is None else now - self._ready_at
        detail = f"pid {event.pid} {event.described} after {now - self._started_at:.1f}s"
        why = "exited"
        if event.gpu_oom is not None:
            why, detail = "gpu_oom", f"{detail}: {event.gpu_oom}"
        self.pid = None
        ended = self._ended(now, why, detail, ran_for)
        return [KillGroup(event.pid), Block(why, detail), *ended]

    def _stopped(self, event: Stopped, now: float) -> list[Action]:
        if event.pid != self.pid:
            return []
        self.pid = None
        after = self._after or _After("manual")
        self._after = None
        return self._ended(now, after.why, after.detail, after.ran_for_s)

    def _restart_requested(self, now: float) -> list[Action]:
        if self.state is ProcState.STOPPING:
            self._after = _After("manual")  # whatever the stop was for, start at once after it
            return []
        if self.pid is not None:
            return self._stop(_After("manual"), "restart requested")
        return self._begin(now, "manual")

    def _gpu_reset(self, event: GpuResetSeen) -> list[Action]:
        if self.pid is None or self.state not in (ProcState.STARTING, ProcState.RUNNING):
            return []  # nothing on the GPU now: the next start gets a fresh context anyway
        detail = f"pid {self.pid}: its GPU was reset (kernel: {event.line})"
        return self._stop(_After("gpu_reset", detail), "gpu reset")

    def _probed(self, event: Probed, now: float) -> list[Action]:
        if self.pid is None or event.began_at < self._started_at:
            return []
        if self.state is ProcState.STARTING:
            if event.reason is None and not event.starting:
                self._ready_at = now
                self.state, self.detail = ProcState.RUNNING, ""
                took = now - self._started_at
                return [Tell("process_ready", None, f"pid {self.pid} ready after {took:.2f}s")]
            return []
        if self.state is not ProcState.RUNNING:
            return []
        if self._hangs.observe(event.reason, self.settings.hang_restart_after):
            detail = (
                f"pid {self.pid} is alive but {self._hangs.count} probes in a row got no answer "
                f"({event.detail})"
            )
            ran_for = 0.0 if self._ready_at is None else now - self._ready_at
            return self._stop(_After("hang", detail, ran_for), "hang")
        if self._hangs.count == 0:
            self._confirm_at = None
            return []
        # The prober waits a full interval after a probe that timed out: confirm one interval
        # after the last one began instead, so a hang is acted on within
        # hang_restart_after x interval + timeout.
        self._confirm_at = now + max(0.0, event.interval_s - event.latency_s)
        return []

    def _stop(self, after: _After, why: str) -> list[Action]:
        assert self.pid is not None
        self._after = after
        self.state, self.detail = ProcState.STOPPING, why
        out: list[Action] = []
        if after.why != "manual":
            out.append(Block(after.why, after.detail))
        return [*out, Stop(self.pid, why)]

    def _ended(self, now: float, why: str, detail: str, ran_for: float) -> list[Action]:
        """The process is gone (or never started): restart, back off, or give up."""
        if why == "manual":
            return self._begin(now, "manual")
        if why == "gpu_reset":  # not the server's failure: start again at once, no backoff
            return [Tell("restart", why, f"{detail}; restarting now"), *self._begin(now, why)]
        decision = self.policy.after_failure(now, ran_for)
        if decision.fatal:
            said = (
                f"{detail}; giving up after {decision.why}; not restarting. Fix the cause (see "
                f"the lines above, tagged [{self.name}]), then run: hroute restart {self.name}"
            )
            self.state, self.detail = ProcState.FATAL, decision.why
            return [Block("fatal", said), Tell("fatal", why, said)]
        delay = decision.delay_s
        if why == "gpu_oom":  # at once would fail alike: whoever holds the VRAM still does
            delay = max(delay, self.settings.restart.backoff_initial_s)
        self._reason = why
        out: list[Action] = [Tell("restart", why, f"{detail}; restarting in {delay:g}s")]
        if delay <= 0:
            return [*out, *self._begin(now, why)]
        self.state, self.detail = ProcState.BACKOFF, f"{detail}; next start in {delay:g}s"
        self._start_at = now + delay
        return out

"""The child supervisor's decisions, driven event by event with a hand-moved clock.

No process, no sleep: each test feeds what the effects loop would report and checks the
actions that come out.
"""

from __future__ import annotations

import pytest

from hroute.config.supervise import SuperviseSettings
from hroute.core.supervisor import (
    Block,
    ChildMachine,
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


def settings(**kw) -> SuperviseSettings:
    base = {
        "command": ["/bin/true"],
        "startup_timeout_s": 30,
        "hang_restart_after": 3,
        "restart": {
            "backoff_initial_s": 1,
            "backoff_max_s": 8,
            "multiplier": 2,
            "reset_after_s": 60,
        },
        "start_limit": {"burst": 5, "interval_s": 300},
    }
    base.update(kw)
    return SuperviseSettings.model_validate(base)


def ok(at: float, interval: float = 5.0) -> Probed:
    return Probed(None, False, "ok", at, 0.01, interval)


def timeout(at: float, interval: float = 5.0) -> Probed:
    return Probed("timeout", False, "no answer in 2s", at, 2.0, interval)


def tells(actions) -> list[tuple[str, str | None]]:
    return [(a.event, a.reason) for a in actions if isinstance(a, Tell)]


def running(machine: ChildMachine, pid: int = 100, at: float = 0.0) -> None:
    """Start the machine at `at` and bring it to RUNNING with process `pid`."""
    assert machine.start(at)[-1] == Spawn(None)
    machine.handle(Spawned(pid), at)
    machine.handle(ok(at + 0.1), at + 0.2)
    assert machine.state is ProcState.RUNNING


def test_start_spawns_then_polls_health_every_50_ms_until_ready() -> None:
    m = ChildMachine("loc", settings())
    assert m.start(0.0) == [Spawn(None)]
    actions = m.handle(Spawned(100), 0.0)
    assert isinstance(actions[0], MarkStarting) and tells(actions) == [("process_started", None)]
    assert m.state is ProcState.STARTING and m.wake_at == pytest.approx(0.05)
    pokes, now = [], 0.0
    while now < 1.99:  # a server that binds after 2 s (a big model loading)
        now = m.wake_at
        if m.tick(now) == [Poke()]:
            pokes.append(now)
    # A local /health is cheap: the poll keeps its pace, so readiness is seen within 50 ms.
    assert len(pokes) == 40
    gaps = [b - a for a, b in zip(pokes, pokes[1:], strict=False)]
    assert max(gaps) == pytest.approx(0.05)
    refused = Probed("connection", False, "connection refused", now - 0.001, 0.001, 5.0)
    assert m.handle(refused, now) == [] and m.state is ProcState.STARTING
    assert tells(m.handle(ok(now + 0.049), now + 0.05)) == [("process_ready", None)]


def test_a_probe_sent_before_the_spawn_says_nothing_of_the_new_process() -> None:
    m = ChildMachine("loc", settings())
    m.start(10.0)
    m.handle(Spawned(100), 10.0)
    assert m.handle(ok(9.0), 10.5) == []
    assert m.state is ProcState.STARTING


def test_crash_after_a_long_healthy_run_restarts_at_once() -> None:
    m = ChildMachine("loc", settings())
    running(m)
    actions = m.handle(Exited(100, "was killed by SIGKILL"), 500.0)
    assert actions[0] == KillGroup(100)
    assert isinstance(actions[1], Block) and actions[1].reason == "exited"
    assert "pid 100 was killed by SIGKILL after 500.0s" in actions[1].detail
    assert tells(actions) == [("restart", "exited")]
    assert actions[-1] == Spawn("exited") and m.restarts == 1


def test_a_crash_loop_backs_off_then_goes_fatal_at_the_start_limit() -> None:
    m = ChildMachine("loc", settings())
    now, pid, delays = 0.0, 100, []
    m.start(now)
    m.handle(Spawned(pid), now)
    while True:
        now += 0.5
        actions = m.handle(Exited(pid, "exited with code 1"), now)
        if m.state is ProcState.FATAL:
            break
        if m.state is ProcState.BACKOFF:
            delays.append(m.wake_at - now)
            assert m.tick(m.wake_at - 0.001) == []  # not a moment early
            now = m.wake_at
            assert m.tick(now)[-1] == Spawn("exited")
        else:
            delays.append(0.0)
            assert actions[-1] == Spawn("exited")
        pid += 1
        m.handle(Spawned(pid), now)
    assert delays == [0.0, 1.0, 2.0, 4.0]  # immediate, then initial x multiplier^n
    assert m.restarts == 4  # five starts in all: the burst
    fatal = [a for a in actions if isinstance(a, Block)]
    assert fatal[-1].reason == "fatal" and "hroute restart loc" in fatal[-1].detail
    assert ("fatal", "exited") in tells(actions) and m.wake_at is None


def test_backoff_delays_are_capped() -> None:
    m = ChildMachine("loc", settings(start_limit={"burst": 100, "interval_s": 1}))
    now, pid = 0.0, 100
    m.start(now)
    m.handle(Spawned(pid), now)
    delays = []
    for _ in range(8):
        now += 10
        m.handle(Exited(pid, "exited with code 1"), now)
        if m.state is ProcState.BACKOFF:
            delays.append(m.wake_at - now)
            now = m.wake_at
            m.tick(now)
        pid += 1
        m.handle(Spawned(pid), now)
    assert max(delays) == 8.0 and delays[-1] == 8.0


def test_hang_needs_n_timeouts_in_a_row_and_confirms_within_an_interval() -> None:
    m = ChildMachine("loc", settings())
    running(m)
    assert m.handle(timeout(10.0), 12.0) == []
    assert m.wake_at == pytest.approx(
        12.0 + 5.0 - 2.0
    )  # next probe one interval after the last began
    assert m.tick(15.0) == [Poke()]
    assert m.handle(ok(15.0), 15.1) == []  # an answer resets the count
    m.handle(timeout(20.0), 22.0)
    m.handle(timeout(25.0), 27.0)
    actions = m.handle(timeout(30.0), 32.0)
    blocks = [a for a in actions if isinstance(a, Block)]
    assert blocks[0].reason == "hang" and "3 probes in a row" in blocks[0].detail
    assert actions[-1] == Stop(100, "hang") and m.state is ProcState.STOPPING
    after = m.handle(Stopped(100), 33.0)
    assert tells(after) == [("restart", "hang")] and after[-1] == Spawn("hang")


def test_startup_timeout_stops_the_process_and_backs_off() -> None:
    m = ChildMachine("loc", settings(startup_timeout_s=10))
    m.start(0.0)
    m.handle(Spawned(100), 0.0)
    while m.state is ProcState.STARTING:
        actions = m.tick(m.wake_at)
    assert actions[-1] == Stop(100, "startup timeout")
    assert [a.reason for a in actions if isinstance(a, Block)] == ["startup_timeout"]
    after = m.handle(Stopped(100), 10.5)
    assert tells(after) == [("restart", "startup_timeout")]


def test_exit_of_a_process_being_stopped_is_not_a_crash() -> None:
    m = ChildMachine("loc", settings())
    running(m)
    m.handle(RestartRequested(), 50.0)
    assert m.handle(Exited(100, "exited with code 0"), 50.1) == []
    actions = m.handle(Stopped(100), 50.2)
    assert actions[-1] == Spawn("manual") and ("restart", "exited") not in tells(actions)


def test_operator_restart_clears_fatal_and_the_start_history() -> None:
    m = ChildMachine("loc", settings(start_limit={"burst": 1, "interval_s": 300}))
    m.start(0.0)
    m.handle(Spawned(100), 0.0)
    m.handle(Exited(100, "exited with code 1"), 1.0)
    assert m.state is ProcState.FATAL
    actions = m.handle(RestartRequested(), 2.0)
    assert tells(actions) == [("restart", "manual")] and actions[-1] == Spawn("manual")
    m.handle(Spawned(101), 2.0)
    assert m.state is ProcState.STARTING and m.last_restart_reason == "manual"


def test_operator_restart_during_backoff_starts_at_once() -> None:
    m = ChildMachine("loc", settings())
    running(m)
    m.handle(Exited(100, "exited with code 1"), 1.0)  # restarted at once
    m.handle(Spawned(101), 1.0)
    m.handle(Exited(101, "exited with code 1"), 1.5)
    assert m.state is ProcState.BACKOFF
    assert m.handle(RestartRequested(), 1.6)[-1] == Spawn("manual")


def test_restart_asked_while_stopping_for_a_hang_starts_at_once_afterwards() -> None:
    m = ChildMachine("loc", settings(hang_restart_after=1))
    running(m)
    m.handle(timeout(10.0), 12.0)
    assert m.state is ProcState.STOPPING
    assert m.handle(RestartRequested(), 12.1) == []
    assert m.handle(Stopped(100), 13.0)[-1] == Spawn("manual")


def test_port_in_use_blocks_and_counts_as_a_failed_start() -> None:
    m = ChildMachine("loc", settings(start_limit={"burst": 2, "interval_s": 300}))
    m.start(0.0)
    actions = m.handle(StartFailed("port_in_use", "port 8080 is taken"), 0.0)
    assert actions[0] == Block("port_in_use", "port 8080 is taken")
    assert actions[-1] == Spawn("port_in_use")
    actions = m.handle(StartFailed("port_in_use", "port 8080 is taken"), 0.1)
    assert m.state is ProcState.FATAL


def test_reconfigure_changes_the_policy_not_the_process() -> None:
    m = ChildMachine("loc", settings())
    running(m)
    m.reconfigure(settings(hang_restart_after=1))
    assert m.handle(timeout(10.0), 12.0)[-1] == Stop(100, "hang")


def test_a_gpu_out_of_memory_exit_is_gpu_oom_and_backs_off_even_the_first_time() -> None:
    m = ChildMachine("loc", settings())
    m.start(0.0)
    m.handle(Spawned(100), 0.0)
    said = "could not allocate GPU memory (asked for 13563 MiB; 1.2 GiB of 16.0 GiB free on card0)"
    actions = m.handle(Exited(100, "exited with code 1", gpu_oom=said), 2.0)
    [block] = [a for a in actions if isinstance(a, Block)]
    assert block.reason == "gpu_oom" and "asked for 13563 MiB" in block.detail
    assert "exited with code 1" in block.detail
    assert tells(actions) == [("restart", "gpu_oom")]
    # Starting again at once would fail the same way: the VRAM is not free yet.
    assert m.state is ProcState.BACKOFF and m.wake_at == pytest.approx(3.0)
    assert m.tick(3.0)[-1] == Spawn("gpu_oom")


def test_a_gpu_reset_restarts_a_running_server_at_once() -> None:
    m = ChildMachine("loc", settings())
    running(m)
    actions = m.handle(GpuResetSeen("amdgpu 0000:03:00.0: amdgpu: GPU reset begin!"), 50.0)
    assert [a.reason for a in actions if isinstance(a, Block)] == ["gpu_reset"]
    assert actions[-1] == Stop(100, "gpu reset") and m.state is ProcState.STOPPING
    after = m.handle(Stopped(100), 51.0)
    assert tells(after) == [("restart", "gpu_reset")] and after[-1] == Spawn("gpu_reset")
    m.handle(Spawned(101), 51.0)
    assert m.last_restart_reason == "gpu_reset" and m.restarts == 1


def test_a_gpu_reset_while_stopped_or_backing_off_starts_nothing_new() -> None:
    m = ChildMachine("loc", settings())
    assert m.handle(GpuResetSeen("GPU reset begin!"), 0.0) == []
    running(m)
    m.handle(Exited(100, "exited with code 1"), 1.0)
    m.handle(Spawned(101), 1.0)
    m.handle(Exited(101, "exited with code 1"), 1.5)
    assert m.state is ProcState.BACKOFF
    assert m.handle(GpuResetSeen("GPU reset begin!"), 1.6) == []

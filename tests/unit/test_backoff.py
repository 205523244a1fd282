"""The restart policy: delays, the reset after a healthy run, the start limit (fake clock)."""

from __future__ import annotations

from hroute.config.supervise import RestartSettings, StartLimitSettings
from hroute.core.restart_policy import RestartPolicy
from tests.conftest import FakeClock


def policy(burst: int = 100, interval_s: float = 300.0, **restart: float) -> RestartPolicy:
    settings = {"backoff_initial_s": 1, "backoff_max_s": 60, "multiplier": 2, "reset_after_s": 120}
    settings.update(restart)
    return RestartPolicy(
        RestartSettings(**settings), StartLimitSettings(burst=burst, interval_s=interval_s)
    )


def crash(p: RestartPolicy, clock: FakeClock, ran_for_s: float = 0.0) -> float:
    """One start that fails after `ran_for_s`; return the delay the policy chose."""
    p.record_start(clock.now())
    clock.advance(ran_for_s)
    decision = p.after_failure(clock.now(), ran_for_s)
    assert not decision.fatal, decision
    clock.advance(decision.delay_s)
    return decision.delay_s


def test_first_restart_is_immediate_then_delays_grow_to_the_cap(clock: FakeClock) -> None:
    p = policy(backoff_initial_s=1, multiplier=2, backoff_max_s=10)
    assert [crash(p, clock) for _ in range(7)] == [0, 1, 2, 4, 8, 10, 10]


def test_multiplier_one_is_a_fixed_delay(clock: FakeClock) -> None:
    p = policy(backoff_initial_s=3, multiplier=1)
    assert [crash(p, clock) for _ in range(4)] == [0, 3, 3, 3]


def test_a_long_healthy_run_resets_the_backoff(clock: FakeClock) -> None:
    p = policy(reset_after_s=120)
    assert [crash(p, clock) for _ in range(4)] == [0, 1, 2, 4]
    assert crash(p, clock, ran_for_s=119) == 8  # not quite long enough
    assert crash(p, clock, ran_for_s=120) == 0  # a new run of failures
    assert crash(p, clock) == 1


def test_more_starts_than_the_burst_within_the_interval_is_fatal(clock: FakeClock) -> None:
    p = policy(burst=3, interval_s=60, backoff_initial_s=1)
    assert [crash(p, clock) for _ in range(2)] == [0, 1]
    p.record_start(clock.now())  # the third start, within 60 s of the first
    decision = p.after_failure(clock.now())
    assert decision.fatal
    assert "3 starts within 60s" in decision.why and "burst 3" in decision.why


def test_starts_older_than_the_interval_do_not_count(clock: FakeClock) -> None:
    p = policy(burst=2, interval_s=10, backoff_initial_s=1, reset_after_s=1000)
    crash(p, clock)
    clock.advance(11)  # the first start has left the window
    assert crash(p, clock) == 1
    p.record_start(clock.now())
    assert p.after_failure(clock.now()).fatal  # two starts within 10 s


def test_the_window_is_judged_at_the_planned_start_time(clock: FakeClock) -> None:
    """A delay that carries the next start past the window lets the old starts expire."""
    p = policy(burst=2, interval_s=5, backoff_initial_s=8, multiplier=1)
    crash(p, clock)  # start at t0, delay 0
    p.record_start(clock.now())  # second start at t0 as well
    decision = p.after_failure(clock.now())
    assert not decision.fatal and decision.delay_s == 8  # both starts are > 5 s old by then


def test_reset_clears_fatal_history(clock: FakeClock) -> None:
    p = policy(burst=2)
    crash(p, clock)
    p.record_start(clock.now())
    assert p.after_failure(clock.now()).fatal
    p.reset()
    assert p.failures == 0 and p.starts_within_limit(clock.now()) == 0
    assert crash(p, clock) == 0  # one start in the window again: allowed, and immediate


def test_huge_failure_counts_stay_finite(clock: FakeClock) -> None:
    p = policy(backoff_max_s=60, multiplier=10)
    p.failures = 5000
    assert p.next_delay() == 60

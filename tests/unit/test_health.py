"""The pure health/cooldown core, driven with explicit times (no clock, no sleeps)."""

import pytest

from hroute.core.health import Health, Policy, ProbeOutcome, Report, State
from hroute.core.reasons import Reason

P = Policy(fall=3, rise=2, base_s=30.0, max_s=300.0)
OK = ProbeOutcome()
REFUSED = ProbeOutcome(Reason.CONNECTION, detail="refused")


def fail(
    reason: Reason, retry_after_s: float | None = None, credential: str | None = None
) -> Report:
    return Report(False, reason, retry_after_s, credential)


def test_unknown_backend_is_usable_fail_open() -> None:
    h = Health()
    assert h.verdict(0.0) == (True, None, None)


def test_first_probe_decides_from_unknown_then_fall_and_rise_thresholds() -> None:
    h = Health()
    [t] = h.on_probe(OK, 0, P)
    assert (t.event, t.old, t.new) == ("backend_up", "unknown", "healthy")
    assert h.on_probe(REFUSED, 1, P) == []
    assert h.on_probe(REFUSED, 2, P) == []
    assert h.verdict(2) == (True, None, None)  # two failures < fall=3
    [down] = h.on_probe(REFUSED, 3, P)
    assert (down.event, down.new, down.reason) == ("backend_down", "unhealthy", Reason.CONNECTION)
    assert h.verdict(3)[:2] == (False, "connection")
    assert h.on_probe(OK, 4, P) == []  # rise=2: one success is not enough
    [up] = h.on_probe(OK, 5, P)
    assert up.new == "healthy" and h.verdict(5)[0]


def test_a_success_in_between_resets_the_failure_count() -> None:
    h = Health()
    h.on_probe(OK, 0, P)
    for t in range(1, 10):
        h.on_probe(REFUSED if t % 2 else OK, t, P)
    assert h.state is State.HEALTHY


def test_loading_model_is_starting_not_failing() -> None:
    h = Health()
    [t] = h.on_probe(ProbeOutcome(starting=True), 0, P)
    assert t.new == "starting"
    assert h.verdict(0) == (False, "starting", None)
    [up] = h.on_probe(OK, 1, P)  # the first success after loading is enough
    assert up.new == "healthy"


def test_severe_report_cools_down_at_once_and_escalates_to_the_cap() -> None:
    h = Health()
    h.on_probe(OK, 0, P)
    durations = []
    now = 10.0
    for _ in range(12):
        [t] = h.on_report(fail(Reason.SERVER_ERROR), now, P)
        durations.append(t.cooldown_s)
        assert h.verdict(now)[:2] == (False, "server_error")
        now += t.cooldown_s  # the next failure comes just as the cooldown ends
        h.expire(now)
    assert durations[:4] == [30, 60, 90, 120]
    assert max(durations) == 300 and durations[-1] == 300  # capped at max_s


def test_multiplier_decays_by_one_per_base_of_health() -> None:
    h = Health()
    h.on_probe(OK, 0, P)
    now = 0.0
    for _ in range(3):  # 30, 60, 90
        [t] = h.on_report(fail(Reason.TIMEOUT), now, P)
        now += t.cooldown_s
        h.expire(now)
    assert h.incidents == 3
    now += 2 * 30 + 1  # two base periods of health
    [t] = h.on_report(fail(Reason.TIMEOUT), now, P)
    assert t.cooldown_s == 60  # n went 3 -> 1, then this one makes it 2


def test_retry_after_sets_the_cooldown_and_a_shorter_one_never_shortens_it() -> None:
    h = Health()
    [t] = h.on_report(fail(Reason.RATE_LIMIT, retry_after_s=600), 0, P)
    assert t.cooldown_s == 600
    assert h.on_report(fail(Reason.RATE_LIMIT, retry_after_s=5), 1, P) == []
    ok, reason, left = h.verdict(100)
    assert (ok, reason) == (False, "rate_limit") and left == pytest.approx(500)
    h.expire(600)
    assert h.verdict(600)[0]


def test_cooldown_ends_exactly_at_the_deadline() -> None:
    h = Health()
    h.on_report(fail(Reason.OVERLOADED, retry_after_s=7), 100, P)
    assert not h.verdict(106.999)[0]
    assert h.verdict(107.0)[0]
    [end] = h.expire(107.0)
    assert end.event == "cooldown_end"


def test_health_neutral_reasons_never_touch_health() -> None:
    h = Health()
    for reason in (
        Reason.CONTEXT_OVERFLOW,
        Reason.FORMAT_ERROR,
        Reason.PAYLOAD_TOO_LARGE,
        Reason.CONTENT_POLICY_BLOCKED,
    ):
        assert h.on_report(fail(reason), 0, P) == []
        assert h.on_probe(ProbeOutcome(reason), 0, P) == []
    assert h.verdict(0) == (True, None, None)


def test_credential_rate_limit_cools_only_that_credential() -> None:
    h = Health()
    h.on_probe(OK, 0, P)
    [t] = h.on_report(fail(Reason.RATE_LIMIT, retry_after_s=60, credential="fp-a"), 0, P)
    assert t.credential == "fp-a"
    assert h.verdict(1) == (True, None, None)  # everyone else may still use it
    assert h.verdict(1, credential="fp-b") == (True, None, None)
    ok, reason, left = h.verdict(1, credential="fp-a")
    assert (ok, reason, left) == (False, "rate_limit", pytest.approx(59))
    assert h.verdict(61, credential="fp-a")[0]


def test_bad_key_of_one_client_never_takes_the_backend_away() -> None:
    h = Health()
    h.on_probe(OK, 0, P)
    assert h.on_report(fail(Reason.AUTH), 0, P) == []  # no credential: cannot tell whose key
    h.on_report(fail(Reason.AUTH_PERMANENT, credential="fp-bad"), 0, P)
    assert h.verdict(1) == (True, None, None)
    assert h.verdict(10**9, credential="fp-bad") == (False, "auth_permanent", None)


def test_probe_auth_failure_blocks_until_a_probe_succeeds_with_a_key() -> None:
    h = Health()
    [t] = h.on_probe(ProbeOutcome(Reason.AUTH), 0, P)
    assert t.event == "auth_blocked"
    assert h.verdict(10**6) == (False, "auth", None)  # no expiry
    h.on_probe(OK, 10**6, P)
    assert h.verdict(10**6)[0]


def test_billing_without_hint_is_a_long_cooldown() -> None:
    h = Health()
    [t] = h.on_report(fail(Reason.BILLING), 0, P)
    assert t.cooldown_s == P.max_s


def test_probe_rate_limit_is_a_cooldown_not_a_state_change() -> None:
    h = Health()
    h.on_probe(OK, 0, P)
    [t] = h.on_probe(ProbeOutcome(Reason.RATE_LIMIT, retry_after_s=7), 1, P)
    assert t.event == "cooldown" and t.cooldown_s == 7
    assert h.state is State.HEALTHY
    assert h.verdict(7.9)[0] is False and h.verdict(8.0)[0] is True


def test_success_report_ends_the_failure_streak_and_clears_credential_cooldown() -> None:
    h = Health()
    h.on_report(fail(Reason.SERVER_ERROR), 0, P)
    h.on_report(fail(Reason.RATE_LIMIT, credential="fp"), 0, P)
    assert h.consecutive_failures == 1
    assert ("fp", "") in h.keys and h.verdict(1, credential="fp").usable is False
    h.on_report(Report(True, credential="fp"), 1, P)
    assert h.consecutive_failures == 0
    assert ("fp", "") not in h.keys


def test_block_is_immediate() -> None:
    h = Health()
    h.on_probe(OK, 0, P)
    [t] = h.block_for("exited", "exit code 137")
    assert t.new == "unhealthy" and h.verdict(0)[:2] == (False, "exited")


def test_a_spawned_server_refusing_connections_is_starting_not_down() -> None:
    """A server its supervisor just spawned has not bound its port yet: no false alarm."""
    h = Health()
    h.on_probe(OK, 0, P)
    h.block_for("exited", "exit code 1")
    [t] = h.started("pid 7 spawned; waiting for /health")
    assert t.new == "starting"
    for at in range(1, 10):
        assert h.on_probe(REFUSED, at, P) == []  # no backend_down, however many
    assert h.state is State.STARTING and h.verdict(10)[:2] == (False, "starting")
    assert "refused" in h.detail
    [up] = h.on_probe(OK, 11, P)
    assert up.event == "backend_up"
    # Once ready, a refused connection is an outage again.
    h.on_probe(REFUSED, 12, P)
    h.on_probe(REFUSED, 13, P)
    [down] = h.on_probe(REFUSED, 14, P)
    assert down.event == "backend_down"


def test_a_server_seen_loading_then_refusing_is_down() -> None:
    """Unsupervised: 'loading model' then refused means it died while loading."""
    h = Health()
    h.on_probe(ProbeOutcome(starting=True), 0, P)
    h.on_probe(REFUSED, 1, P)
    h.on_probe(REFUSED, 2, P)
    [down] = h.on_probe(REFUSED, 3, P)
    assert down.event == "backend_down"

"""Evidence lifts inferred holds (issue 20): a cooldown hroute inferred ends when the probes,
having seen the failure, see the backend answer `rise` times in a row — at its scope. A hold
the provider timed runs to the provider's time. Pure core, explicit times."""

from __future__ import annotations

from hroute.config.model import load_config
from hroute.core.events import Topic
from hroute.core.health import Health, Policy, ProbeOutcome, Report, State
from hroute.core.reasons import Reason
from hroute.core.registry import Registry
from tests.conftest import FakeClock

LOCAL = Policy(fall=1, rise=1, base_s=30.0, max_s=300.0, local=True)
CLOUD = Policy(fall=1, rise=1, base_s=30.0, max_s=300.0)
OK = ProbeOutcome()
DOWN = ProbeOutcome(Reason.CONNECTION, detail="refused")


def fail(reason: Reason, retry: float | None = None, **kw: object) -> Report:
    return Report(False, reason, retry, **kw)  # type: ignore[arg-type]


def test_a_probe_confirmed_recovery_lifts_an_inferred_server_hold() -> None:
    h = Health()
    h.on_probe(OK, 0, LOCAL)
    [cooled] = h.on_report(fail(Reason.OVERLOADED, model="m"), 1, LOCAL)
    assert cooled.scope == "server" and cooled.cooldown_s == 30
    h.on_probe(DOWN, 2, LOCAL)  # the probes see it too
    assert not h.verdict(3).usable
    changes = h.on_probe(OK, 4, LOCAL)  # back: rise=1
    cleared = [c for c in changes if c.event == "cooldown_cleared"]
    assert [(c.scope, c.reason, c.incident) for c in cleared] == [("server", "overloaded", 1)]
    assert h.verdict(4).usable and h.cooldown is None


def test_rise_successes_are_needed() -> None:
    p = Policy(fall=1, rise=2, base_s=30.0, max_s=300.0, local=True)
    h = Health()
    h.on_probe(OK, 0, p)
    h.on_report(fail(Reason.SERVER_ERROR), 1, p)
    h.on_probe(DOWN, 2, p)
    assert not [c for c in h.on_probe(OK, 3, p) if c.event == "cooldown_cleared"]
    assert not h.verdict(3).usable
    assert [c.event for c in h.on_probe(OK, 4, p) if c.event == "cooldown_cleared"]
    assert h.verdict(4).usable


def test_a_probe_that_saw_the_failure_before_the_report_counts() -> None:
    h = Health()
    h.on_probe(DOWN, 0, LOCAL)
    assert h.state is State.UNHEALTHY
    h.on_report(fail(Reason.CONNECTION), 1, LOCAL)
    assert any(c.event == "cooldown_cleared" for c in h.on_probe(OK, 2, LOCAL))
    assert h.verdict(2).usable


def test_probes_that_never_saw_the_failure_prove_nothing() -> None:
    """A 500 only generation sees (the probe's listing keeps answering): lifting at the next
    probe would send an agent back every interval; the hold runs its time and grows."""
    h = Health()
    h.on_probe(OK, 0, LOCAL)
    h.on_report(fail(Reason.SERVER_ERROR), 1, LOCAL)
    for t in (2, 4, 6):
        assert not [c for c in h.on_probe(OK, t, LOCAL) if c.event == "cooldown_cleared"]
    assert not h.verdict(6).usable
    assert h.verdict(31.5).usable  # ran its time


def test_a_provider_timed_hold_runs_to_the_providers_time() -> None:
    h = Health()
    h.on_probe(OK, 0, LOCAL)
    h.on_report(fail(Reason.OVERLOADED, 60.0), 1, LOCAL)  # Retry-After: 60
    h.on_probe(DOWN, 2, LOCAL)
    assert not [c for c in h.on_probe(OK, 4, LOCAL) if c.event == "cooldown_cleared"]
    assert not h.verdict(5).usable and h.verdict(61).usable


def test_a_quota_reason_from_a_report_is_not_lifted_by_a_probe() -> None:
    """A listing answering says nothing of a chat quota: rate limits and billing reported
    by agents run their time even without a reset."""
    h = Health()
    h.on_probe(OK, 0, CLOUD)
    h.on_report(fail(Reason.RATE_LIMIT), 1, CLOUD)  # no model, no key: the server
    h.on_probe(DOWN, 2, CLOUD)
    assert not [c for c in h.on_probe(OK, 4, CLOUD) if c.event == "cooldown_cleared"]
    assert not h.verdict(5).usable


def test_the_probes_own_rate_limit_is_lifted_when_the_probe_succeeds() -> None:
    """The probe is the very request that limit applied to: its success is evidence."""
    h = Health()
    h.on_probe(OK, 0, CLOUD)
    h.on_probe(ProbeOutcome(Reason.RATE_LIMIT, detail="HTTP 429"), 2, CLOUD)
    assert not h.verdict(3).usable
    assert any(c.event == "cooldown_cleared" for c in h.on_probe(OK, 4, CLOUD))
    assert h.verdict(4).usable


def test_a_listing_that_shows_the_model_lifts_its_inferred_hold() -> None:
    h = Health()
    h.on_probe(ProbeOutcome(checked=("m", "n")), 0, CLOUD)
    h.on_report(fail(Reason.OVERLOADED, model="m"), 1, CLOUD)  # a cloud model's 529
    assert h.verdict(1, model="m")[0] is False and h.verdict(1, model="n")[0]
    h.on_probe(DOWN, 2, CLOUD)
    assert not [c for c in h.on_probe(OK, 3, CLOUD) if c.event == "cooldown_cleared"]
    changes = h.on_probe(ProbeOutcome(checked=("m", "n")), 4, CLOUD)
    cleared = [c for c in changes if c.event == "cooldown_cleared"]
    assert [(c.scope, c.model) for c in cleared] == [("model", "m")]
    assert h.verdict(4, model="m")[0]


def test_the_incident_count_decays_as_before_so_a_flapping_server_grows_its_hold() -> None:
    h = Health()
    h.on_probe(OK, 0, LOCAL)
    h.on_report(fail(Reason.SERVER_ERROR), 1, LOCAL)
    h.on_probe(DOWN, 2, LOCAL)
    h.on_probe(OK, 3, LOCAL)  # lifted at 3; it would have ended at 31
    [again] = h.on_report(fail(Reason.SERVER_ERROR), 10, LOCAL)
    assert again.cooldown_s == 60  # the 2nd incident within base_s of the 1st
    h.on_probe(DOWN, 11, LOCAL)
    [c] = [c for c in h.on_probe(OK, 12, LOCAL) if c.event == "cooldown_cleared"]
    assert c.incident == 2
    # n decays by one per base_s from the end the lifted hold had (10 + 60), as if it had run.
    [later] = h.on_report(fail(Reason.SERVER_ERROR), 70 + 29, LOCAL)
    assert later.cooldown_s == 90
    h.on_probe(DOWN, 100, LOCAL)
    h.on_probe(OK, 101, LOCAL)
    [quiet] = h.on_report(fail(Reason.SERVER_ERROR), 99 + 90 + 3 * 30, LOCAL)
    assert quiet.cooldown_s == 30


def test_a_success_report_that_clears_a_key_hold_says_so() -> None:
    h = Health()
    h.on_report(fail(Reason.RATE_LIMIT, 600.0, credential="fp-1", model="m"), 0, CLOUD)
    [cleared] = h.on_report(Report(True, credential="fp-1", model="m"), 5, CLOUD)
    assert (cleared.event, cleared.scope, cleared.credential, cleared.model) == (
        "cooldown_cleared",
        "key",
        "fp-1",
        "m",
    )
    assert cleared.incident == 1 and cleared.reason == "rate_limit"
    assert h.on_report(Report(True, credential="fp-1", model="m"), 6, CLOUD) == []


CONFIG = """
defaults:
  probe: {interval_s: 2, fall: 1, rise: 1, jitter: 0}
  cooldown: {base_s: 30, max_s: 300, jitter: 0}
backends:
  local: {kind: openai, base_url: "http://127.0.0.1:8080/v1", model: m}
  cloud: {kind: openai, base_url: "https://api.example.com/v1", model: m}
"""


def test_the_registry_hands_every_clearing_to_its_clear_taps() -> None:
    clock = FakeClock()
    reg = Registry(load_config(CONFIG), clock)
    seen: list[tuple[str, str, str, int | None]] = []
    reg.subscribe(Topic.CLEARED, lambda name, c: seen.append((name, c.scope, c.event, c.incident)))
    reg.record_probe("local", OK)
    reg.record_report("local", fail(Reason.SERVER_ERROR))
    clock.advance(1)
    reg.record_probe("local", DOWN)
    clock.advance(2)
    reg.record_probe("local", OK)
    reg.record_report("cloud", fail(Reason.RATE_LIMIT, 600.0, credential="fp-1"))
    reg.record_report("cloud", Report(True, credential="fp-1"))
    assert seen == [
        ("local", "server", "cooldown_cleared", 1),
        ("cloud", "key", "cooldown_cleared", 1),
    ]
    assert reg.usable("local")["usable"]
    events = [e for e in reg.events.since() if e["event"] == "cooldown_cleared"]
    assert [(e["backend"], e["incident"]) for e in events] == [("local", 1), ("cloud", 1)]


def test_a_clearing_is_told_in_one_line() -> None:
    from hroute.systemd.logs import describe

    event = {"event": "cooldown_cleared", "backend": "local", "reason": "overloaded"}
    line = describe({**event, "scope": "server", "incident": 2})
    assert line == "local: cooldown lifted: healthy again (overloaded, incident 2)"
    line = describe({**event, "scope": "key", "credential": "fp-1", "incident": 1})
    assert "for credential fp-1: a success with that key" in line

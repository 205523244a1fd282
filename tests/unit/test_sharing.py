"""Cooldowns shared between hosts (core/sharing.py): two registries, a fake clock, no Redis."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hroute.config.model import load_config
from hroute.core.events import Topic
from hroute.core.health import Report
from hroute.core.health_values import Scope
from hroute.core.reasons import Reason
from hroute.core.registry import Registry
from hroute.core.shared_record import (
    MAX_HOST_CHARS,
    MAX_INCIDENTS,
    MAX_MODEL_CHARS,
    MAX_REMAINING_S,
    MAX_VERSION,
    Shared,
    decode,
)
from hroute.core.sharing import (
    SAME_DEADLINE_S,
    Ledger,
    from_changes,
    from_clear,
    from_the_future,
    held_records,
)
from hroute.systemd.logs import describe

CONFIG = """
defaults:
  cooldown: {base_s: 30, max_s: 300}
backends:
  or-a: {kind: openrouter, base_url: "https://openrouter.ai/api/v1", model: m-a}
  or-b: {kind: openrouter, base_url: "https://openrouter.ai/api/v1", model: m-b}
  fake-cloud: {kind: openai, base_url: "http://127.0.0.1:9001/v1", tier: cloud, model: x}
  llama: {kind: llama-server, base_url: "http://127.0.0.1:8080"}
"""


class Host:
    """One host: its registry, its ledger, and what it would tell the cluster (as the cluster
    edge does, without Redis)."""

    def __init__(self, clock, name: str) -> None:
        self.name, self.clock = name, clock
        self.reg = Registry(load_config(CONFIG), clock)
        self.ledger = Ledger()
        self.sent: list[Shared] = []
        self.reg.subscribe(Topic.REPORTED, self._tap)
        self.reg.subscribe(
            Topic.CLEARED,
            lambda backend, change: self._tell(
                [from_clear(self.reg.directory, backend, change, name)]
            ),
        )
        self.events: list[dict] = []
        self.reg.subscribe(Topic.EVENT, self.events.append)

    def _tap(self, backend: str, changes: list) -> None:
        self._tell(
            from_changes(
                self.reg.directory,
                self.reg.health(backend),
                backend,
                changes,
                self.name,
                self.reg.clock.now(),
            )
        )

    def _tell(self, records: list) -> None:
        for shared in records:
            if shared is not None:
                record = self.ledger.local(shared, self.clock.now(), self.clock.wall())
                if record is not None:
                    self.sent.append(record)

    def tell(self, shared: list[Shared]) -> None:
        """What arrives through Redis: the value and its TTL, decoded as the edge does."""
        for s in shared:
            record = decode(s.encode(), int(s.remaining_s * 1000))
            news = self.ledger.take(record, self.clock.now())
            if news:
                self.reg.take_shared(record, newer=news == "newer")


@pytest.fixture
def hosts(clock) -> tuple[Host, Host]:
    return Host(clock, "host-a"), Host(clock, "host-b")


def test_a_429_on_one_key_holds_that_key_on_the_other_host_until_the_same_deadline(
    hosts, clock
) -> None:
    a, b = hosts
    a.reg.record_report(
        "or-a", Report(False, Reason.RATE_LIMIT, 600, credential="sha256:00000000000000a1")
    )
    assert [(s.scope, s.credential, s.model, s.remaining_s) for s in a.sent] == [
        (Scope.KEY, "sha256:00000000000000a1", "m-a", 600)
    ]
    clock.advance(2)  # in flight
    b.tell([Shared(**{**a.sent[0].__dict__, "remaining_s": 598})])
    held = b.reg.usable("or-a", credential="sha256:00000000000000a1")
    assert held["usable"] is False and held["retry_after_s"] == pytest.approx(598)
    assert b.reg.usable("or-a", credential="sha256:00000000000000a2")["usable"] is True
    assert (
        b.reg.usable("or-b", credential="sha256:00000000000000a1")["usable"] is True
    )  # another model
    event = b.events[-1]
    assert event["seen_by"] == "host-a"
    assert "(rate_limit, seen by host-a)" in describe(event)
    assert b.sent == []  # a shared cooldown is not told back


def test_a_shared_cooldown_never_shortens_a_longer_local_one(hosts, clock) -> None:
    a, b = hosts
    b.reg.record_report("or-a", Report(False, Reason.UPSTREAM_RATE_LIMIT, 900))
    a.reg.record_report("or-a", Report(False, Reason.UPSTREAM_RATE_LIMIT, 60))
    events = len(b.events)
    b.tell(a.sent)
    assert b.reg.usable("or-a")["retry_after_s"] == pytest.approx(900)
    assert len(b.events) == events
    a.tell(b.sent)  # and the longer one wins on the other side
    assert a.reg.usable("or-a")["retry_after_s"] == pytest.approx(900)


def test_incident_counts_merge_by_max_not_by_sum(hosts, clock) -> None:
    a, b = hosts
    a.reg.record_report("or-a", Report(False, Reason.SERVER_ERROR))  # first incident: 30 s
    clock.advance(31)
    a.reg.expire()
    a.reg.record_report("or-a", Report(False, Reason.SERVER_ERROR))  # second: 60 s
    assert a.sent[-1].incidents == 2 and a.sent[-1].remaining_s == pytest.approx(60)
    b.tell(a.sent)
    b.tell(a.sent)  # told twice (a resync): still two incidents
    assert b.reg.health("or-a").server.incidents == 2
    clock.advance(61)
    b.reg.expire()
    b.reg.record_report("or-a", Report(False, Reason.SERVER_ERROR))
    assert b.sent[-1].incidents == 3 and b.sent[-1].remaining_s == pytest.approx(90)


def test_local_backends_and_holds_are_not_shared(hosts) -> None:
    a, b = hosts
    a.reg.record_report("llama", Report(False, Reason.CONNECTION))
    a.reg.record_report(
        "or-a", Report(False, Reason.AUTH_PERMANENT, credential="sha256:000000000000000a")
    )
    assert a.sent == []
    a.reg.record_report("fake-cloud", Report(False, Reason.CONNECTION))  # loopback, tier cloud
    assert [s.scope for s in a.sent] == [Scope.SERVER]
    llama = Shared(b.reg.directory.identity("llama"), Scope.SERVER, Reason.CONNECTION, 30, "host-a")
    assert b.reg.take_shared(llama) is False
    assert b.reg.usable("llama")["usable"] is True


def test_key_shaped_credentials_never_leave_the_host(hosts) -> None:
    a, _ = hosts
    a.reg.record_report("or-a", Report(False, Reason.RATE_LIMIT, 60, credential="sk-or-v1-abcdef"))
    assert a.reg.usable("or-a", credential="sk-or-v1-abcdef")["usable"] is False
    assert a.sent == []


def test_a_resync_pushes_every_live_hold_under_the_host_that_saw_it(hosts, clock) -> None:
    """Not only this host's own: a record whose origin is down must survive a Redis restart."""
    a, b = hosts
    a.reg.record_report(
        "or-a", Report(False, Reason.RATE_LIMIT, 600, credential="sha256:00000000000000a1")
    )
    b.tell(a.sent)
    b.reg.record_report("or-b", Report(False, Reason.OVERLOADED, 120))
    clock.advance(10)
    pushed = held_records(b.reg.directory, b.reg.health, "host-b", b.reg.clock.now())
    assert sorted((s.scope, s.model, s.remaining_s, s.host) for s in pushed) == [
        (Scope.KEY, "m-a", pytest.approx(590), "host-a"),
        (Scope.MODEL, "m-b", pytest.approx(110), "host-b"),
    ]


def _record(**changes: object) -> str:
    good = {"v": 1, "server": ["a", "b", None], "scope": "server", "reason": "timeout"}
    return json.dumps({**good, "n": 1, "host": "h", **changes})


@pytest.mark.parametrize(
    ("raw", "ttl_ms"),
    [
        (b"not json", 1000),
        (b'{"v": 2}', 1000),
        (json.dumps({"v": 1, "server": ["x"], "scope": "server"}), 1000),
        (_record(scope="galaxy"), 1000),
        (_record(scope="key", reason="rate_limit"), 1000),  # a key scope without a key
        (_record(), -1),  # no TTL
    ],
)
def test_garbage_is_refused_with_a_reason(raw, ttl_ms) -> None:
    assert decode(_record(), 1000).scope is Scope.SERVER  # the good one reads
    with pytest.raises(ValueError):
        decode(raw, ttl_ms)


def test_one_key_per_scope_whoever_saw_it(hosts) -> None:
    a, b = hosts
    a.reg.record_report(
        "or-a", Report(False, Reason.RATE_LIMIT, 60, credential="sha256:00000000000000a1")
    )
    b.reg.record_report(
        "or-a", Report(False, Reason.RATE_LIMIT, 90, credential="sha256:00000000000000a1")
    )
    assert a.sent[0].key == b.sent[0].key
    assert "sha256" not in a.sent[0].key and "openrouter" not in a.sent[0].key


def test_other_hosts_spend_counts_toward_the_day_and_not_the_next() -> None:
    from datetime import UTC

    from hroute.core.budgets import Spend, budget_day

    day = budget_day(1_700_000_000, UTC)
    spend = Spend()
    spend.add("paid", 0.5, day)
    assert spend.set_others(day.label, {"paid": 0.75, "other": 1.0}, day)
    assert spend.spent("paid", day) == 1.25 and spend.total(day) == 2.25
    assert spend.own(day) == {"paid": 0.5}  # what this host tells, and saves
    assert spend.dump()[1] == {"paid": 0.5}
    assert not spend.set_others("1999-01-01", {"paid": 9.0}, day)  # a day that is over
    tomorrow = budget_day(day.ends_at + 1, UTC)
    assert spend.spent("paid", tomorrow) == 0.0


def test_a_restart_remembers_which_host_saw_a_shared_cooldown(hosts, clock) -> None:
    from hroute.edges.state_file import decode_state, encode_state

    a, b = hosts
    a.reg.record_report(
        "or-a", Report(False, Reason.RATE_LIMIT, 600, credential="sha256:00000000000000a1")
    )
    b.tell(a.sent)
    doc = json.loads(json.dumps(encode_state(b.reg.records(), clock.now(), clock.wall())))
    restored = Registry(load_config(CONFIG), clock)
    restored.restore(decode_state(doc, clock.now(), clock.wall()))
    # Not this host's own after a restart: a reconnect pushes it as host-a's.
    assert [
        s.host
        for s in held_records(restored.directory, restored.health, "host-b", restored.clock.now())
    ] == ["host-a"]
    assert restored.usable("or-a", credential="sha256:00000000000000a1")["usable"] is False


# --- records are untrusted: any host (or anyone with the Redis credential) writes them ------


def _bad_records() -> list[object]:
    nested = '{"v": 1, "server": ' + "[" * 100_000 + "]" * 100_000 + "}"
    return [
        ("n = 1e9", _record(n=10**9), 1000),
        ("n = Infinity", _record().replace('"n": 1', '"n": Infinity'), 1000),
        ("n = NaN", _record().replace('"n": 1', '"n": NaN'), 1000),
        ("n a bool", _record(n=True), 1000),
        ("n a float", _record(n=1.5), 1000),
        ("a 110-character host", _record(host="h" * 110), 1000),
        ("a host with an escape", _record(host="h\x1b[31m"), 1000),
        ("an empty host", _record(host=""), 1000),
        ("a 60 KB model", _record(scope="model", reason="overloaded", model="m" * 60_000), 1000),
        ("a model with a newline", _record(scope="model", reason="overloaded", model="a\nb"), 1000),
        (
            "a key scope with a raw key",
            _record(scope="key", reason="rate_limit", credential="sk-or-v1-0123456789abcdef"),
            1000,
        ),
        ("deeply nested JSON", nested, 1000),
        ("a huge record", _record(pad="x" * 100_000), 1000),
        ("a version that is not a number", _record(v=2, ver="1", state="held"), 1000),
        ("a negative version", _record(v=2, ver=-1, state="held"), 1000),
        ("an unknown state", _record(v=2, ver=1, state="maybe"), 1000),
        ("a TTL that is not a number", _record(), "soon"),
        ("not UTF-8", b'{"v": 1, "host": "\xff"}', 1000),
    ]


@pytest.mark.parametrize(
    ("raw", "ttl_ms"), [pytest.param(raw, ttl, id=case) for case, raw, ttl in _bad_records()]
)
def test_an_untrusted_record_is_refused_with_a_value_error_only(raw, ttl_ms) -> None:
    """Whatever is stored, decode() answers a record or a ValueError: anything else raised
    out of it stopped sharing on every host, at every reconnect."""
    with pytest.raises(ValueError):
        decode(raw, ttl_ms)  # type: ignore[arg-type]


def test_a_ten_year_ttl_holds_for_a_day_at_most() -> None:
    ten_years_ms = 10 * 365 * 86_400 * 1000
    shared = decode(_record(), ten_years_ms)
    assert shared.remaining_s == MAX_REMAINING_S == 86_400


def test_a_record_taken_is_one_the_state_file_keeps(hosts, clock) -> None:
    """The widest record decode() accepts is saved and restored, not set aside with every
    unrelated cooldown (as a 110-character host or n = 1e9 did)."""
    from hroute.edges.state_file import decode_state, encode_state

    _, b = hosts
    ident = b.reg.directory.identity("or-a")
    widest = json.dumps(
        {
            "v": 2, "ver": 2**53 - 1, "state": "held",
            "server": [ident.api_mode, ident.base_url, ident.model_family],
            "scope": "model", "model": "m" * MAX_MODEL_CHARS, "credential": "",
            "reason": "overloaded", "n": MAX_INCIDENTS, "host": "h" * MAX_HOST_CHARS,
        }
    )  # fmt: skip
    shared = decode(widest, 10**12)
    assert b.reg.take_shared(shared)
    doc = json.loads(json.dumps(encode_state(b.reg.records(), clock.now(), clock.wall())))
    restored = decode_state(doc, clock.now(), clock.wall())
    assert restored[ident].models["m" * MAX_MODEL_CHARS].cooldown is not None


# --- incidents have versions; evidence of recovery clears them on every host ---------------

KEY = "sha256:00000000000000a1"


def test_a_success_report_clears_a_shared_key_hold_on_every_host(hosts, clock) -> None:
    a, b = hosts
    c = Host(clock, "host-c")
    a.reg.record_report("or-a", Report(False, Reason.RATE_LIMIT, 600, credential=KEY))
    b.tell(a.sent)
    c.tell(a.sent)
    assert b.reg.usable("or-a", credential=KEY)["usable"] is False
    clock.advance(3)
    b.reg.record_report("or-a", Report(True, credential=KEY))  # b's agent got through
    assert b.reg.usable("or-a", credential=KEY)["usable"] is True
    [cleared] = b.sent
    assert cleared.cleared and cleared.version == a.sent[0].version
    assert cleared.host == "host-b" and cleared.remaining_s > 597  # outlives the hold
    for host in (a, c):
        host.tell([cleared])
        assert host.reg.usable("or-a", credential=KEY)["usable"] is True
    line = describe(c.events[-1])
    assert "cooldown lifted for credential sha256:00000000000000a1" in line
    assert "seen by host-b" in line


def test_a_stale_or_replayed_record_neither_revives_nor_shortens(hosts, clock) -> None:
    a, b = hosts
    a.reg.record_report("or-a", Report(False, Reason.RATE_LIMIT, 600, credential=KEY))
    first = list(a.sent)
    b.tell(first)
    b.reg.record_report("or-a", Report(True, credential=KEY))
    a.tell(b.sent)
    for host in (a, b):  # the held record of the cleared incident, replayed (a pull)
        host.tell(first)
        assert host.reg.usable("or-a", credential=KEY)["usable"] is True
    # A new incident later: a newer version; the old clear, replayed, does not end it.
    clock.advance(5)
    a.reg.record_report("or-a", Report(False, Reason.RATE_LIMIT, 300, credential=KEY))
    second = a.sent[-1]
    assert second.version > first[0].version
    b.tell([second])
    old_clear = b.sent[-1]
    for host in (a, b):
        host.tell([old_clear, *first])
        assert host.reg.usable("or-a", credential=KEY)["retry_after_s"] == pytest.approx(300)


def test_a_longer_local_hold_of_the_same_incident_is_kept_and_told(hosts, clock) -> None:
    a, b = hosts
    a.reg.record_report("or-a", Report(False, Reason.RATE_LIMIT, 60, credential=KEY))
    b.tell(a.sent)
    b.reg.record_report("or-a", Report(False, Reason.RATE_LIMIT, 600, credential=KEY))
    [longer] = b.sent  # the provider's later reset: the same incident, lengthened
    assert longer.version == a.sent[0].version and longer.remaining_s == pytest.approx(600)
    a.tell([longer])
    assert a.reg.usable("or-a", credential=KEY)["retry_after_s"] == pytest.approx(600)


def test_a_host_that_never_saw_the_hold_learns_the_clear_and_ignores_the_hold(hosts, clock) -> None:
    """A new host after a Redis restart hears both (any order): the cleared one wins."""
    a, b = hosts
    a.reg.record_report("or-a", Report(False, Reason.SERVER_ERROR))
    b.tell(a.sent)
    b.reg.record_report("or-a", Report(False, Reason.SERVER_ERROR))
    # The cleared record of that incident, as a probe-confirmed recovery on a would tell it.
    cleared = replace(a.sent[0], cleared=True, host="host-a")
    late = Host(clock, "host-late")
    late.tell([cleared, a.sent[0]])
    assert late.reg.usable("or-a")["usable"] is True
    other = Host(clock, "host-other")
    other.tell([a.sent[0], cleared])
    assert other.reg.usable("or-a")["usable"] is True


# Records of one scope: versions from a small set (ties happen), held or cleared, deadlines.
_records = st.lists(
    st.tuples(st.integers(0, 3), st.booleans(), st.sampled_from([5.0, 60.0, 61.0, 300.0, 600.0])),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(records=_records, order=st.randoms(use_true_random=False))
def test_any_order_of_arrival_converges(records, order) -> None:
    """Every host ends with the same ledger entry (the largest record) and the same verdict,
    whatever the order records arrive in, and however often one is repeated."""
    from tests.conftest import FakeClock

    clock = FakeClock()
    shape = Host(clock, "shape")
    ident = shape.reg.directory.identity("or-a")
    made = [
        Shared(ident, Scope.SERVER, Reason.SERVER_ERROR, left, f"h{v}", 1, version=v, cleared=c)
        for v, c, left in records
    ]
    outcomes = []
    for _ in range(3):
        host = Host(clock, "host")
        arrivals = made + order.sample(made, k=min(2, len(made)))  # some told twice
        order.shuffle(arrivals)
        host.tell(arrivals)
        [(known, until)] = [host.ledger.known(s.key, clock.now()) for s in made[:1]]
        verdict = host.reg.usable("or-a")
        outcomes.append((known.order, until, verdict["usable"], verdict["retry_after_s"]))
    best = max(made, key=lambda s: (s.order, s.remaining_s))
    for known_order, until, usable, retry in outcomes:
        assert known_order == best.order and until == clock.now() + best.remaining_s
        assert usable is best.cleared
        if not best.cleared:
            assert retry == pytest.approx(best.remaining_s, abs=SAME_DEADLINE_S)


def test_a_probe_confirmed_recovery_clears_an_inferred_server_hold_on_every_host(
    hosts, clock
) -> None:
    from hroute.core.health_values import ProbeOutcome

    a, b = hosts
    a.reg.record_probe("or-a", ProbeOutcome())
    a.reg.record_report("or-a", Report(False, Reason.SERVER_ERROR))
    b.tell(a.sent)
    assert b.reg.usable("or-a")["usable"] is False
    clock.advance(2)
    a.reg.record_probe("or-a", ProbeOutcome(Reason.CONNECTION, detail="refused"))  # seen down
    clock.advance(2)
    a.reg.record_probe("or-a", ProbeOutcome())  # and up again: the hold ends on a
    assert a.reg.usable("or-a")["usable"] is True
    [cleared] = [s for s in a.sent if s.cleared]
    assert cleared.scope is Scope.SERVER and cleared.version == a.sent[0].version
    b.tell([cleared])
    assert b.reg.usable("or-a")["usable"] is True
    assert b.sent == []  # a clear told here is not told back
    b.tell(a.sent[:1])  # the held record of that incident, replayed: nothing comes back
    assert b.reg.usable("or-a")["usable"] is True


def test_a_version_from_the_future_is_refused(hosts, clock) -> None:
    """2**53 - 1 would outrank every real incident of its scope, forever."""
    a, _ = hosts
    a.reg.record_report("or-a", Report(False, Reason.SERVER_ERROR))
    [real] = a.sent
    assert real.version == int(clock.wall() * 1000)
    assert not from_the_future(real, clock.wall())
    assert not from_the_future(replace(real, version=real.version + 600_000), clock.wall())
    assert from_the_future(replace(real, version=MAX_VERSION), clock.wall())

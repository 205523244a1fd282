"""Cooldowns shared between hosts (core/sharing.py): two registries, a fake clock, no Redis."""

from __future__ import annotations

import json

import pytest

from hroute.config.model import load_config
from hroute.core.cooldowns import Scope
from hroute.core.health import Report
from hroute.core.reasons import Reason
from hroute.core.registry import Registry
from hroute.core.sharing import Shared, decode, from_changes, local_records
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
    """One host: its registry and what it would tell the cluster."""

    def __init__(self, clock, name: str) -> None:
        self.name = name
        self.reg = Registry(load_config(CONFIG), clock)
        self.sent: list[Shared] = []
        self.reg.add_report_tap(
            lambda backend, changes: self.sent.extend(
                from_changes(self.reg, backend, changes, name)
            )
        )
        self.events: list[dict] = []
        self.reg.add_sink(self.events.append)

    def tell(self, shared: list[Shared]) -> None:
        """What arrives through Redis: the value and its TTL, decoded as the edge does."""
        for s in shared:
            self.reg.apply_shared(decode(s.encode(), int(s.remaining_s * 1000)))


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
    assert a.sent[-1].ejections == 2 and a.sent[-1].remaining_s == pytest.approx(60)
    b.tell(a.sent)
    b.tell(a.sent)  # told twice (a resync): still two incidents
    assert b.reg.health("or-a").server.ejections == 2
    clock.advance(61)
    b.reg.expire()
    b.reg.record_report("or-a", Report(False, Reason.SERVER_ERROR))
    assert b.sent[-1].ejections == 3 and b.sent[-1].remaining_s == pytest.approx(90)


def test_local_backends_and_holds_are_not_shared(hosts) -> None:
    a, b = hosts
    a.reg.record_report("llama", Report(False, Reason.CONNECTION))
    a.reg.record_report(
        "or-a", Report(False, Reason.AUTH_PERMANENT, credential="sha256:000000000000000a")
    )
    assert a.sent == []
    a.reg.record_report("fake-cloud", Report(False, Reason.CONNECTION))  # loopback, tier cloud
    assert [s.scope for s in a.sent] == [Scope.SERVER]
    llama = Shared(b.reg.identity("llama"), Scope.SERVER, Reason.CONNECTION, 30, "host-a")
    assert b.reg.apply_shared(llama) is False
    assert b.reg.usable("llama")["usable"] is True


def test_key_shaped_credentials_never_leave_the_host(hosts) -> None:
    a, _ = hosts
    a.reg.record_report("or-a", Report(False, Reason.RATE_LIMIT, 60, credential="sk-or-v1-abcdef"))
    assert a.reg.usable("or-a", credential="sk-or-v1-abcdef")["usable"] is False
    assert a.sent == []


def test_a_resync_pushes_only_what_this_host_saw(hosts, clock) -> None:
    a, b = hosts
    a.reg.record_report(
        "or-a", Report(False, Reason.RATE_LIMIT, 600, credential="sha256:00000000000000a1")
    )
    b.tell(a.sent)
    b.reg.record_report("or-b", Report(False, Reason.OVERLOADED, 120))
    clock.advance(10)
    pushed = local_records(b.reg, "host-b")
    assert [(s.scope, s.model, s.remaining_s, s.host) for s in pushed] == [
        (Scope.MODEL, "m-b", pytest.approx(110), "host-b")
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
    # Not this host's own after a restart: a reconnect does not push it as if it were.
    assert local_records(restored, "host-b") == []
    assert restored.usable("or-a", credential="sha256:00000000000000a1")["usable"] is False

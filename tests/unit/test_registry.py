"""Registry queries: identity sharing, routing, events; fake clock, no I/O."""

import pytest

from hroute.config.model import load_config
from hroute.core.errors import UnknownProfileError
from hroute.core.events import Topic
from hroute.core.health import ProbeOutcome, Report
from hroute.core.reasons import Reason
from hroute.core.registry import Registry

CONFIG = """
defaults:
  probe: {fall: 1}
  cooldown: {base_s: 30, max_s: 300}
backends:
  local: {kind: llama-server, base_url: "http://127.0.0.1:8080"}
  local-alias: {kind: openai, base_url: "http://localhost:8080/v1/"}
  ollama: {kind: ollama, base_url: "http://127.0.0.1:11434"}
  cloud: {kind: openrouter, base_url: "https://openrouter.ai/api/v1", model: m}
profiles:
  coding: {chain: [local, ollama, cloud]}
"""


@pytest.fixture
def reg(clock) -> Registry:
    return Registry(load_config(CONFIG), clock)


def test_two_names_for_one_server_share_health(reg: Registry) -> None:
    reg.record_probe("local", ProbeOutcome(Reason.CONNECTION))
    assert reg.usable("local-alias")["usable"] is False
    assert reg.directory.resolve(base_url="http://127.0.0.1:8080/v1/") == "local"


def test_route_falls_through_the_chain_and_says_why(reg: Registry) -> None:
    reg.record_probe("local", ProbeOutcome(Reason.CONNECTION, detail="refused"))
    reg.record_report("ollama", Report(False, Reason.RATE_LIMIT, retry_after_s=20))
    answer = reg.route("coding")
    assert answer["backend"] == "cloud"
    assert answer["base_url"] == "https://openrouter.ai/api/v1" and answer["model"] == "m"
    assert [(c["backend"], c["usable"], c["reason"]) for c in answer["chain"]] == [
        ("local", False, "connection"),
        ("ollama", False, "rate_limit"),
        ("cloud", True, None),
    ]


def test_route_with_nothing_usable_says_when(reg: Registry, clock) -> None:
    reg.record_report("local", Report(False, Reason.SERVER_ERROR))  # 30 s
    reg.record_report("ollama", Report(False, Reason.RATE_LIMIT, retry_after_s=12))
    answer = reg.route("coding", exclude=["cloud"])
    assert answer["backend"] is None
    assert answer["retry_after_s"] == pytest.approx(12)
    assert answer["chain"][2]["reason"] == "excluded"
    clock.advance(12)
    reg.expire()
    assert reg.route("coding", exclude=["cloud"])["backend"] == "ollama"


def test_route_unknown_profile(reg: Registry) -> None:
    with pytest.raises(UnknownProfileError, match="configured: coding"):
        reg.route("nope")


def test_fallback_events_only_when_the_answer_changes(reg: Registry) -> None:
    reg.route("coding")
    reg.route("coding")
    assert [e["event"] for e in reg.events.since()] == []
    reg.record_probe("local", ProbeOutcome(Reason.CONNECTION))
    reg.route("coding")
    reg.route("coding")
    fallbacks = [e for e in reg.events.since() if e["event"] == "fallback"]
    assert len(fallbacks) == 1
    assert fallbacks[0]["old"] == "local" and fallbacks[0]["new"] == "ollama"
    assert "local: connection" in fallbacks[0]["reason"]


def test_events_have_increasing_ids_and_since_filters(reg: Registry) -> None:
    reg.record_probe("local", ProbeOutcome())
    reg.record_probe("ollama", ProbeOutcome())
    events = reg.events.since()
    assert [e["id"] for e in events] == [1, 2]
    assert reg.events.since(1) == events[1:]


def test_event_ring_is_bounded(clock) -> None:
    reg = Registry(load_config(CONFIG), clock, events_kept=10)
    for i in range(30):
        reg.record_report("local", Report(False, Reason.RATE_LIMIT, retry_after_s=i + 1))
    events = reg.events.since()
    # 30 cooldowns and the one fallback of profile coding they caused; the ring keeps 10
    assert len(events) == 10 and events[-1]["id"] == 31


def test_snapshot_carries_what_a_reader_needs(reg: Registry, clock) -> None:
    reg.record_probe("local", ProbeOutcome(Reason.CONNECTION))
    reg.record_report("ollama", Report(False, Reason.OVERLOADED, retry_after_s=5))
    reg.record_report("cloud", Report(False, Reason.RATE_LIMIT, retry_after_s=9, credential="fp"))
    snap = reg.snapshot()
    assert snap["backends"]["local"]["blocked"] == "connection"
    assert snap["backends"]["ollama"]["until"] == pytest.approx(clock.now() + 5)
    # A 429 for one key is that key's for the backend's model (the report named no other).
    assert snap["backends"]["cloud"]["creds"]["fp"] == {
        "m": [pytest.approx(clock.now() + 9), "rate_limit"]
    }
    assert snap["urls"]["http://127.0.0.1:8080"] == "local"


def test_version_moves_on_change_and_listeners_hear_it(reg: Registry) -> None:
    heard = []
    reg.subscribe(Topic.CHANGED, lambda: heard.append(reg.version))
    before = reg.version
    reg.record_report("local", Report(False, Reason.TIMEOUT))
    assert reg.version > before and heard == [reg.version]


def test_route_is_a_query_that_changes_nothing(reg: Registry) -> None:
    reg.record_probe("local", ProbeOutcome(Reason.CONNECTION))
    before, version = reg.events.since(), reg.version
    for _ in range(3):
        reg.route("coding")
        reg.route("coding", exclude=["ollama"])
        reg.route("coding", task="t9")
    assert reg.events.since() == before and reg.version == version


def test_a_fallback_is_told_when_health_changes_not_when_asked(reg: Registry) -> None:
    reg.record_probe("local", ProbeOutcome())
    reg.record_probe("local", ProbeOutcome(Reason.CONNECTION))
    [away] = [e for e in reg.events.since() if e["event"] == "fallback"]
    assert (away["old"], away["new"]) == ("local", "ollama")
    reg.record_probe("local", ProbeOutcome())
    back = [e for e in reg.events.since(away["id"]) if e["event"] == "fallback"]
    assert [(e["old"], e["new"]) for e in back] == [("ollama", "local")]

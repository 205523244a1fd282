"""Routing policies that hold up: each numbered failure of the escalation issue, as a test."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hroute.config.model import load_config
from hroute.core.health import Report
from hroute.core.reasons import Reason
from hroute.core.registry import Registry
from hroute.systemd.journal import MESSAGE_IDS, event_fields

CONFIG = """
backends:
  llama: {kind: llama-server, base_url: "http://127.0.0.1:8080"}
  ollama: {kind: ollama, base_url: "http://127.0.0.1:11434"}
  router: {kind: openrouter, base_url: "https://openrouter.ai/api/v1",
           price: {input_per_mtok: 3, output_per_mtok: 15}}
profiles:
  coding:
    chain: [llama, router]
    escalation: {max_local_attempts: 2, task_ttl_s: 60}
  research:
    chain: [llama, router]
    escalation: {max_local_attempts: 2, task_ttl_s: 3600}
  offline:
    chain: [llama, ollama]
    escalation: {max_local_attempts: 2}
fallback_rules:
  rate_limit: {switch_after: 3}
budgets: {daily_usd: 1, timezone: UTC}
"""

# 2026-11-28 20:00:00 UTC, a Saturday: four hours before the UTC day ends.
EVENING_UTC = datetime(2026, 11, 28, 20, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, wall: float = EVENING_UTC) -> None:
        self.t, self._wall0 = 1000.0, wall

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self._wall0 + (self.t - 1000.0)

    async def sleep(self, seconds: float) -> None:  # pragma: no cover
        raise AssertionError

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reg(clock: Clock) -> Registry:
    return Registry(load_config(CONFIG), clock)


def rate_limited(credential: str | None) -> Report:
    return Report(False, Reason.RATE_LIMIT, credential=credential)


def by_backend(answer: dict) -> dict[str, str | None]:
    return {c["backend"]: c["reason"] for c in answer["chain"]}


# 1. fallback_rules count per (backend, key), and route() takes the caller's key


def test_switch_after_counts_the_callers_key_and_route_honours_it(reg: Registry) -> None:
    for _ in range(3):
        reg.record_report("llama", rate_limited("fp-a"))
    assert reg.route("coding", credential="fp-a")["backend"] == "router"
    assert reg.route("coding", credential="fp-b")["backend"] == "llama"
    assert reg.route("coding")["backend"] == "llama"  # nobody's key: the backend itself is fine


def test_reports_on_two_keys_do_not_add_up(reg: Registry) -> None:
    reg.record_report("llama", rate_limited("fp-a"))
    reg.record_report("llama", rate_limited("fp-a"))
    reg.record_report("llama", rate_limited("fp-b"))
    for key in ("fp-a", "fp-b", None):
        assert reg.route("coding", credential=key)["backend"] == "llama"


# 2. each profile's task_ttl_s applies to that profile


def test_task_ttl_is_per_profile(reg: Registry, clock: Clock) -> None:
    reg.record_task_failure("t1", "invalid_output")
    reg.record_task_failure("t1", "invalid_output")
    clock.advance(120)
    assert reg.route("coding", task="t1")["backend"] == "llama"  # 60 s: forgotten
    assert reg.route("research", task="t1")["backend"] == "router"  # 3600 s: escalated


# 4. a profile without a cloud tier stays local; a 503 explains and says what would help


def test_a_profile_without_a_cloud_tier_never_escalates_away(reg: Registry) -> None:
    for _ in range(3):
        reg.record_task_failure("t1", "repeated_tool_failure")
    answer = reg.route("offline", task="t1")
    assert answer["backend"] == "llama" and "escalated" not in answer
    assert "no cloud tier" in answer["note"]
    assert [e for e in reg.events.since() if e["event"] == "escalation"] and all(
        e["profile"] != "offline" for e in reg.events.since() if e["event"] == "escalation"
    )


def test_escalated_with_the_budget_spent_explains_every_backend(reg: Registry) -> None:
    reg.record_usage("router", 1_000_000, 0)  # $3 of a $1 day
    reg.record_task_failure("t1", "no_progress")
    reg.record_task_failure("t1", "no_progress")
    answer = reg.route("coding", task="t1")
    assert answer["backend"] is None
    reasons = by_backend(answer)
    assert reasons["llama"].startswith("escalated")
    assert reasons["router"].startswith("budget_exhausted")
    assert any("confirm=1" in h for h in answer["help"])
    # the budget resets at midnight UTC, four hours from now
    assert answer["retry_after_s"] == pytest.approx(4 * 3600, abs=1)
    assert reg.route("coding", task="t1", allow_paid=True)["backend"] == "router"


# 5. retry_after_s: the earliest known time, or absent with a reason


def test_retry_after_is_absent_with_a_reason_when_a_probe_blocks(reg: Registry) -> None:
    from hroute.core.health import ProbeOutcome

    reg.record_probe("llama", ProbeOutcome(Reason.CONNECTION))
    reg.record_probe("router", ProbeOutcome(Reason.CONNECTION))
    answer = reg.route("coding")
    assert answer["backend"] is None
    assert "retry_after_s" not in answer
    assert "probe" in answer["retry_after_unknown"]


def test_retry_after_is_the_earliest_cooldown_end(reg: Registry) -> None:
    reg.record_report("llama", Report(False, Reason.OVERLOADED, retry_after_s=40))
    reg.record_report("router", Report(False, Reason.OVERLOADED, retry_after_s=25))
    assert reg.route("coding")["retry_after_s"] == pytest.approx(25)


# 6. the budget day has a configured zone and survives a restart in another one


def test_spend_survives_a_restart_in_another_time_zone() -> None:
    # 02:00 UTC on the 29th is 18:00 on the 28th in Los Angeles: the day labels differ.
    clock = Clock(datetime(2026, 11, 29, 2, 0, tzinfo=UTC).timestamp())
    first = Registry(load_config(CONFIG), clock)
    first.record_usage("router", 1_200_000, 0)  # $3.60
    saved = first.router.spend.dump()
    la = CONFIG.replace("timezone: UTC", "timezone: America/Los_Angeles")
    again = Registry(load_config(la), clock)
    again.router.spend.load(*saved)
    assert again.record_usage("router", 0, 0)["spent_today_usd"] == pytest.approx(3.6)
    clock.advance(22 * 3600 + 1)  # the UTC day that money was spent in is over
    assert again.record_usage("router", 0, 0)["spent_today_usd"] == 0


def test_budget_day_follows_the_configured_zone(clock: Clock) -> None:
    la = Registry(
        load_config(CONFIG.replace("timezone: UTC", "timezone: America/Los_Angeles")), clock
    )
    assert la.router.day() == "2026-11-28"  # 12:00 in Los Angeles
    clock.advance(4 * 3600)  # midnight UTC, 16:00 in Los Angeles: the same LA day
    assert la.router.day() == "2026-11-28"


def test_an_unknown_time_zone_is_a_config_error() -> None:
    from hroute.core.errors import ConfigError

    with pytest.raises(ConfigError, match="budgets.timezone"):
        load_config(CONFIG.replace("timezone: UTC", "timezone: Mars/Olympus"))


# 7. escalation has its journal id and fields, and a task failure's detail is kept


def test_escalation_is_journalled_with_task_and_profile(reg: Registry) -> None:
    reg.record_task_failure("t1", "invalid_output", detail="tool call had no name")
    reg.record_task_failure("t1", "invalid_output", detail="again")
    [event] = [
        e for e in reg.events.since() if e["event"] == "escalation" and e["profile"] == "coding"
    ]
    fields = event_fields(event)
    assert fields["MESSAGE_ID"] == MESSAGE_IDS["escalation"]
    assert fields["HROUTE_TASK"] == "t1" and fields["HROUTE_PROFILE"] == "coding"
    failures = [e for e in reg.events.since() if e["event"] == "task_failure"]
    assert [e["detail"] for e in failures] == ["tool call had no name", "again"]


def test_an_escalated_task_in_use_stays_escalated_past_its_ttl(reg: Registry, clock: Clock) -> None:
    """The TTL counts from the task's last use, not its last failure: an agent that asks
    about the task every turn keeps it on the cloud; one that stops asking lets it go."""
    reg.record_task_failure("t1", "invalid_output")
    reg.record_task_failure("t1", "invalid_output")
    for _ in range(5):  # a turn every 40 s, 200 s in all: past coding's 60 s
        clock.advance(40)
        assert reg.route("coding", task="t1")["backend"] == "router"
    clock.advance(61)
    assert reg.route("coding", task="t1")["backend"] == "llama"  # idle past the TTL


TYPED = """
backends:
  llama: {kind: llama-server, base_url: "http://127.0.0.1:8080"}
  router: {kind: openrouter, base_url: "https://openrouter.ai/api/v1"}
  strong: {kind: openai, base_url: "https://api.openai.com/v1", model: big}
profiles:
  coding:
    chain: [llama, router]
    escalation:
      max_local_attempts: 2
      task_types: {chat: local_only, coding: escalate, research: deep}
  deep:
    chain: [llama, strong]
    escalation: {max_local_attempts: 1}
"""


def typed_registry(clock: Clock) -> Registry:
    return Registry(load_config(TYPED), clock=clock)  # type: ignore[arg-type]


def test_a_local_only_task_type_stays_local_whatever_fails_and_says_why(clock: Clock) -> None:
    reg = typed_registry(clock)
    for _ in range(3):
        answer = reg.record_task_failure("t1", "repeated_tool_failure", task_type="chat")
    assert answer["escalated"]["coding"] is False
    route = reg.route("coding", task="t1")
    assert route["backend"] == "llama" and "escalated" not in route
    assert route["note"] == "task type chat is local_only in profile coding: staying local"
    assert route["task_type"] == {"type": "chat", "rule": "local_only"}
    # The type the agent gives now wins over the one it reported: coding escalates.
    assert reg.route("coding", task="t1", task_type="coding")["backend"] == "router"


def test_an_unlisted_type_follows_the_profile_and_a_type_may_name_another_profile(
    clock: Clock,
) -> None:
    reg = typed_registry(clock)
    reg.record_task_failure("t1", "no_progress", task_type="poetry")
    reg.record_task_failure("t1", "no_progress", task_type="poetry")
    assert reg.route("coding", task="t1")["backend"] == "router"  # as the profile
    reg.record_task_failure("t2", "no_progress", task_type="research")
    answer = reg.route("coding", task="t2")  # deep: one failure escalates, to its chain
    assert answer["backend"] == "strong" and answer["profile"] == "deep"
    assert answer["task_type"] == {"type": "research", "rule": "deep", "profile": "coding"}


def test_task_types_must_name_a_rule_or_a_profile() -> None:
    from hroute.core.errors import ConfigError

    bad = TYPED.replace("research: deep", "research: deeep")
    with pytest.raises((ConfigError, ValueError), match="task_types.research: 'deeep'"):
        load_config(bad)

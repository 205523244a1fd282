"""Routing policies with a fake clock: escalation, capability needs, budgets, fallback rules."""

import pytest

from hroute.config.model import load_config
from hroute.core.health import Report
from hroute.core.needs import Needs, parse_needs
from hroute.core.reasons import Reason
from hroute.core.registry import Registry

CONFIG = """
backends:
  llama: {kind: llama-server, base_url: "http://127.0.0.1:8080", context_length: 8192}
  ollama: {kind: ollama, base_url: "http://127.0.0.1:11434", context_length: 32768, tools: false}
  router: {kind: openrouter, base_url: "https://openrouter.ai/api/v1", vision: true,
           context_length: 200000, price: {input_per_mtok: 3, output_per_mtok: 15}}
  cheap: {kind: openai, base_url: "https://api.deepseek.com", context_length: 64000,
          price: {input_per_mtok: 0.3, output_per_mtok: 1.2}}
profiles:
  coding:
    chain: [llama, ollama, router, cheap]
    escalation: {max_local_attempts: 3, task_ttl_s: 600,
                 trigger_on: [repeated_tool_failure, invalid_output, no_progress, user_request]}
fallback_rules:
  rate_limit: {switch_after: 3}
  server_error: {switch_immediately: true}
budgets: {daily_usd: 10, per_backend_daily_usd: {router: 2}}
"""


@pytest.fixture
def reg(clock) -> Registry:
    return Registry(load_config(CONFIG), clock)


def reasons(answer: dict) -> dict[str, str | None]:
    return {c["backend"]: c["reason"] for c in answer["chain"]}


def test_task_escalates_past_the_local_tier_after_max_local_attempts(reg: Registry) -> None:
    for _ in range(2):
        reg.record_task_failure("t1", "repeated_tool_failure")
    assert reg.route("coding", task="t1")["backend"] == "llama"
    answer = reg.record_task_failure("t1", "invalid_output")
    assert answer["escalated"] == {"coding": True} and answer["failures"] == 3
    routed = reg.route("coding", task="t1")
    assert routed["backend"] == "router"
    assert routed["escalated"].startswith("escalated: 3 local failures")
    assert reasons(routed)["llama"].startswith("escalated") and reasons(routed)[
        "ollama"
    ].startswith("escalated")
    assert reg.route("coding", task="other")["backend"] == "llama"  # only that task
    assert reg.route("coding")["backend"] == "llama"
    reg.route("coding", task="t1")
    [event] = [e for e in reg.events.since() if e["event"] == "escalation"]  # said once, with why
    assert event["task"] == "t1" and event["backend"] == "router"
    assert event["reason"].startswith("escalated: 3 local failures")


def test_untriggered_reasons_do_not_count_and_user_request_escalates_at_once(reg: Registry) -> None:
    for _ in range(5):
        reg.record_task_failure("t", "task_timeout")  # not in trigger_on here
    assert reg.route("coding", task="t")["backend"] == "llama"
    reg.record_task_failure("t", "user_request")
    assert reg.route("coding", task="t")["backend"] == "router"


def test_task_state_expires(reg: Registry, clock) -> None:
    for _ in range(3):
        reg.record_task_failure("t", "no_progress")
    assert reg.route("coding", task="t")["backend"] == "router"
    clock.advance(601)
    assert reg.route("coding", task="t")["backend"] == "llama"


def test_capability_needs_skip_with_reason(reg: Registry) -> None:
    answer = reg.route("coding", needs=parse_needs("vision"))
    assert answer["backend"] == "router"
    assert reasons(answer)["llama"] == "needs vision"
    answer = reg.route("coding", needs=parse_needs("context:20000"))
    assert (
        answer["backend"] == "ollama" and reasons(answer)["llama"] == "needs context 20000 > 8192"
    )
    answer = reg.route("coding", needs=parse_needs("context:20000,tools"))
    assert answer["backend"] == "router" and reasons(answer)["ollama"] == "needs tools"
    assert reg.route("coding", needs=parse_needs("context:500000"))["backend"] is None


@pytest.mark.parametrize("bad", ["vison", "context:", "context:abc", "gpu"])
def test_parse_needs_rejects_unknown_items(bad: str) -> None:
    with pytest.raises(ValueError, match="valid: vision, tools, context:TOKENS"):
        parse_needs(bad)


def test_parse_needs() -> None:
    assert parse_needs(" vision , context:100 ") == Needs(vision=True, context=100)
    assert parse_needs(None) == Needs()


def test_budget_per_backend_then_total_and_allow_paid(reg: Registry, clock) -> None:
    needs = parse_needs("vision")
    got = reg.record_usage("router", input_tokens=100_000, output_tokens=100_000)  # 0.3 + 1.5
    assert got["cost_usd"] == pytest.approx(1.8) and got["budget"] is None
    assert reg.route("coding", needs=needs)["backend"] == "router"
    got = reg.record_usage("router", input_tokens=100_000, output_tokens=0)
    assert got["spent_today_usd"] == pytest.approx(2.1) and got["budget"].startswith(
        "budget_exhausted"
    )
    answer = reg.route("coding", needs=needs)
    assert answer["backend"] is None
    assert reasons(answer)["router"] == "budget_exhausted: router spent $2.10 of $2.00 today"
    assert reg.route("coding", needs=needs, allow_paid=True)["backend"] == "router"
    assert reg.view("router")["spent_today_usd"] == pytest.approx(2.1)
    # the total budget stops every paid backend
    reg.record_usage("cheap", input_tokens=10_000_000, output_tokens=5_000_000)  # 3 + 6
    answer = reg.route("coding", exclude=["llama", "ollama"])
    assert answer["backend"] is None and "budget_exhausted" in reasons(answer)["cheap"]
    clock.advance(86400)  # a new day
    assert reg.route("coding", exclude=["llama", "ollama"])["backend"] == "router"


def test_free_backends_cost_nothing(reg: Registry) -> None:
    got = reg.record_usage("llama", 10**6, 10**6)
    assert got["cost_usd"] == 0 and "spent_today_usd" not in reg.view("llama")


def test_fallback_rule_switch_after_three_rate_limits(reg: Registry) -> None:
    for i in range(2):
        assert reg.record_report("llama", Report(False, Reason.RATE_LIMIT)) == []
        assert reg.route("coding")["backend"] == "llama", i
    [t] = reg.record_report("llama", Report(False, Reason.RATE_LIMIT))
    assert t.event == "cooldown"
    assert reg.route("coding")["backend"] == "ollama"


def test_success_resets_the_streak(reg: Registry) -> None:
    reg.record_report("llama", Report(False, Reason.RATE_LIMIT))
    reg.record_report("llama", Report(False, Reason.RATE_LIMIT))
    reg.record_report("llama", Report(True))
    assert reg.record_report("llama", Report(False, Reason.RATE_LIMIT)) == []


def test_server_error_switches_immediately(reg: Registry) -> None:
    [t] = reg.record_report("llama", Report(False, Reason.SERVER_ERROR))
    assert t.event == "cooldown"
    assert reg.route("coding")["backend"] == "ollama"


def test_unknown_fallback_rule_reason_is_a_config_error() -> None:
    from hroute.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"fallback_rules.ratelimit"):
        load_config("fallback_rules:\n  ratelimit: {switch_after: 2}\n")


def test_budget_for_unknown_backend_is_a_config_error() -> None:
    from hroute.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"budgets.per_backend_daily_usd.nope"):
        load_config("budgets: {per_backend_daily_usd: {nope: 1}}\n")

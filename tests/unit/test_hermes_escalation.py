"""Escalation in the Hermes plugin: the seed's triggers read from a turn, the decision made
from hroute's route answer, and the escalator on a stand-in AIAgent (no Hermes, no sockets)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import pytest

from hroute_hermes import HermesPlugin
from hroute_hermes.escalation import (
    Failure,
    Intent,
    Settings,
    decide,
    failed_attempt,
    intent,
    load_settings,
    task_type,
    tool_error,
    tools_used,
    turn_messages,
    user_request,
)
from hroute_hermes.escalator import Escalator
from hroute_hermes.gate import Gate, HealthView
from hroute_hermes.reports import normalized_url
from hroute_hermes.status import Status
from hroute_hermes.wiring import ESCALATION, Wiring
from tests.unit.test_hermes_plugin import CHAIN, FB1, FB2, PRIMARY, Agent, Clock, FakeHroute

ON = Settings(profile="coding")
URLS = [normalized_url(FB1), normalized_url(FB2)]

# --- settings --------------------------------------------------------------------------------


def test_settings_come_from_the_hroute_block_and_the_environment_wins() -> None:
    config = {"hroute": {"profile": "coding", "paid": "confirm", "turn_timeout_s": 300}}
    assert load_settings(config, env={}) == Settings("coding", "confirm", 300.0)
    env = {"HROUTE_PROFILE": "cheap", "HROUTE_PAID": "allow"}
    assert load_settings(config, env=env) == Settings("cheap", "allow", 300.0)


@pytest.mark.parametrize(
    "config",
    [None, {}, {"hroute": "coding"}, {"hroute": {"paid": "yes please", "turn_timeout_s": "x"}}],
)
def test_without_a_readable_profile_escalation_is_off_and_paid_use_denied(config: Any) -> None:
    settings = load_settings(config, env={})
    assert not settings.enabled
    assert settings.paid == "deny" and settings.turn_timeout_s is None


# --- triggers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "asked"),
    [
        ("/escalate", "/escalate"),
        ("  /ESCALATE please", "/escalate"),
        ("this is hard, Use the\ncloud model", "use the cloud model"),
        ("what does /escalate do?", None),
        ("use the local model", None),
        (None, None),
        ([{"type": "text", "text": "/escalate"}], None),
    ],
)
def test_the_user_asks_with_a_command_or_a_phrase(text: Any, asked: str | None) -> None:
    assert user_request(text, ON) == asked


def test_phrases_are_configurable() -> None:
    settings = load_settings({"hroute": {"profile": "p", "escalate_phrases": ["Ask GPT"]}}, {})
    assert user_request("please ask gpt about it", settings) == "ask gpt"
    assert user_request("use the cloud model", settings) is None


def tool(content: Any, name: str = "terminal") -> dict[str, Any]:
    return {"role": "tool", "name": name, "tool_call_id": "c", "content": content}


def test_tool_errors_as_hermes_writes_them() -> None:
    missing = "Tool 'fetch_weather' does not exist. Available tools: read_file"
    assert tool_error(tool(missing, "fetch_weather")) == "unknown tool fetch_weather"
    assert tool_error(tool("Tool call rejected: the tool name was empty.", "")) == "unknown tool ?"
    assert tool_error(tool(json.dumps({"error": "No such file"}))) == "terminal: No such file"
    assert tool_error(tool(json.dumps({"output": "ok", "error": None}))) is None
    assert tool_error(tool("plain text output")) is None
    assert tool_error({"role": "assistant", "content": json.dumps({"error": "x"})}) is None


def test_only_the_latest_turn_counts() -> None:
    old = [{"role": "user", "content": "a"}, tool(json.dumps({"error": "old"}))]
    new = [{"role": "user", "content": "b"}, {"role": "assistant", "content": ""}]
    assert turn_messages(old + new) == new[1:]
    assert turn_messages(None) == [] and turn_messages("text") == []


def result(response: Any = "done", *messages: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {
        "final_response": response,
        "messages": [{"role": "user", "content": "q"}, *messages],
        "completed": True,
        **over,
    }


BAD = json.dumps({"error": "bad arguments"})


@pytest.mark.parametrize(
    ("turn", "reason"),
    [
        (result("done"), None),
        (result("done", tool(BAD)), None),  # one failing tool call is not "repeated"
        (result("done", tool(BAD), tool(BAD)), "repeated_tool_failure"),
        (
            result(
                "Model generated invalid tool call: x",
                completed=False,
                partial=True,
                error="Model generated invalid tool call: x",
            ),
            "repeated_tool_failure",
        ),
        (result(""), "invalid_output"),
        (result(None), "invalid_output"),
        (result("text", failed=True, error="Empty response from model"), "invalid_output"),
        (result("I ran out of steps", completed=False), "no_progress"),
        ("not a dict", "invalid_output"),
    ],
)
def test_a_turn_is_a_failed_attempt_for_the_first_reason_that_applies(
    turn: Any, reason: str | None
) -> None:
    failure = failed_attempt(turn, 1.0, ON)
    assert (failure.reason if failure else None) == reason


def test_the_same_answer_to_the_same_request_is_no_progress() -> None:
    failure = failed_attempt(
        result("Let me check. "), 1.0, ON, user_message="fix it",
        previous_message="Fix  it", previous_response="Let me check.",
    )  # fmt: skip
    assert failure == Failure(
        "no_progress", "the same answer to the same request as the previous turn"
    )
    assert failed_attempt(result("Here it is."), 1.0, ON, previous_response="Let me check.") is None


def test_done_to_different_requests_is_not_a_failure() -> None:
    for previous, message in (("create a.txt", "create b.txt"), ("create b.txt", "delete c")):
        assert failed_attempt(
            result("Done."), 1.0, ON, user_message=message,
            previous_message=previous, previous_response="Done.",
        ) is None  # fmt: skip


def test_the_same_tool_call_in_a_loop_is_no_progress() -> None:
    call = {"function": {"name": "read_file", "arguments": '{"path": "a"}'}}
    other = {"function": {"name": "read_file", "arguments": '{"path": "b"}'}}
    loop = [{"role": "assistant", "tool_calls": [call]}, tool("x", "read_file")] * 3
    failure = failed_attempt(result("ok", *loop), 1.0, ON)
    assert failure is not None and failure.reason == "no_progress"
    assert "read_file" in failure.detail and "3 times" in failure.detail
    varied = [{"role": "assistant", "tool_calls": [call, other]}, tool("x", "read_file")] * 2
    assert failed_attempt(result("ok", *varied), 1.0, ON) is None


def test_a_turn_over_its_time_limit_is_a_task_timeout_whatever_it_answered() -> None:
    settings = Settings(profile="coding", turn_timeout_s=60)
    assert failed_attempt(result("done"), 59.0, settings) is None
    failure = failed_attempt(result("done"), 61.0, settings)
    assert failure is not None and failure.reason == "task_timeout" and "61s" in failure.detail
    assert failed_attempt(result("done"), 10_000.0, ON) is None  # no limit set: never


def test_asking_for_the_cloud_comes_first() -> None:
    failure = failed_attempt(result(""), 999.0, ON, user_message="/escalate")
    assert failure is not None and failure.reason == "user_request"


# --- decisions -------------------------------------------------------------------------------


def route_answer(backend: str | None, base_url: str | None = None, **over: Any) -> dict:
    answer: dict[str, Any] = {
        "profile": "coding",
        "backend": backend,
        "escalated": "escalated: 3 local failures (repeated_tool_failure)",
        "chain": [
            {"backend": "qwen", "usable": False, "reason": "escalated: 3 local failures (…)"},
            {"backend": "gpt", "usable": backend is not None, "reason": None},
        ],
    }
    if base_url:
        answer["base_url"] = normalized_url(base_url)
    return {**answer, **over}


def test_not_escalated_or_no_answer_means_hermes_as_usual() -> None:
    assert decide(None, URLS, None, False, ON).action == "none"
    plain = {"profile": "coding", "backend": "qwen", "chain": []}
    assert decide(plain, URLS, None, False, ON).action == "none"
    note = {**plain, "note": "escalated: …, but profile coding has no cloud tier: staying local"}
    assert "no cloud tier" in decide(note, URLS, None, False, ON).why


def test_escalated_switches_to_the_fallback_with_hroutes_url_then_stays() -> None:
    answer = route_answer("gpt", FB2)
    switch = decide(answer, URLS, normalized_url(PRIMARY), False, ON)
    assert (switch.action, switch.index, switch.url) == ("switch", 1, normalized_url(FB2))
    assert decide(answer, URLS, normalized_url(FB2), True, ON).action == "stay"
    assert decide(answer, URLS, normalized_url(FB1), True, ON).action == "switch"


def test_escalated_to_a_backend_hermes_has_no_fallback_for_stays_local() -> None:
    decision = decide(route_answer("gpt", "https://api.openai.com/v1"), URLS, None, False, ON)
    assert decision.action == "local" and "no Hermes fallback" in decision.why


BUDGET = dict(
    chain=[
        {"backend": "qwen", "usable": False, "reason": "escalated: 3 local failures (x)"},
        {"backend": "gpt", "usable": False, "reason": "budget_exhausted: $5.00 of $5.00 today"},
    ],
    escalated="escalated: 3 local failures (x)",
    help=["confirm=1 (or allow_paid=1) routes to gpt past its budget"],
)


def test_past_the_budget_deny_stays_local_and_says_how_to_allow_it() -> None:
    decision = decide(route_answer(None, **BUDGET), URLS, None, False, ON)
    assert decision.action == "local"
    assert "(gpt: budget_exhausted: $5.00 of $5.00 today)" in decision.why
    assert "qwen" not in decision.why  # the local tier's own skip is not a reason
    assert "needs hroute.paid: allow (or confirm)" in decision.why


def test_past_the_budget_confirm_asks_once() -> None:
    confirm = Settings(profile="coding", paid="confirm")
    assert decide(route_answer(None, **BUDGET), URLS, None, False, confirm).action == "ask"
    after = decide(route_answer(None, **BUDGET), URLS, None, False, confirm, confirmed=True)
    assert after.action == "local" and "hroute.paid" not in after.why


def test_everything_down_is_not_a_budget_question() -> None:
    down = dict(BUDGET, help=[], chain=[{"backend": "gpt", "usable": False, "reason": "down"}])
    confirm = Settings(profile="coding", paid="confirm")
    decision = decide(route_answer(None, **down), URLS, None, False, confirm)
    assert decision.action == "local" and "gpt: down" in decision.why


# --- the escalator on a stand-in agent -------------------------------------------------------


class FakeRouter:
    """Answers like hroute's task API: `max_local_attempts` failures escalate the task."""

    def __init__(self, max_local: int = 2, budget_spent: bool = False) -> None:
        self.max_local = max_local
        self.budget_spent = budget_spent
        self.failures: dict[str, list[str]] = {}
        self.calls: list[tuple[str, Any]] = []

    profiles: list[str] | None = ["coding"]  # None: hroute does not answer

    def profile_missing(self, profile: str) -> list[str] | None:
        if self.profiles is None:
            return None
        return [] if profile in self.profiles else ["", *self.profiles]

    rules: dict[str, str] = {}  # task type -> local_only | escalate, as in the profile
    types: list[str | None] = []

    def task_failure(
        self, task: str, reason: str, *, detail: str | None = None, task_type: str | None = None
    ) -> dict:
        self.calls.append(("task_failure", (task, reason)))
        self.types = [*self.types, task_type]
        reasons = self.failures.setdefault(task, [])
        reasons.append(reason)
        return {"task": task, "failures": len(reasons), "escalated": {"coding": self._on(task)}}

    def _on(self, task: str) -> bool:
        reasons = self.failures.get(task, [])
        return "user_request" in reasons or len(reasons) >= self.max_local

    def route(
        self,
        profile: str,
        *,
        task: str | None = None,
        allow_paid: bool = False,
        task_type: str | None = None,
    ) -> dict:
        self.calls.append(("route", (task, allow_paid)))
        rule = self.rules.get(task_type or "")
        if rule == "local_only":
            return {"profile": profile, "backend": "qwen", "chain": [], "base_url": PRIMARY,
                    "note": f"task type {task_type} is local_only in profile {profile}: "
                    "staying local", "task_type": {"type": task_type, "rule": rule}}  # fmt: skip
        if task is None:  # the plain route: which paid backends are past their budget
            reason = "budget_exhausted: $5.00 of $5.00 today" if self.budget_spent else None
            return {"profile": profile, "backend": "qwen", "chain": [
                {"backend": "qwen", "usable": True, "reason": None, "base_url": PRIMARY},
                {"backend": "gpt", "usable": not reason, "reason": reason, "base_url": FB2},
            ]}  # fmt: skip
        if not self._on(task):
            return {"profile": profile, "backend": "qwen", "chain": [], "base_url": PRIMARY}
        if self.budget_spent and not allow_paid:
            return route_answer(None, **BUDGET)
        return route_answer("gpt", FB2)


class SessionAgent(Agent):
    def __init__(self, gate: Gate) -> None:
        super().__init__(gate, [dict(e) for e in CHAIN])
        self.session_id = "s1"


def escalating(
    router: FakeRouter, settings: Settings = ON, **kw: Any
) -> tuple[SessionAgent, Escalator, Clock]:
    clock = Clock()
    gate = Gate(HealthView(FakeHroute().usable))
    gate.escalator = Escalator(router, settings, clock=clock, **kw)
    return SessionAgent(gate), gate.escalator, clock


def turn(escalator: Escalator, agent: SessionAgent, text: str = "go", answer: Any = None) -> Any:
    def run() -> Any:
        agent._restore_primary_runtime()
        return answer if answer is not None else result(f"answer on {agent.model}")

    return escalator.turn(agent, text, run)


def test_failed_local_turns_move_the_session_to_the_cloud_then_a_new_session_starts_local(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = FakeRouter(max_local=2)
    agent, escalator, _ = escalating(router)
    caplog.set_level(logging.INFO, "hroute_hermes")
    bad = result("", tool(BAD), tool(BAD), completed=False)
    for _ in range(2):
        turn(escalator, agent, answer=bad)
        assert agent.model == "gemma" and not agent._fallback_activated
    assert router.failures == {"s1": ["repeated_tool_failure"] * 2}

    assert turn(escalator, agent)["final_response"] == "answer on fb2"  # hroute's FB2, not FB1
    assert turn(escalator, agent)["final_response"] == "answer on fb2"  # not restored
    assert router.failures == {"s1": ["repeated_tool_failure"] * 2}  # cloud turns: no reports
    lines = [r.getMessage() for r in caplog.records]
    assert sum("running the rest of it on fb2" in line for line in lines) == 1
    assert sum("staying on fb2" in line for line in lines) == 1

    agent.session_id = "s2"  # /new: the next task
    assert turn(escalator, agent)["final_response"] == "answer on gemma"
    assert not agent._fallback_activated


def test_a_session_that_never_failed_costs_one_question_at_its_first_turn() -> None:
    router = FakeRouter()
    agent, escalator, _ = escalating(router)
    for n in range(5):
        turn(escalator, agent, answer=result(f"answer {n}"))
    assert router.calls == [("route", ("s1", False))]  # escalated in an earlier process?


def test_escalate_command_runs_this_very_turn_on_the_cloud() -> None:
    router = FakeRouter(max_local=3)
    agent, escalator, _ = escalating(router)
    assert turn(escalator, agent, "/escalate")["final_response"] == "answer on fb2"
    assert router.failures == {"s1": ["user_request"]}


def test_a_slow_turn_counts_when_a_limit_is_set() -> None:
    router = FakeRouter(max_local=1)
    agent, escalator, clock = escalating(router, Settings(profile="coding", turn_timeout_s=30))

    def slow() -> Any:
        clock.t += 31
        return result("finally")

    escalator.turn(agent, "go", slow)
    assert router.failures == {"s1": ["task_timeout"]}


def test_past_the_budget_the_session_stays_local_and_the_log_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = FakeRouter(max_local=1, budget_spent=True)
    agent, escalator, _ = escalating(router)
    caplog.set_level(logging.INFO, "hroute_hermes")
    turn(escalator, agent, answer=result(""))
    assert turn(escalator, agent)["final_response"] == "answer on gemma"
    assert ("route", ("s1", False)) in router.calls
    assert any("needs hroute.paid: allow" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("choice", "model"), [("once", "fb2"), ("deny", "gemma")])
def test_confirm_asks_through_hermes_approval_prompt(choice: str, model: str) -> None:
    asked: list[tuple[str, str]] = []

    def prompt(command: str, description: str, *, allow_permanent: bool = True) -> str:
        asked.append((command, description))
        return choice

    router = FakeRouter(max_local=1, budget_spent=True)
    settings = Settings(profile="coding", paid="confirm")
    agent, escalator, _ = escalating(router, settings, ask=lambda: prompt)
    turn(escalator, agent, answer=result(""))
    assert turn(escalator, agent)["final_response"] == f"answer on {model}"
    assert len(asked) == 1 and "past its budget" in asked[0][1]
    if choice == "once":
        assert ("route", ("s1", True)) in router.calls
        turn(escalator, agent)
        assert len(asked) == 1  # asked once per task


def test_confirm_without_a_prompt_stays_local() -> None:
    router = FakeRouter(max_local=1, budget_spent=True)
    agent, escalator, _ = escalating(router, Settings(profile="coding", paid="confirm"))
    escalator._ask = lambda: None
    turn(escalator, agent, answer=result(""))
    assert turn(escalator, agent)["final_response"] == "answer on gemma"


def test_without_hroute_escalation_changes_nothing() -> None:
    class Gone:
        def task_failure(self, *a: Any, **kw: Any) -> None:
            return None

        def route(self, *a: Any, **kw: Any) -> None:
            return None

        def profile_missing(self, *a: Any) -> None:
            return None

    agent, escalator, _ = escalating(Gone())  # type: ignore[arg-type]
    for _ in range(4):
        turn(escalator, agent, answer=result(""))
    assert agent.model == "gemma" and not agent._fallback_activated


# --- wiring: the turn stand-in never breaks a turn -------------------------------------------


class Broken:
    def task_failure(self, *a: Any, **kw: Any) -> Any:
        raise RuntimeError("hroute bug")

    def route(self, *a: Any, **kw: Any) -> Any:
        raise RuntimeError("hroute bug")


def test_a_failing_escalator_leaves_hermes_turn_and_result_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import types

    mod = types.ModuleType("fake_conversation_loop")

    def run_conversation(agent: Any, user_message: Any, *rest: Any, **kw: Any) -> dict:
        return result("", rest=rest, kw=kw)

    mod.run_conversation = run_conversation  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "fake_conversation_loop", mod)
    gate = Gate(HealthView(FakeHroute().usable))
    gate.escalator = Escalator(Broken(), ON)
    status = Status()
    wiring = Wiring(gate, status)
    group = replace(ESCALATION, module="fake_conversation_loop", agent=(), mentions=())
    assert wiring.install((group,)) == ["escalation"]
    agent = SessionAgent(gate)
    out = mod.run_conversation(agent, "/escalate", "system", task_id="t", new_kwarg=1)
    assert out["rest"] == ("system",) and out["kw"] == {"task_id": "t", "new_kwarg": 1}
    out = mod.run_conversation(agent, "hi")
    assert out["final_response"] == ""
    assert status.guards["escalation"] == "failing"
    wiring.uninstall()
    assert mod.run_conversation is run_conversation


def test_the_plugin_wraps_turns_only_when_a_profile_is_named() -> None:
    assert HermesPlugin(client=FakeHroute(), settings=Settings()).gate.escalator is None  # type: ignore[arg-type]
    plugin = HermesPlugin(client=FakeHroute(), settings=ON)  # type: ignore[arg-type]
    assert plugin.gate.escalator is not None and plugin.gate.escalator.settings == ON


def test_the_escalate_slash_command_escalates_the_next_turn_once() -> None:
    router = FakeRouter(max_local=3)
    agent, escalator, _ = escalating(router)
    assert "next turn" in escalator.request("")
    assert turn(escalator, agent, "do it")["final_response"] == "answer on fb2"
    assert router.failures == {"s1": ["user_request"]}
    agent.session_id = "s2"
    assert turn(escalator, agent, "next task")["final_response"] == "answer on gemma"
    assert "s2" not in router.failures


def test_asking_on_a_fallback_counts_and_asking_twice_is_reported_once() -> None:
    router = FakeRouter(max_local=3)
    agent, escalator, _ = escalating(router)
    agent._try_activate_fallback()  # Hermes left a dead primary last turn
    assert turn(escalator, agent, "/escalate")["final_response"] == "answer on fb2"
    turn(escalator, agent, "please use the cloud model")
    assert router.failures == {"s1": ["user_request"]}


def test_a_long_lived_process_forgets_old_sessions() -> None:
    from hroute_hermes import escalator as module

    router = FakeRouter(max_local=99)
    agent, escalator, _ = escalating(router)
    for n in range(module._MAX_SESSIONS + 10):
        agent.session_id = f"s{n}"
        turn(escalator, agent, answer=result(""))
    assert len(escalator.failed) == module._MAX_SESSIONS
    assert "s0" not in escalator.failed and f"s{module._MAX_SESSIONS + 9}" in escalator.failed


def test_hermes_background_review_agents_neither_count_nor_move() -> None:
    router = FakeRouter(max_local=1)
    agent, escalator, _ = escalating(router)
    review = SessionAgent(agent.gate)  # a fork with the user's session id
    review._memory_write_origin = "background_review"  # type: ignore[attr-defined]
    for _ in range(3):
        turn(escalator, review, answer=result(""))
    assert router.failures == {}
    turn(escalator, agent, answer=result(""))  # the user's own turn fails: escalated
    assert turn(escalator, review)["final_response"] == "answer on gemma"
    assert turn(escalator, agent)["final_response"] == "answer on fb2"


def test_a_session_continued_under_a_new_id_by_compression_is_the_same_task() -> None:
    router = FakeRouter(max_local=2)
    agent, escalator, _ = escalating(router)

    def compressed() -> Any:
        agent._restore_primary_runtime()
        agent.session_id = "s1-continued"  # Hermes' legacy rotation, inside the turn
        return result("")

    turn(escalator, agent, answer=result(""))
    escalator.turn(agent, "go", compressed)
    assert router.failures == {"s1": ["invalid_output", "invalid_output"]}
    assert turn(escalator, agent)["final_response"] == "answer on fb2"
    agent.session_id = "s2"  # /new, between turns: a new task
    assert turn(escalator, agent)["final_response"] == "answer on gemma"


# --- the user's words about where the task may run (issue 22) ---------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Please don't use the cloud model for this, it is private",
        "do not use the cloud model",
        "never send this to a remote model",
        "Without the cloud, please: use the cloud model only if you must",
        "no cloud for this one",
        "this is confidential",
        "keep it local please",
        "it\u2019s private",
        "/local",
        "/local and then summarise",
    ],
)
def test_a_request_to_keep_the_task_local_is_never_read_as_escalation(text: str) -> None:
    found = intent(text, ON)
    assert found is not None and found.where == "local", found
    assert user_request(text, ON) is None


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("use the cloud model", "escalate"),
        ("/escalate", "escalate"),
        ("Don't worry. Use the cloud model", "escalate"),  # the negation ends with its sentence
        ("/localize the strings", None),
        ("make the privateer class", None),  # whole words only
        ("hello", None),
    ],
)
def test_escalation_words_and_lookalikes(text: str, where: str | None) -> None:
    found = intent(text, ON)
    assert (found.where if found else None) == where


def test_local_phrases_are_configurable() -> None:
    settings = load_settings({"hroute": {"profile": "p", "local_phrases": ["Hush"]}}, {})
    assert intent("hush now", settings) == Intent("local", "hush")
    assert intent("it is private", settings) is None
    assert intent("don't use the cloud", settings) == Intent("local", "don't ... cloud")


def test_a_negated_phrase_pins_the_task_local_and_reports_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = FakeRouter(max_local=1)
    agent, escalator, _ = escalating(router)
    caplog.set_level(logging.INFO, "hroute_hermes")
    bad = result("", tool(BAD), tool(BAD))
    words = "Please don't use the cloud model for this, it is private"
    assert turn(escalator, agent, words, answer=bad) == bad
    for _ in range(3):  # failures of a pinned task count for nothing and move nothing
        turn(escalator, agent, "go on", answer=bad)
        assert agent.model == "gemma" and not agent._fallback_activated
    assert router.failures == {}
    assert not any(name == "task_failure" for name, _ in router.calls)
    assert agent._try_activate_fallback() is False  # Hermes' own fallback is refused too
    assert agent.model == "gemma"
    lines = [r.getMessage() for r in caplog.records]
    assert sum("task s1: pinned to the local model" in line for line in lines) == 1, lines
    assert any("not switching to a fallback: task s1 is pinned" in line for line in lines)

    agent.session_id = "s2"  # /new: the pin was the task's
    turn(escalator, agent, "another", answer=bad)
    assert router.failures == {"s2": ["repeated_tool_failure"]}


def test_local_command_takes_an_escalated_task_back_and_only_escalate_lifts_it() -> None:
    router = FakeRouter(max_local=3)
    agent, escalator, _ = escalating(router)
    assert turn(escalator, agent, "/escalate")["final_response"] == "answer on fb2"
    assert "local model until /new" in escalator.keep_local("")
    assert turn(escalator, agent, "next")["final_response"] == "answer on gemma"
    assert turn(escalator, agent, "use the cloud model")["final_response"] == "answer on gemma"
    assert turn(escalator, agent, "/escalate")["final_response"] == "answer on fb2"


class GatewayRunner:
    """The part of Hermes 0.18/0.19's gateway a slash command handler sees up its stack."""

    def __init__(self, escalator: Escalator) -> None:
        self.escalator = escalator

    def _session_key_for_source(self, source: str) -> str:
        return f"agent:main:telegram:dm:{source}"

    def _handle_message(self, event: Any) -> str:
        return self.escalator.request("")


class Event:
    def __init__(self, chat: str) -> None:
        self.source = chat


def test_escalate_typed_in_one_gateway_chat_escalates_that_chat_only() -> None:
    router = FakeRouter(max_local=3)
    gate = Gate(HealthView(FakeHroute().usable))
    escalator = gate.escalator = Escalator(router, ON, clock=Clock())
    a, b = SessionAgent(gate), SessionAgent(gate)
    a.session_id, b.session_id = "sa", "sb"
    a._gateway_session_key = "agent:main:telegram:dm:A"  # type: ignore[attr-defined]
    b._gateway_session_key = "agent:main:telegram:dm:B"  # type: ignore[attr-defined]
    turn(escalator, a, "hi")
    turn(escalator, b, "hi")
    GatewayRunner(escalator)._handle_message(Event("A"))
    assert turn(escalator, b, "next")["final_response"] == "answer on gemma"  # B runs first
    assert turn(escalator, a, "next")["final_response"] == "answer on fb2"
    assert router.failures == {"sa": ["user_request"]}


def test_a_command_that_cannot_say_its_chat_escalates_nothing_in_a_shared_process() -> None:
    router = FakeRouter(max_local=3)
    gate = Gate(HealthView(FakeHroute().usable))
    escalator = gate.escalator = Escalator(router, ON, clock=Clock())
    a, b = SessionAgent(gate), SessionAgent(gate)
    a.session_id, b.session_id = "sa", "sb"
    turn(escalator, a, "hi")
    turn(escalator, b, "hi")
    assert "cannot tell which chat" in escalator.request("")
    assert turn(escalator, a, "next")["final_response"] == "answer on gemma"
    assert router.failures == {}


def test_a_spent_budget_refuses_hermes_own_fallback_and_auxiliary_calls_to_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = FakeRouter(budget_spent=True)
    agent, escalator, clock = escalating(router)
    caplog.set_level(logging.INFO, "hroute_hermes")
    agent._fallback_chain = [dict(CHAIN[1])]  # the paid one only
    assert agent._try_activate_fallback("empty") is False
    assert agent.model == "gemma" and not agent._fallback_activated
    assert any("past its budget" in r.getMessage() for r in caplog.records)
    gate = agent.gate
    assert gate.provider_unhealthy("custom", FB2, lambda: False) is True
    assert gate.resolve_fallback_entry(dict(CHAIN[1]), lambda: ("client", "m")) == (None, None)
    # With an affordable entry before it, Hermes switches there and never to the paid one.
    agent._fallback_chain = [dict(e) for e in CHAIN]
    agent._fallback_index = 0
    assert agent._try_activate_fallback("empty") is True and agent.model == "fb1"
    routes = [c for c in router.calls if c == ("route", (None, False))]
    assert len(routes) == 1  # hroute's budget view is reused for BUDGET_VIEW_S


def test_paid_allow_or_an_unspent_budget_lets_hermes_fallback_run() -> None:
    agent, _, _ = escalating(FakeRouter(budget_spent=True), Settings("coding", paid="allow"))
    agent._fallback_chain = [dict(CHAIN[1])]
    assert agent._try_activate_fallback() is True and agent.model == "fb2"
    agent, _, _ = escalating(FakeRouter(budget_spent=False))
    agent._fallback_chain = [dict(CHAIN[1])]
    assert agent._try_activate_fallback() is True and agent.model == "fb2"


def test_an_empty_local_answer_that_hermes_finished_on_its_fallback_counts_once_per_turn() -> None:
    """Hermes retries an empty answer, then switches to its fallback within the turn (no API
    error as the reason): a failed local attempt, so the task escalates instead of paying
    for local retries every turn."""
    router = FakeRouter(max_local=2)
    agent, escalator, _ = escalating(router, Settings("coding", paid="allow"))

    def empty_then_fallback() -> Any:
        agent._restore_primary_runtime()
        agent._try_activate_fallback()  # as Hermes' empty-answer handling calls it
        return result(f"answer on {agent.model}")

    for _ in range(2):
        escalator.turn(agent, "question", empty_then_fallback)
    assert router.failures == {"s1": ["invalid_output", "invalid_output"]}
    assert turn(escalator, agent)["final_response"] == "answer on fb2"  # escalated, stays


def test_a_fallback_for_an_api_error_is_not_the_local_models_failure() -> None:
    router = FakeRouter(max_local=2)
    agent, escalator, _ = escalating(router)

    def overloaded() -> Any:
        agent._restore_primary_runtime()
        agent._try_activate_fallback("overloaded")
        return result(f"answer on {agent.model}")

    for _ in range(3):
        escalator.turn(agent, "question", overloaded)
    assert router.failures == {}


def test_a_misspelt_profile_is_said_at_the_first_turn_with_the_closest_name_and_is_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = FakeRouter(max_local=1)
    router.profiles = ["coding", "research"]
    agent, escalator, _ = escalating(router, Settings(profile="Coding"))
    caplog.set_level(logging.INFO, "hroute_hermes")
    bad = result("", tool(BAD), tool(BAD))
    for _ in range(3):
        turn(escalator, agent, "/escalate", answer=bad)
    lines = [r.getMessage() for r in caplog.records]
    said = [line for line in lines if "does not exist in hroute" in line]
    assert said == [
        "hroute: profile 'Coding' does not exist in hroute (it has: coding, research); did you "
        "mean 'coding'? Escalation is off until hroute.profile (or HROUTE_PROFILE) names one "
        "of them"
    ], lines
    assert not any("escalation on" in line for line in lines)
    assert router.calls == [] and agent.model == "gemma"


def test_the_profile_is_checked_again_until_hroute_answers() -> None:
    router = FakeRouter()
    router.profiles = None
    agent, escalator, clock = escalating(router, Settings(profile="codin"))
    turn(escalator, agent)
    assert not escalator.profile_missing
    router.profiles = ["coding"]
    turn(escalator, agent)
    assert not escalator.profile_missing  # not asked again at every turn
    clock.t += 31
    turn(escalator, agent)
    assert escalator.profile_missing


def test_an_unreachable_socket_is_said_once_with_its_cause_and_fix_and_once_when_back(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    from hroute_hermes.gate import SocketWatch, socket_trouble

    caplog.set_level(logging.INFO, "hroute_hermes")
    answers = {"down": True}

    class Answer:
        def __init__(self) -> None:
            self.source = "fail-open" if answers["down"] else "socket"

        def __bool__(self) -> bool:
            return True

    clock = Clock()
    path = tmp_path / "hroute.sock"
    view = HealthView(lambda **_: Answer(), clock=clock, quiet_s=5, watch=SocketWatch(path))
    for _ in range(4):
        view.down(PRIMARY)
        clock.t += 6
    answers["down"] = False
    for _ in range(2):
        view.down(PRIMARY)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert f"cannot reach hroute at {path} (missing: no socket there" in lines[0]
    assert "Fix: start hroute" in lines[0]
    assert lines[1] == f"hroute: hroute answers again at {path}"
    # The other causes, as the diagnosis names them.
    import socket as sockets

    server = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    server.bind(str(path))  # bound, never listening: a daemon that is gone
    try:
        assert socket_trouble(path)[0].startswith("not answering: connection refused")
    finally:
        server.close()


# --- task types (issue 22): chat stays local, coding escalates ------------------------------


def call(name: str, arguments: str = "{}") -> dict[str, Any]:
    return {
        "role": "assistant",
        "tool_calls": [{"function": {"name": name, "arguments": arguments}}],
    }


@pytest.mark.parametrize(
    ("current", "used", "kind"),
    [
        (None, [], "chat"),
        ("chat", ["terminal"], "coding"),
        ("coding", [], "coding"),  # once coding, it stays coding
        ("chat", ["web_search"], ""),  # used a tool, none that touches code: no type
        ("", [], ""),
        ("chat", ["my_build_tool"], ""),
    ],
)
def test_a_tasks_type_follows_what_it_did(current: str | None, used: list[str], kind: str) -> None:
    assert task_type(current, used, ON) == kind


def test_the_coding_tool_list_is_extended_in_the_hroute_block() -> None:
    settings = load_settings({"hroute": {"profile": "p", "coding_tools": ["my_build_tool"]}}, {})
    assert task_type("chat", ["my_build_tool"], settings) == "coding"
    assert "terminal" in settings.coding_tools
    assert tools_used([call("terminal"), tool("x", "terminal"), call("read_file")]) == [
        "terminal", "terminal", "read_file",
    ]  # fmt: skip


def test_a_chat_task_that_is_local_only_stays_local_whatever_fails_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = FakeRouter(max_local=1)
    router.rules = {"chat": "local_only", "coding": "escalate"}
    agent, escalator, _ = escalating(router)
    caplog.set_level(logging.INFO, "hroute_hermes")
    for _ in range(3):  # no tool: chat; the answer is empty every time
        turn(escalator, agent, "tell me a story", answer=result(""))
        assert agent.model == "gemma" and not agent._fallback_activated
    assert router.types == ["chat"] * 3
    assert agent._try_activate_fallback() is False  # Hermes' own fallback too
    lines = [r.getMessage() for r in caplog.records]
    assert sum("task type chat is local_only in profile coding" in line for line in lines) >= 1

    agent.session_id = "s2"  # a coding task: its failures escalate
    coding = result("", call("terminal"), tool(BAD), tool(BAD))
    turn(escalator, agent, "fix the build", answer=coding)
    assert router.types[-1] == "coding"
    assert turn(escalator, agent, "go on")["final_response"] == "answer on fb2"
    assert any("task s2 is coding (it used terminal" in line for line in lines + [
        r.getMessage() for r in caplog.records
    ])  # fmt: skip


def test_task_command_sets_the_type_until_new() -> None:
    router = FakeRouter(max_local=1)
    router.rules = {"chat": "local_only"}
    agent, escalator, _ = escalating(router)
    assert "this task is chat" in escalator.set_type("chat")
    turn(
        escalator, agent, "run the tests", answer=result("", call("terminal"), tool(BAD), tool(BAD))
    )
    assert router.types == ["chat"]  # the user said chat: the terminal does not change it
    assert agent.model == "gemma"
    turn(escalator, agent, "/task coding now")
    assert escalator.types["s1"] == "coding"


def test_hermes_own_user_messages_within_a_turn_do_not_hide_its_tool_calls() -> None:
    """Hermes 0.18-0.22 add "[Tool loop warning: ...]" as a user message mid-turn."""
    messages = [
        {"role": "user", "content": "fix main.py"},
        call("read_file"),
        tool(BAD, "read_file"),
        {"role": "user", "content": "[Tool loop warning: repeated_exact_failure_warning]"},
        call("read_file"),
        tool(BAD, "read_file"),
    ]
    assert tools_used(turn_messages(messages, "fix main.py")) == ["read_file"] * 4
    failure = failed_attempt(result("", *messages[1:]), 1.0, ON, user_message="q")
    assert failure is not None and failure.reason == "repeated_tool_failure", failure


def test_hermes_022_gateway_names_the_chat_of_a_command_in_its_session_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys
    import types

    from hroute_hermes.escalator import command_chat

    context = types.ModuleType("gateway.session_context")
    key = {"HERMES_SESSION_KEY": "agent:main:telegram:dm:B"}
    context.get_session_env = lambda name, default="": key.get(name, default)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.session_context", context)
    assert command_chat() == ("chat", "agent:main:telegram:dm:B")
    key.clear()
    assert command_chat() is None  # outside a gateway command, and no CLI up the stack


def test_the_cli_names_its_session_from_up_the_stack() -> None:
    from hroute_hermes.escalator import command_chat

    class HermesCLI:
        def __init__(self) -> None:
            self.session_id = "cli-1"
            self.agent = None

        def process_command(self) -> Any:
            return command_chat()

    assert HermesCLI().process_command() == ("session", "cli-1")

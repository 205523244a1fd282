"""Local→cloud escalation (seed 001) with a real Hermes: a local primary whose answers only
call a tool that does not exist, a cloud fallback, and `hroute run` counting the failures.

Runs on every Hermes in `VERSIONS`; skips (or fails, with HROUTE_REQUIRE_HERMES=1) without
its venv. Fake backends on loopback only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hroute_hermes.reports import normalized_url
from tests.support.daemon import Daemon
from tests.support.fakebackend import Behavior, FakeBackend, tool_call_sse
from tests.support.hermes import VERSIONS, Hermes, HermesAgent, require_hermes_python

pytestmark = [pytest.mark.system, pytest.mark.hermes, pytest.mark.timeout(150)]

CHAT = "/v1/chat"
MAX_LOCAL_ATTEMPTS = 2


@pytest.fixture(scope="module", params=VERSIONS, ids=lambda h: h.id)
def hermes(request: pytest.FixtureRequest) -> Hermes:
    return request.param


@pytest.fixture(scope="module")
def python(hermes: Hermes) -> str:
    return require_hermes_python(hermes)


@pytest.fixture
def local() -> Iterator[FakeBackend]:
    """The local model: every answer is a call to a tool Hermes does not have."""
    with FakeBackend(kind="openai", models=["local-model"], reply="from local") as fb:
        fb.set_behavior("/v1/chat/completions", Behavior(body=tool_call_sse("fetch_weather_now")))
        yield fb


@pytest.fixture
def cloud() -> Iterator[FakeBackend]:
    with FakeBackend(kind="openai", models=["cloud-model"], reply="from cloud") as fb:
        yield fb


def hroute_config(
    local: FakeBackend, cloud: FakeBackend, budget: str = "", escalation: str = ""
) -> str:
    return (
        "defaults:\n"
        "  probe: {interval_s: 0.3, timeout_s: 1, fall: 1, rise: 1, jitter: 0}\n"
        "backends:\n"
        f"  local: {{kind: openai, base_url: '{local.url('/v1')}', model: local-model}}\n"
        f"  cloud: {{kind: openai, base_url: '{cloud.url('/v1')}', model: cloud-model,\n"
        "          tier: cloud, price: {input_per_mtok: 1.25, output_per_mtok: 10}}\n"
        "profiles:\n"
        "  coding:\n"
        "    chain: [local, cloud]\n"
        "    escalation:\n"
        f"      max_local_attempts: {MAX_LOCAL_ATTEMPTS}\n"
        "      trigger_on: [repeated_tool_failure, invalid_output, no_progress, task_timeout,"
        " user_request]\n" + escalation + budget
    )


def agent_for(
    python: str,
    tmp_path: Path,
    local: FakeBackend,
    cloud: FakeBackend,
    daemon: Daemon,
    *,
    paid: str = "deny",
    approve: str | None = None,
    extra: str = "",
    profile: str = "coding",
    socket: Path | None = None,
    **options: Any,
) -> HermesAgent:
    return HermesAgent(
        python,
        tmp_path / "hermes",
        primary_url=local.url("/v1"),
        model="local-model",
        fallbacks=[
            {
                "provider": "custom",
                "model": "cloud-model",
                "base_url": cloud.url("/v1"),
                "api_key": "cloud-key",
            }
        ],
        socket=socket or daemon.socket,
        extra_config=f"hroute:\n  profile: {profile}\n  paid: {paid}\n{extra}",
        approve=approve,
        **options,
    )


def hroute_daemon(tmp_path: Path, config: str) -> Daemon:
    (tmp_path / "hroute").mkdir(exist_ok=True)
    return Daemon(tmp_path / "hroute", config)


def posts(fb: FakeBackend) -> int:
    return fb.count("POST", CHAT)


def events(daemon: Daemon, kind: str) -> list[dict]:
    status, body = daemon.get("/v1/events")
    assert status == 200, body
    return [e for e in body["events"] if e["event"] == kind]


def test_a_session_that_keeps_failing_locally_continues_on_the_cloud_and_the_next_starts_local(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    with (
        hroute_daemon(tmp_path, hroute_config(local, cloud)) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon) as agent,
    ):
        daemon.wait_state("local", "healthy")
        session = None
        for n in range(1, MAX_LOCAL_ATTEMPTS + 1):  # each turn is a failed local attempt
            before = posts(local)
            answer = agent.turn(f"what is the weather, attempt {n}")
            assert posts(local) > before and not answer["fallback_active"], (n, answer)
            assert posts(cloud) == 0, agent.stderr
            session = session or answer["session_id"]
            assert answer["session_id"] == session

        answer = agent.turn("and now?")  # escalated: the rest of the session is on the cloud
        assert answer["response"] == "from cloud", (answer, agent.stderr)
        assert answer["fallback_active"] and answer["model"] == "cloud-model", answer
        before = posts(local)
        answer = agent.turn("still there?")  # Hermes' restore does not take it back
        assert answer["response"] == "from cloud" and posts(local) == before, answer

        log = agent.agent_log
        assert "hroute: escalation on for profile coding (paid past budget: deny)" in log
        assert f"task {session}: local attempt on local-model failed (repeated_tool_failure" in log
        assert "escalated for profile coding" in log
        assert f"task {session}: escalated: {MAX_LOCAL_ATTEMPTS} local failures" in log
        assert f"running the rest of it on cloud-model at {normalized_url(cloud.url('/v1'))}" in log
        escalations = events(daemon, "escalation")
        assert [(e["task"], e["backend"]) for e in escalations] == [(session, "cloud")], escalations

        new = agent.new_session()["session_id"]  # the next task starts local again
        local.clear_behaviors()
        answer = agent.turn("a new task")
        assert answer["session_id"] == new != session
        assert answer["response"] == "from local" and not answer["fallback_active"], answer


def test_past_the_budget_and_without_allow_paid_an_escalated_session_stays_local(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    config = hroute_config(local, cloud, budget="budgets: {daily_usd: 0}\n")
    with (
        hroute_daemon(tmp_path, config) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon) as agent,
    ):
        daemon.wait_state("local", "healthy")
        for n in range(1, MAX_LOCAL_ATTEMPTS + 1):
            agent.turn(f"what is the weather, attempt {n}")
        before = posts(local)
        answer = agent.turn("and now?")
        assert posts(local) > before and posts(cloud) == 0, (answer, agent.stderr)
        assert not answer["fallback_active"], answer
        log = agent.agent_log
        assert "escalated for profile coding" in log
        assert "but no cloud backend may be used (cloud: budget_exhausted" in log, log
        assert "a paid model needs hroute.paid: allow (or confirm); staying local" in log, log
        escalations = events(daemon, "escalation")
        assert [e["backend"] for e in escalations] == ["none"], escalations


@pytest.mark.parametrize("choice", ["once", "deny"])
def test_past_the_budget_confirm_asks_the_user_through_hermes_approval_prompt(
    python: str,
    hermes: Hermes,
    tmp_path: Path,
    local: FakeBackend,
    cloud: FakeBackend,
    choice: str,
) -> None:
    config = hroute_config(local, cloud, budget="budgets: {daily_usd: 0}\n")
    with (
        hroute_daemon(tmp_path, config) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon, paid="confirm", approve=choice) as agent,
    ):
        daemon.wait_state("local", "healthy")
        for n in range(1, MAX_LOCAL_ATTEMPTS + 1):
            assert agent.turn(f"what is the weather, attempt {n}")["prompts"] == []
        answer = agent.turn("and now?")
        assert len(answer["prompts"]) == 1, answer
        assert "past its budget" in answer["prompts"][0], answer
        if choice == "once":
            assert answer["response"] == "from cloud", (answer, agent.stderr)
            assert "the user allowed paid escalation" in agent.agent_log
            answer = agent.turn("more")  # asked once per task
            assert answer["response"] == "from cloud" and len(answer["prompts"]) == 1
        else:
            assert posts(cloud) == 0 and not answer["fallback_active"], answer
            assert "but the user did not allow paid use; staying local" in agent.agent_log


def test_escalate_typed_by_the_user_runs_the_next_turn_on_the_cloud(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    local.clear_behaviors()  # the local model is fine; the user wants the cloud anyway
    with (
        hroute_daemon(tmp_path, hroute_config(local, cloud)) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon) as agent,
    ):
        daemon.wait_state("local", "healthy")
        assert agent.turn("hello")["response"] == "from local"
        assert "next turn" in (agent.slash("/escalate")["output"] or ""), agent.stderr
        answer = agent.turn("do the hard part")
        assert answer["response"] == "from cloud", (answer, agent.stderr)
        answer = agent.turn("use the cloud model for this one too")  # phrase: already there
        assert answer["response"] == "from cloud", (answer, agent.stderr)
        failures = events(daemon, "task_failure")
        assert [(e["task"], e["reason"]) for e in failures] == [
            (answer["session_id"], "user_request")
        ], failures
        assert "escalated: user_request; running the rest of it on cloud-model" in agent.agent_log


def logged(agent: HermesAgent, text: str, timeout_s: float = 10.0) -> str:
    """agent.log once it has `text` (Hermes may write its log a moment after the turn)."""
    deadline = time.monotonic() + timeout_s
    while text not in (log := agent.agent_log):
        assert time.monotonic() < deadline, f"{text!r} not in agent.log:\n{log[-3000:]}"
        time.sleep(0.05)
    return log


def failures(daemon: Daemon) -> list[tuple[str, str]]:
    return [(e["task"], e["reason"]) for e in events(daemon, "task_failure")]


@pytest.mark.timeout(300)  # Hermes 0.22 takes ~50 s over an empty answer
def test_a_negated_request_for_the_cloud_pins_the_task_local_whatever_fails(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    local.clear_behaviors()
    with (
        hroute_daemon(tmp_path, hroute_config(local, cloud)) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon) as agent,
    ):
        daemon.wait_state("local", "healthy")
        answer = agent.turn("Please don't use the cloud model for this, it is private")
        assert answer["response"] == "from local", (answer, agent.stderr)
        assert posts(cloud) == 0 and failures(daemon) == []
        session = answer["session_id"]
        # The local model now fails every way: tool errors, then a dead server. Hermes' own
        # fallback would take the task's text to the cloud; the pin refuses it.
        local.set_behavior("/v1/chat/completions", Behavior(body=tool_call_sse("fetch_weather")))
        for n in range(MAX_LOCAL_ATTEMPTS + 1):
            answer = agent.turn(f"the private thing, attempt {n}")
            assert not answer["fallback_active"], answer
        local.clear_behaviors()
        local.reply = ""  # Hermes' empty-answer handling would finish the turn on the cloud
        answer = agent.turn("and now?", timeout_s=120)
        assert not answer["fallback_active"] and posts(cloud) == 0, (answer, agent.stderr)
        assert failures(daemon) == []
        log = logged(agent, f"not switching to a fallback: task {session} is pinned")
        assert f"task {session}: pinned to the local model" in log, log

        local.clear_behaviors()
        agent.new_session()  # the pin was that task's
        answer = agent.turn("use the cloud model for this one")
        assert answer["response"] == "from cloud", (answer, agent.stderr)


def test_escalate_and_local_typed_in_one_gateway_chat_touch_only_that_chat(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    local.clear_behaviors()
    with (
        hroute_daemon(tmp_path, hroute_config(local, cloud)) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon, chats=("A", "B")) as agent,
    ):
        daemon.wait_state("local", "healthy")
        assert agent.chat("A", "hello")["response"] == "from local"
        assert agent.chat("B", "hello")["response"] == "from local"
        said = agent.gateway_message("A", "/escalate")["output"] or ""
        assert "cloud model" in said, (said, agent.stderr)
        answer = agent.chat("B", "next")  # B's turn runs first: it must not take A's request
        assert answer["response"] == "from local" and posts(cloud) == 0, (answer, agent.stderr)
        answer = agent.chat("A", "next")
        assert answer["response"] == "from cloud", (answer, agent.stderr)
        assert failures(daemon) == [("chat-A", "user_request")]

        said = agent.gateway_message("B", "/local")["output"] or ""
        assert "local model until /new" in said, (said, agent.stderr)
        assert agent.chat("A", "more")["response"] == "from cloud"  # A stays escalated
        local.set_behavior("/v1/chat/completions", Behavior(body=tool_call_sse("fetch_weather")))
        before = posts(cloud)
        for n in range(MAX_LOCAL_ATTEMPTS + 1):  # B fails locally and stays there
            assert not agent.chat("B", f"attempt {n}")["fallback_active"]
        assert posts(cloud) == before
        assert failures(daemon) == [("chat-A", "user_request")]
        logged(agent, "task chat-B: pinned to the local model (the user said '/local')")


@pytest.mark.timeout(300)  # Hermes 0.22 takes ~50 s over an empty answer
def test_a_spent_budget_means_no_paid_call_when_the_local_model_answers_nothing(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    local.clear_behaviors()
    local.reply = ""  # Hermes retries an empty answer, then switches to its fallback in-turn
    config = hroute_config(local, cloud, budget="budgets: {daily_usd: 0}\n")
    with (
        hroute_daemon(tmp_path, config) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon) as agent,
    ):
        daemon.wait_state("local", "healthy")
        for n in range(MAX_LOCAL_ATTEMPTS + 1):  # Hermes' fallback, then escalation: refused
            answer = agent.turn(f"question {n}", timeout_s=120)
            assert not answer["fallback_active"], (answer, agent.stderr)
        assert posts(cloud) == 0, agent.stderr
        log = logged(agent, "a paid model needs hroute.paid: allow (or confirm); staying local")
        assert "not switching to fallback" in log and "past its budget" in log, log


@pytest.mark.timeout(300)  # Hermes 0.22 takes ~50 s over an empty answer
def test_an_empty_local_answer_escalates_instead_of_being_retried_every_turn(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    local.clear_behaviors()
    local.reply = ""  # Hermes retries it, then finishes the turn on its fallback
    with (
        hroute_daemon(tmp_path, hroute_config(local, cloud)) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon) as agent,
    ):
        daemon.wait_state("local", "healthy")
        for n in range(MAX_LOCAL_ATTEMPTS):
            before = posts(local)
            answer = agent.turn(f"question {n}", timeout_s=120)
            assert posts(local) > before, (answer, agent.stderr)
        session = answer["session_id"]
        assert failures(daemon) == [(session, "invalid_output")] * MAX_LOCAL_ATTEMPTS
        before = posts(local)
        answer = agent.turn("and now?")  # escalated: no more empty local attempts
        assert answer["fallback_active"] and posts(local) == before, (answer, agent.stderr)
        logged(agent, "Hermes finished the turn on its fallback")


def test_a_resumed_escalated_session_runs_on_the_cloud_in_a_new_process(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    """`hermes chat --resume SID` (and `-c`) continues a session in a new process: the plugin
    asks hroute about it at its first turn there."""
    local.clear_behaviors()
    with hroute_daemon(tmp_path, hroute_config(local, cloud)) as daemon:
        daemon.wait_state("local", "healthy")
        with agent_for(python, tmp_path, local, cloud, daemon, session_id="resumed-1") as first:
            answer = first.turn("/escalate the hard part")
            assert answer["response"] == "from cloud", (answer, first.stderr)
        before = posts(local)
        with agent_for(python, tmp_path, local, cloud, daemon, session_id="resumed-1") as again:
            answer = again.turn("go on")
            assert answer["session_id"] == "resumed-1", answer
            assert answer["response"] == "from cloud", (answer, again.stderr)
            assert posts(local) == before
        with agent_for(python, tmp_path, local, cloud, daemon, session_id="other-2") as other:
            assert other.turn("a new task")["response"] == "from local"


def test_done_to_different_requests_is_not_a_failure(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    local.clear_behaviors()
    local.reply = "Done."
    with (
        hroute_daemon(tmp_path, hroute_config(local, cloud)) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon) as agent,
    ):
        daemon.wait_state("local", "healthy")
        for request in ("create a.txt", "rename it to b.txt", "delete c.txt"):
            assert agent.turn(request)["response"] == "Done."
        assert failures(daemon) == [] and posts(cloud) == 0
        agent.turn("delete c.txt")  # the same answer to the same request: no progress
        assert [r for _, r in failures(daemon)] == ["no_progress"]


def test_a_misspelt_profile_is_said_by_the_plugin_and_by_doctor(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    from hroute.tools.doctor import run_checks

    with (
        hroute_daemon(tmp_path, hroute_config(local, cloud)) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon, profile="Coding") as agent,
    ):
        daemon.wait_state("local", "healthy")
        for n in range(MAX_LOCAL_ATTEMPTS + 1):  # failing turns: nothing escalates, as said
            agent.turn(f"what is the weather, attempt {n}")
        said = "hroute: profile 'Coding' does not exist in hroute (it has: coding); did you mean"
        log = logged(agent, said)
        assert log.count(said) == 1, log
        assert "escalation on for profile" not in log, log
        checks = run_checks(daemon.config_path, daemon.socket, str(agent.home), python)
    by_name = {c.check: c for c in checks}
    escalation = by_name["hermes escalation"]
    assert escalation.status == "fail", checks
    assert "'Coding' is not a profile of hroute" in escalation.message
    assert escalation.fix == "set hroute.profile: coding"
    # doctor says of each guard what the plugin installed on this Hermes (0.22 included)
    guards = {n: c.status for n, c in by_name.items() if n.startswith("hermes guard ")}
    assert guards == {f"hermes guard {g}": "ok" for g in ("restore", "fallback", "auxiliary")}
    loaded = agent.stderr_path.read_text()  # said at load time, before agent.log exists
    assert "guarding: restore, fallback, auxiliary, escalation" in loaded, loaded[-2000:]


def test_an_unreachable_hroute_is_said_once_and_once_when_it_answers_again(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    local.clear_behaviors()
    daemon = hroute_daemon(tmp_path, hroute_config(local, cloud))  # not started yet
    with agent_for(python, tmp_path, local, cloud, daemon) as agent:
        for n in range(3):  # turns go on without hroute
            assert agent.turn(f"hello {n}")["response"] == "from local", agent.stderr
        said = f"cannot reach hroute at {daemon.socket} (missing: no socket there"
        log = logged(agent, said)
        assert log.count(said) == 1 and "Fix: start hroute" in log, log
        with daemon:
            daemon.wait_state("local", "healthy")
            deadline = time.monotonic() + 60  # the plugin asks again once its quiet time ends
            n = 0
            while "hroute answers again" not in agent.agent_log:
                assert time.monotonic() < deadline, agent.stderr
                n += 1
                assert agent.turn(f"are you there? ({n})")["response"] == "from local"
        assert agent.agent_log.count(f"hroute: hroute answers again at {daemon.socket}") == 1
        assert agent.agent_log.count("cannot reach hroute") == 1


def test_with_task_types_chat_stays_local_and_coding_escalates_in_one_hermes(
    python: str, hermes: Hermes, tmp_path: Path, local: FakeBackend, cloud: FakeBackend
) -> None:
    rules = "      task_types: {chat: local_only, coding: escalate}\n"
    config = hroute_config(local, cloud, escalation=rules)
    with (
        hroute_daemon(tmp_path, config) as daemon,
        agent_for(python, tmp_path, local, cloud, daemon, toolsets=("file",)) as agent,
    ):
        daemon.wait_state("local", "healthy")
        # A chat (no tool): the same answer to the same question, again and again.
        local.clear_behaviors()
        local.reply = "I am not sure."
        for _ in range(MAX_LOCAL_ATTEMPTS + 2):
            answer = agent.turn("what is the capital of Australia?")
            assert answer["response"] == "I am not sure.", (answer, agent.stderr)
        chat = answer["session_id"]
        assert [r for t, r in failures(daemon) if t == chat] == ["no_progress"] * (
            MAX_LOCAL_ATTEMPTS + 1
        )
        assert posts(cloud) == 0
        logged(agent, "task type chat is local_only in profile coding: staying local")

        # A coding task (a file tool) that keeps failing: escalated after max_local_attempts.
        agent.new_session()
        missing = '{"path": "/nonexistent/hroute-test/main.py"}'
        local.set_behavior(
            "/v1/chat/completions", Behavior(body=tool_call_sse("read_file", missing))
        )
        for n in range(MAX_LOCAL_ATTEMPTS):
            answer = agent.turn(f"fix main.py, attempt {n}")
        coding = answer["session_id"]
        assert coding != chat
        logged(agent, f"task {coding} is coding (it used read_file)")
        answer = agent.turn("and now?")
        assert answer["response"] == "from cloud", (answer, agent.stderr)

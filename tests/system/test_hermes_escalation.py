"""Local→cloud escalation (seed 001) with a real Hermes: a local primary whose answers only
call a tool that does not exist, a cloud fallback, and `hroute run` counting the failures.

Runs on every Hermes in `VERSIONS`; skips (or fails, with HROUTE_REQUIRE_HERMES=1) without
its venv. Fake backends on loopback only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


def hroute_config(local: FakeBackend, cloud: FakeBackend, budget: str = "") -> str:
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
        " user_request]\n" + budget
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
        socket=daemon.socket,
        extra_config=f"hroute:\n  profile: coding\n  paid: {paid}\n",
        approve=approve,
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

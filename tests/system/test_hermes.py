"""A real Hermes Agent (PyPI, its own venv) with the hroute plugin, against fake backends on
loopback and a real `hroute run`.

Skips with the reason when the Hermes venv is missing (`make hermes-venv` builds it), unless
HROUTE_REQUIRE_HERMES=1, as CI sets.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.fakebackend import Behavior, FakeBackend
from tests.support.hermes import API_MAX_RETRIES, HermesAgent, hermes_python

pytestmark = [pytest.mark.system, pytest.mark.hermes, pytest.mark.timeout(150)]

CHAT = "/v1/chat"
DOWN = Behavior(status=503)


@pytest.fixture(scope="module")
def python() -> str:
    path, why = hermes_python()
    if path is None:
        if os.environ.get("HROUTE_REQUIRE_HERMES") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return path


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


def test_plugin_keeps_hermes_off_a_dead_primary_until_hroute_sees_it_healthy(
    python: str, tmp_path: Path, primary: FakeBackend, fallbacks: list[FakeBackend]
) -> None:
    fb = fallbacks[0]
    with (
        hroute_daemon(tmp_path, hroute_config(primary=primary, fallback=fb)) as daemon,
        HermesAgent(
            python,
            tmp_path / "hermes",
            primary_url=primary.url("/v1"),
            fallbacks=[entry(fb, "fb1-model")],
            socket=daemon.socket,
        ) as hermes,
    ):
        plugin = hermes.ready["plugin"]
        assert plugin["enabled"] and plugin["source"] == "entrypoint", plugin
        assert {"api_request_error", "post_api_request"} <= set(plugin["hooks"])
        daemon.wait_state("primary", "healthy")

        take_down(primary)  # turns 1-10
        per_turn = []
        for n in range(1, 11):
            before = posts(primary)
            answer = hermes.turn(f"turn {n}")
            per_turn.append(posts(primary) - before)
            assert answer["response"] == "from fallback one", (n, answer, hermes.stderr)
            if n == 3:  # a title during the outage goes nowhere near the dead primary
                before = posts(primary)
                hermes.title()
                assert posts(primary) == before, hermes.stderr
        assert per_turn[0] <= API_MAX_RETRIES, per_turn  # at most one failing turn's worth
        assert per_turn[1:] == [0] * 9, (per_turn, hermes.stderr)
        assert answer["reports_dropped"] == 0

        primary.clear_behaviors()  # turn 11 on: healthy again
        wait_until(lambda: usable(daemon, primary), 15, what="hroute to see the primary usable")
        before = posts(primary)
        answer = hermes.turn("turn 11")
        assert answer["response"] == "from primary" and not answer["fallback_active"], answer
        assert posts(primary) == before + 1
        assert hermes.turn("turn 12")["response"] == "from primary"

    assert "cooling down" in daemon.log and "(overloaded" in daemon.log, daemon.log


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


@pytest.mark.parametrize("how", ["stopped", "hung"])
def test_without_a_working_hroute_hermes_answers_every_turn_by_itself(
    python: str, tmp_path: Path, primary: FakeBackend, fallbacks: list[FakeBackend], how: str
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
            assert hermes.turn("turn 1")["response"] == "from primary"
            if how == "stopped":
                daemon.stop()
            else:
                assert daemon.proc is not None
                daemon.proc.send_signal(signal.SIGSTOP)
            wait_until(lambda: failing_open(daemon, primary), 15, what="hroute's answers to expire")
            take_down(primary)
            for n in (2, 3, 4):
                before = posts(primary)
                answer = hermes.turn(f"turn {n}")
                assert answer["response"] == "from fallback one", (answer, hermes.stderr)
                # Exactly what Hermes does alone: the primary is restored and retried each turn.
                assert posts(primary) - before == API_MAX_RETRIES
            primary.clear_behaviors()
            assert hermes.turn("turn 5")["response"] == "from primary"
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGCONT)
        daemon.stop()


def failing_open(daemon: Daemon, fb: FakeBackend) -> bool:
    """True once a client gets no answer from hroute (its last snapshot has expired)."""
    return daemon.client(budget_s=0.2).usable(base_url=fb.url("/v1")).source == "fail-open"

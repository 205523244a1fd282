"""Real Hermes Agent with the hroute plugin, on every release in `VERSIONS`, with the
README's example settings (a local server probed every 2 s, `cooldown.base_s: 30`): a
primary that answers 503 for a while, then recovers. Hermes must send it nothing while it
is down, and the first turn after its recovery plus one probe interval must run on it
(issue 20: the cooldown its failure report armed ran to its end, 17-21 s after the
recovery; now the probes that saw the outage end lift it).

The test counts turns and calls and waits on events (a probe reaching the recovered
primary); the seconds it prints are what docs/benchmarks.md records. Skips with the reason
when a Hermes venv is missing (`make hermes-venv` builds them), unless
HROUTE_REQUIRE_HERMES=1, as CI sets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.fakebackend import Behavior, FakeBackend
from tests.support.hermes import (
    API_MAX_RETRIES,
    VERSIONS,
    Hermes,
    HermesAgent,
    require_hermes_python,
)

pytestmark = [pytest.mark.system, pytest.mark.hermes, pytest.mark.timeout(240)]

CHAT = "/v1/chat"
MODELS = "/v1/models"
PROBE_INTERVAL_S = 2.0  # the README's local server
BASE_S = 30.0  # the README's cooldown.base_s
DOWN_TURNS = 5


@pytest.fixture(scope="module", params=VERSIONS, ids=lambda h: h.id)
def hermes_release(request: pytest.FixtureRequest) -> Hermes:
    return request.param


@pytest.fixture(scope="module")
def python(hermes_release: Hermes) -> str:
    return require_hermes_python(hermes_release)


@pytest.fixture
def primary() -> Iterator[FakeBackend]:
    with FakeBackend(kind="openai", models=["primary-model"], reply="from primary") as fb:
        yield fb


@pytest.fixture
def fallback() -> Iterator[FakeBackend]:
    with FakeBackend(kind="openai", models=["fb1-model"], reply="from fallback one") as fb:
        yield fb


def hroute_config(primary: FakeBackend, fallback: FakeBackend) -> str:
    """The README's example defaults and local-server probe."""
    local_probe = f"probe: {{interval_s: {PROBE_INTERVAL_S:g}, timeout_s: 1}}"
    return (
        "defaults:\n"
        "  probe: {interval_s: 10, timeout_s: 3, fall: 3, rise: 1, jitter: 0.1}\n"
        f"  cooldown: {{base_s: {BASE_S:g}, max_s: 900, jitter: 0.1}}\n"
        "backends:\n"
        f"  primary: {{kind: openai, base_url: '{primary.url('/v1')}', model: primary-model,"
        f" {local_probe}}}\n"
        f"  fallback: {{kind: openai, base_url: '{fallback.url('/v1')}', model: fb1-model,"
        f" {local_probe}}}\n"
    )


def test_hermes_is_back_on_the_primary_one_probe_after_it_recovers(
    python: str,
    hermes_release: Hermes,
    tmp_path: Path,
    primary: FakeBackend,
    fallback: FakeBackend,
) -> None:
    (tmp_path / "hroute").mkdir()
    with (
        Daemon(tmp_path / "hroute", hroute_config(primary, fallback)) as daemon,
        HermesAgent(
            python,
            tmp_path / "hermes",
            primary_url=primary.url("/v1"),
            fallbacks=[
                {
                    "provider": "custom",
                    "model": "fb1-model",
                    "base_url": fallback.url("/v1"),
                    "api_key": "fb-key",
                }
            ],
            socket=daemon.socket,
        ) as hermes,
    ):
        assert hermes.ready["plugin"]["enabled"], hermes.ready
        daemon.wait_state("primary", "healthy")
        primary.set_behavior(CHAT, Behavior(status=503))
        primary.set_behavior(MODELS, Behavior(status=503))
        probes_before = primary.count("GET", MODELS)

        rows: list[tuple[str, int, str]] = []  # (turn, primary POSTs, answered by)

        def turn(name: str) -> str:
            before = primary.count("POST", CHAT)
            answer = hermes.turn(name)
            by = "primary" if answer["response"] == "from primary" else "fallback"
            rows.append((name, primary.count("POST", CHAT) - before, by))
            return by

        # Down: at least DOWN_TURNS turns, and until a probe has met the outage too (a
        # failure the probes never saw is not theirs to lift).
        n = 0
        while n < DOWN_TURNS or primary.count("GET", MODELS) == probes_before:
            n += 1
            turn(f"down {n}")
            assert n < 60, rows
        recovered_at = time.monotonic()
        probes_at_recovery = primary.count("GET", MODELS)
        primary.clear_behaviors()
        # One probe interval: the next probe reaches the recovered primary ...
        primary.wait_for_requests(
            probes_at_recovery + 1, MODELS, timeout_s=PROBE_INTERVAL_S * 1.1 + 5, method="GET"
        )
        # ... and the daemon takes its answer as the end of the outage, not 30 s later.
        wait_until(
            lambda: daemon.backend("primary")["usable"],
            timeout_s=5,
            what="the recovered primary to be usable again",
        )
        # The plugin reads the snapshot, which follows the registry by at most its write gap
        # (tens of ms): the first turn is taken once what Hermes reads says so too.
        client = daemon.client()
        wait_until(
            lambda: (
                client.usable(base_url=primary.url("/v1")).source == "snapshot"
                and bool(client.usable(base_url=primary.url("/v1")))
            ),
            timeout_s=2,
            what="the snapshot agents read to say the primary is usable",
        )
        usable_s = time.monotonic() - recovered_at
        after = [turn(f"up {i}") for i in range(1, 4)]
        table = "\n".join(f"turn {t}: {p} primary POSTs, answered by {b}" for t, p, b in rows)
        print(f"{hermes_release.id}: primary usable {usable_s:.2f}s after its recovery\n{table}")
        # Turn 1 pays Hermes' attempts (0.22 makes one more than 0.19); then nothing while down.
        assert rows[0][1] <= API_MAX_RETRIES + 1, table
        assert all(p == 0 for _, p, _ in rows[1:n]), table
        assert all(b == "fallback" for _, _, b in rows[:n]), table
        assert after == ["primary"] * 3, table
        assert "cooldown lifted: healthy again" in daemon.log, daemon.log

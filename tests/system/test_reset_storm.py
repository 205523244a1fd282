"""Issue 20's storm, as users met it: a provider answers hroute's probe 429 with a reset that
is zero or already past. hroute once armed a cooldown that ended at once, whose end poked the
prober, whose probe got the same 429: ~300 probes a second with the API key, thousands of
identical WARNING lines, and the backend called usable. Now: the normal cooldown, at most one
probe per interval, one line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.fakebackend import Behavior, FakeBackend

pytestmark = pytest.mark.system

INTERVAL_S = 0.5
PROBES = 5


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Retry-After": "0"}, id="retry-after-0"),
        pytest.param({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, id="http-date-past"),
        pytest.param({"x-ratelimit-reset-requests": "0s"}, id="openai-reset-0s"),
    ],
)
def test_a_429_with_a_zero_or_past_reset_is_probed_once_per_interval(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    with FakeBackend(kind="openai", models=["m"]) as cloud:
        cloud.set_behavior("/v1/models", Behavior(status=429, headers=headers))
        cfg = (
            "defaults:\n"
            f"  probe: {{interval_s: {INTERVAL_S}, timeout_s: 1, fall: 1, rise: 1, jitter: 0}}\n"
            "  cooldown: {base_s: 30, max_s: 300, jitter: 0}\n"
            "backends:\n"
            f"  cloud: {{kind: openai, base_url: '{cloud.url('/v1')}', model: m,"
            " key_env: CLOUD_KEY}\n"
        )
        with Daemon(tmp_path, cfg, env={"CLOUD_KEY": "sk-test-storm"}) as d:
            cloud.wait_for_requests(1, "/v1/models", timeout_s=10)
            first = time.monotonic()
            cloud.wait_for_requests(PROBES, "/v1/models", timeout_s=10)
            spent = time.monotonic() - first
            seen = cloud.count("GET", "/v1/models")
            view = d.backend("cloud")
            lines = [line for line in d.log.splitlines() if "cooling down" in line]
    # Counted work: PROBES probes cannot fit in less than PROBES - 1 intervals (a lower
    # bound, which a slow machine only makes easier), and none came in between.
    assert spent >= (PROBES - 1) * INTERVAL_S - 0.1, (spent, seen)
    assert seen <= PROBES + 1, seen
    assert view["usable"] is False, view
    assert len(lines) == 1 and "cooling down for 30s" in lines[0], lines

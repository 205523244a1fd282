"""`hroute status --watch` / `hroute top` against a running daemon: on a pty and piped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.fakebackend import FakeBackend
from tests.support.terminal import run_in_pty

pytestmark = pytest.mark.system

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def config(up: FakeBackend) -> str:
    return "\n".join(
        [
            "backends:",
            f"  up: {{kind: openai, base_url: '{up.base_url}', probe: {{interval_s: 0.2, jitter: 0}}}}",
            "  cloud: {kind: openai, base_url: 'http://127.0.0.1:9/v1', probe: {enabled: false}}",
            "profiles:",
            "  coding: {chain: [up, cloud]}",
            "",
        ]
    )


@pytest.fixture
def daemon(tmp_path: Path):
    with FakeBackend(kind="openai", models=["m"]) as up, Daemon(tmp_path, config(up)) as d:
        d.wait_state("up", "healthy")
        status, _ = d.client().request(
            "POST",
            "/v1/reports",
            {
                "backend": "cloud",
                "outcome": "failure",
                "reason": "rate_limit",
                "retry_after_s": 100,
            },
        )
        assert status == 202
        yield d


def hroute(d: Daemon, *args: str) -> list[str]:
    return [sys.executable, "-m", "hroute.cli", "--socket", str(d.socket), *args]


def test_piped_it_prints_plain_blocks_one_after_another(daemon: Daemon) -> None:
    out = subprocess.run(
        hroute(daemon, "status", "--watch", "--interval", "0.1", "--count", "3"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout
    frames = out.stdout.split("hroute status  ")[1:]
    assert len(frames) == 3
    for frame in frames:
        assert re.search(r"^up +openai +healthy +yes", frame, re.M), frame
        assert re.search(r"^cloud +openai +unknown +no +rate_limit +\d+s", frame, re.M), frame
        assert "latest events" in frame
        assert "cloud: cooling down for 100s (rate_limit)" in frame


def test_on_a_terminal_it_redraws_in_place_in_colour_and_counts_down(daemon: Daemon) -> None:
    rc, out = run_in_pty(hroute(daemon, "top", "--interval", "1.2", "--count", "2"), timeout_s=20)
    assert rc == 0, out
    assert out.count("\x1b[H\x1b[2J") == 2  # each frame replaces the previous one
    assert "\x1b[32mhealthy" in out and "\x1b[31mno" in out
    plain = ANSI.sub("", out)
    left = [int(s) for s in re.findall(r"rate_limit +(\d+)s", plain)]
    assert len(left) == 2 and left[1] < left[0] <= 100, left


def test_it_says_when_the_daemon_is_not_there(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hroute.cli", "--socket", str(tmp_path / "none.sock")]
        + ["status", "-w", "--count", "1"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0
    assert "cannot reach the daemon" in out.stdout

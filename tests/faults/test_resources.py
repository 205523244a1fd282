"""Descriptors and the listen queue: idle clients and connect storms cannot take it down."""

from __future__ import annotations

import resource
import socket
import subprocess
from pathlib import Path

import pytest

from hroute.edges.limits import BACKLOG
from tests.support.daemon import Daemon, wait_until
from tests.support.fakebackend import FakeBackend
from tests.support.faults import config, still_answers

pytestmark = [pytest.mark.faults, pytest.mark.system]


@pytest.fixture(scope="module", autouse=True)
def _many_fds() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))


def _listen_backlog(path: Path) -> int:
    out = subprocess.run(["ss", "-xlnH"], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if str(path) in ln)
    return int(line.split()[3])  # Netid State Recv-Q Send-Q: Send-Q is the backlog


def test_the_requested_backlog_is_the_real_one(shared: Daemon) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert _listen_backlog(shared.socket) == min(BACKLOG, somaxconn)
    socks, failed = [], 0
    try:
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(str(shared.socket))
            except BlockingIOError:
                failed += 1
            socks.append(s)
    finally:
        for s in socks:
            s.close()
    assert failed == 0, f"{failed} of 1000 simultaneous connects failed"
    still_answers(shared)


def test_idle_clients_cannot_starve_probes_with_the_default_fd_limit(tmp_path: Path) -> None:
    with FakeBackend(kind="openai") as fb:
        spec = f"{{kind: openai, base_url: '{fb.base_url}', probe: {{interval_s: 0.2, fall: 1}}}}"
        with Daemon(tmp_path, config({"up": spec}), nofile=1024) as d:
            d.wait_state("up", "healthy")
            idle = []
            try:
                for _ in range(1100):
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(str(d.socket))
                    idle.append(s)
                fb.clear_requests()
                fb.wait_for_requests(5, "/v1/models", timeout_s=10)  # probes still run
                assert d.backend("up")["state"] == "healthy"
                still_answers(d)
            finally:
                for s in idle:
                    s.close()
            assert "too many open files" not in d.log.lower()
            assert len(d.log) < 100_000, f"{len(d.log)} bytes of log"
            events = [e["event"] for e in d.get("/v1/events")[1]["events"]]
            assert "backend_down" not in events
            wait_until(lambda: d.proc.poll() is None, 1)

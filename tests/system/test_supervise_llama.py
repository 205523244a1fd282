"""hroute supervising a real llama-server with a tiny model: start, kill -9, SIGSTOP.

Needs HROUTE_LLAMA_SERVER (see tests/support/llama.py); skips with the reason without it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.llama import llama_command, require_llama_server, tiny_model
from tests.support.procs import dead, free_port

pytestmark = [pytest.mark.system, pytest.mark.llama]


def process(d: Daemon) -> dict[str, Any]:
    return d.backend("local")["process"]


def running(d: Daemon, **want: Any) -> dict[str, Any]:
    def ok() -> dict[str, Any] | None:
        p = process(d)
        good = p["state"] == "running" and all(p.get(k) == v for k, v in want.items())
        return p if good else None

    return wait_until(ok, 15, what=f"llama-server running {want}")


def test_real_llama_server_start_crash_and_hang(tmp_path: Path) -> None:
    binary = require_llama_server()
    port = free_port()
    block = {
        "command": llama_command(binary, tiny_model(tmp_path), port),
        "stop_timeout_s": 2,
        "hang_restart_after": 2,
        "startup_timeout_s": 30,
        "restart": {"backoff_initial_s": 0.5},
    }
    probe = {"interval_s": 0.2, "timeout_s": 0.5, "fall": 1, "rise": 1, "jitter": 0}
    cfg = (
        "backends:\n"
        "  local:\n"
        "    kind: llama-server\n"
        f"    base_url: 'http://127.0.0.1:{port}'\n"
        f"    probe: {json.dumps(probe)}\n"
        f"    supervise: {json.dumps(block)}\n"
    )
    with Daemon(tmp_path, cfg) as d:
        # start: starting (waiting for /health) -> running, and the backend healthy
        first = running(d)["pid"]
        d.wait_for_log(f"local: started pid {first}")
        d.wait_for_log(f"local: pid {first} ready after")
        assert d.wait_state("local", "healthy", 15)["usable"] is True
        d.wait_for_log("hroute.child: [local] ")  # llama-server's own log, tagged

        # kill -9: restarted at once, healthy again
        os.kill(first, signal.SIGKILL)
        line = d.wait_for_log(f"local: pid {first} was killed by SIGKILL")
        assert line.endswith("restarting in 0s")
        second = running(d, restarts=1)["pid"]
        assert second != first and process(d)["last_restart_reason"] == "exited"
        assert d.wait_state("local", "healthy", 15)["usable"] is True

        # SIGSTOP: alive but answering nothing -> a hang, stopped and restarted
        os.kill(second, signal.SIGSTOP)
        try:
            line = d.wait_for_log(f"local: pid {second} is alive but 2 probes", 15)
            assert line.endswith("restarting in 0.5s")  # the second failure of a series
            p = running(d, restarts=2)
            assert p["last_restart_reason"] == "hang" and p["pid"] != second
            assert dead(second)
        finally:
            if not dead(second):
                os.kill(second, signal.SIGKILL)
        assert d.wait_state("local", "healthy", 15)["usable"] is True

"""Benchmark of process supervision with a real llama-server and a tiny random-weight model.

`hroute run` supervises `llama-server -m tiny.gguf` with the README's probe settings for a
local server (interval 2 s, timeout 1 s, hang_restart_after 3). Then, for each of N runs:

- **crash**: `kill -9` the server once it is healthy; measure exit -> respawn (hroute's
  `process_started` event) and exit -> healthy (`backend_up`). `reset_after_s` is 1 s and
  each crash comes after more than that of health, so every crash is a "first crash";
- **hang**: `kill -STOP` the server at a random point of the probe cycle (a seeded uniform
  delay after a probe succeeded); measure stop -> restart issued (the `backend_down`
  event with reason `hang`, the moment hroute signals the process group), -> new process,
  -> healthy again.

Times come from hroute's event timestamps (wall clock, ms) against the wall time at which
this script sent the signal. Medians, with min and max, of N runs (default 5).
Usage (from the repository root): .venv/bin/python -m bench.bench_supervise [--runs N] [--llama-server PATH]
       (PATH defaults to $HROUTE_LLAMA_SERVER; `make llama-server` builds one)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from tests.support.daemon import wait_until
from tests.support.llama import llama_command, tiny_model
from tests.support.procs import free_port

from hroute.client import Client

ROOT = Path(__file__).resolve().parents[1]

PROBE = {"interval_s": 2, "timeout_s": 1}  # README: llama-local; fall 3, jitter 0.1 by default
HANG_AFTER = 3
RESET_AFTER_S = 1.0


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    return wait_until(predicate, timeout_s, interval_s=0.005, what=what)


class Hroute:
    """`hroute run` on a temp config, asked through its socket."""

    def __init__(self, tmp: Path, binary: str) -> None:
        port = free_port()
        block = {
            "command": llama_command(binary, tiny_model(tmp), port),
            "hang_restart_after": HANG_AFTER,
            "stop_timeout_s": 5,
            "startup_timeout_s": 60,
            "restart": {"reset_after_s": RESET_AFTER_S},
            "start_limit": {"burst": 1000, "interval_s": 300},
        }
        (tmp / "hroute.yaml").write_text(
            "backends:\n  local:\n    kind: llama-server\n"
            f"    base_url: 'http://127.0.0.1:{port}'\n"
            f"    probe: {json.dumps(PROBE)}\n    supervise: {json.dumps(block)}\n"
        )
        self.socket = tmp / "hroute.sock"
        env = {**os.environ, "HROUTE_SOCKET": str(self.socket), "HROUTE_STATE_DIR": str(tmp)}
        env.pop("NOTIFY_SOCKET", None)
        self.log = (tmp / "hroute.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hroute.cli", "run", "--config", str(tmp / "hroute.yaml")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self.client = Client(self.socket, budget_s=2)
        wait_for(self._serving, 30, "hroute to serve its socket")
        self.seen = 0

    def _serving(self) -> bool:
        try:
            return self.client.request("GET", "/v1/version")[0] == 200
        except (OSError, TimeoutError, ValueError):
            return False

    def backend(self) -> dict[str, Any]:
        return self.client.request("GET", "/v1/backends/local")[1]

    def healthy_pid(self) -> int:
        b = wait_for(
            lambda: (
                (b := self.backend())["state"] == "healthy"
                and b["process"]["state"] == "running"
                and b
            ),
            60,
            "a healthy llama-server",
        )
        return b["process"]["pid"]

    def mark(self) -> None:
        """Only events after this point count for the next `event()`."""
        events = self.client.request("GET", "/v1/events")[1]["events"]
        self.seen = max((e["id"] for e in events), default=0)

    def event(self, name: str, reason: str | None = None, timeout_s: float = 60) -> dict:
        def find() -> dict | None:
            events = self.client.request("GET", f"/v1/events?since={self.seen}")[1]["events"]
            return next(
                (e for e in events if e["event"] == name and reason in (None, e.get("reason"))),
                None,
            )

        return wait_for(find, timeout_s, f"event {name} {reason or ''}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


def crash_run(h: Hroute) -> dict[str, float]:
    pid = h.healthy_pid()
    ready = time.monotonic()
    wait_for(lambda: time.monotonic() - ready > RESET_AFTER_S + 0.2, 5, "a healthy run")
    h.mark()
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    started = h.event("process_started")
    up = h.event("backend_up")
    return {"respawn_ms": (started["ts"] - t0) * 1000, "healthy_ms": (up["ts"] - t0) * 1000}


def hang_run(h: Hroute, rng: random.Random) -> dict[str, float]:
    pid = h.healthy_pid()
    # A probe has just succeeded: a hang at a random point of the probe cycle, as in life.
    time.sleep(rng.uniform(0, PROBE["interval_s"]))
    h.mark()
    t0 = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        issued = h.event("backend_down", "hang")
        started = h.event("process_started")
        up = h.event("backend_up")
    finally:
        with_pid_gone(pid)
    return {
        "restart_issued_s": issued["ts"] - t0,
        "respawn_s": started["ts"] - t0,
        "healthy_s": up["ts"] - t0,
    }


def with_pid_gone(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def summary(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{median(values):.3g} ({min(values):.3g} - {max(values):.3g})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1, help="of the hang phases")
    parser.add_argument("--llama-server", default=os.environ.get("HROUTE_LLAMA_SERVER"))
    args = parser.parse_args()
    if not args.llama_server or not os.access(args.llama_server, os.X_OK):
        print("bench: give --llama-server PATH or set HROUTE_LLAMA_SERVER", file=sys.stderr)
        print("       (make llama-server builds one)", file=sys.stderr)
        return 2
    version = subprocess.run(
        [args.llama_server, "--version"], capture_output=True, text=True, timeout=30
    )
    with tempfile.TemporaryDirectory(prefix="hroute-bench-supervise-") as tmp:
        h = Hroute(Path(tmp), args.llama_server)
        try:
            crashes = [crash_run(h) for _ in range(args.runs)]
            rng = random.Random(args.seed)
            hangs = [hang_run(h, rng) for _ in range(args.runs)]
        finally:
            h.stop()
    load = os.getloadavg()[0]
    interval, timeout = PROBE["interval_s"], PROBE["timeout_s"]
    hang_goal = HANG_AFTER * interval + timeout
    llama_version = (version.stdout + version.stderr).strip().splitlines()
    print(f"# {platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, ")
    print(f"# Python {platform.python_version()}, llama-server {' '.join(llama_version[:1])}")
    print(f"# load average (1 min) at the end: {load:.1f}; {args.runs} runs each")
    print()
    print("| measure | median (min - max) | goal |")
    print("|---|---:|---|")
    print(f"| kill -9 -> respawned, ms | {summary(crashes, 'respawn_ms')} | <= 100 ms |")
    print(f"| kill -9 -> healthy again, ms | {summary(crashes, 'healthy_ms')} | |")
    print(
        f"| SIGSTOP -> restart issued, s | {summary(hangs, 'restart_issued_s')} "
        f"| <= {hang_goal:g} s ({HANG_AFTER} x {interval:g} s + {timeout:g} s) |"
    )
    print(f"| SIGSTOP -> new process, s | {summary(hangs, 'respawn_s')} | |")
    print(f"| SIGSTOP -> healthy again, s | {summary(hangs, 'healthy_s')} | |")
    print()
    print(json.dumps({"crash": crashes, "hang": hangs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

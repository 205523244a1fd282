"""Start-up benchmark: how soon after a supervised server is ready does hroute call it usable?

`hroute run` supervises tests/support/fake_llama.py with `--bind-after-ms 2000` (a model
loading before the port is bound, connections refused meanwhile; ready as soon as bound).
The regular probe runs every 30 s, so only the supervisor's start-up poll can see it ready.
For each of N starts (the first, then `hroute restart`), it reads the wall time at which the
fake bound its port (its own log line) and hroute's `backend_up` event, and counts the
`backend_down` events during the start (there should be none).

Usage (repository root): .venv/bin/python bench/bench_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.support.daemon import wait_until  # noqa: E402
from tests.support.procs import free_port  # noqa: E402

from hroute.client import Client  # noqa: E402

FAKE = ROOT / "tests" / "support" / "fake_llama.py"
BOUND = re.compile(r"\[loc\] fake_llama: bound at wall ([0-9.]+)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--bind-after-ms", type=int, default=2000)
    args = parser.parse_args()
    port = free_port()
    command = [sys.executable, str(FAKE), "--port", str(port), "--log-health",
               "--bind-after-ms", str(args.bind_after_ms)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hroute-bench-startup-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "hroute.yaml").write_text(
            "backends:\n  loc:\n    kind: llama-server\n"
            f"    base_url: 'http://127.0.0.1:{port}'\n"
            f"    probe: {json.dumps({'interval_s': 30, 'timeout_s': 1})}\n"
            f"    supervise: {json.dumps({'command': command})}\n"
        )
        env = {**os.environ, "HROUTE_SOCKET": str(tmp / "s.sock"), "HROUTE_STATE_DIR": tmp_name}
        env.pop("NOTIFY_SOCKET", None)
        log = tmp / "hroute.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hroute.cli", "run", "--config", str(tmp / "hroute.yaml")],
                env=env, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        client = Client(tmp / "s.sock", budget_s=2)
        lags, downs = [], 0
        try:
            seen = 0
            for run in range(args.runs):
                if run:
                    client.request("POST", "/v1/backends/loc/restart")

                def up(seen: int = seen) -> dict | None:
                    try:
                        events = client.request("GET", f"/v1/events?since={seen}")[1]["events"]
                    except (OSError, TimeoutError, ValueError):
                        return None
                    return next((e for e in events if e["event"] == "backend_up"), None)

                event = wait_until(up, 30, interval_s=0.05, what="backend_up")
                events = client.request("GET", f"/v1/events?since={seen}")[1]["events"]
                downs += sum(e["event"] == "backend_down" for e in events)
                bound = [float(m.group(1)) for m in BOUND.finditer(log.read_text())]
                lags.append(event["ts"] - bound[-1])
                seen = event["id"]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    load = os.getloadavg()[0]
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {load:.1f}; {args.runs} starts, binding after {args.bind_after_ms} ms")  # fmt: skip
    print(f"bound -> usable: median {median(lags) * 1000:.0f} ms "
          f"(min {min(lags) * 1000:.0f}, max {max(lags) * 1000:.0f}); "
          f"backend_down during the starts: {downs}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: hostile load cannot make hroute slow (figures the fault tests no longer time).

Three measures on one `hroute run` in a temp dir (the fault matrix asserts what is bounded
and that the daemon still answers; how fast is measured here, where a busy machine can be
told apart from a regression):

1. reports a second for 200 new key fingerprints at first, and again after 1,200 distinct
   fingerprints were reported (the per-server table is capped at MAX_SCOPES);
2. `POST /v1/tasks/{id}/failures` a second at first, and after 1,700 distinct task ids;
3. the wait of plain socket requests while probes fetch a 15 MB model listing every 0.2 s
   (parsed in a worker thread): median, second-worst and worst over about 1.5 s.

Usage (from the repository root): .venv/bin/python -m bench.bench_hostile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.support.daemon import Daemon
from tests.support.fakebackend import Behavior, FakeBackend
from tests.support.faults import config, still_answers
from tests.support.procs import free_port

from hroute.client import fingerprint


def _unprobed(port: int) -> str:
    return f"{{kind: openai, base_url: 'http://127.0.0.1:{port}', probe: {{enabled: false}}}}"


def reports_per_s(d: Daemon, start: int, n: int) -> float:
    client = d.client()
    t = time.perf_counter()
    for i in range(start, start + n):
        fp = fingerprint(f"key-{i}")
        assert client.report("a", reason="rate_limit", credential=fp, retry_after_s=600)
    return n / (time.perf_counter() - t)


def tasks_per_s(d: Daemon, start: int, n: int) -> float:
    client = d.client()
    t = time.perf_counter()
    for i in range(start, start + n):
        status, _ = client.request(
            "POST", f"/v1/tasks/task-{i}/failures", {"reason": "no_progress"}
        )
        assert status == 202
    return n / (time.perf_counter() - t)


def waits_beside_a_big_listing(tmp: Path) -> list[float]:
    big = {"object": "list", "data": [{"id": f"model-{i:07d}"} for i in range(300_000)]}
    with FakeBackend(kind="openai") as fb:
        fb.set_behavior("/v1/models", Behavior(body=json.dumps(big).encode()))
        spec = (
            f"{{kind: openai, base_url: '{fb.base_url}', model: model-0000001, "
            "probe: {interval_s: 0.2, timeout_s: 10}}"
        )
        with Daemon(tmp, config({"big": spec})) as d:
            fb.wait_for_requests(3, "/v1/models", timeout_s=30)
            waits = []
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                t = time.perf_counter()
                still_answers(d)
                waits.append((time.perf_counter() - t) * 1000)
                time.sleep(0.01)
    return sorted(waits)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "big").mkdir()
        with Daemon(Path(tmp) / "a", config({"a": _unprobed(free_port())})) as d:
            keys_first = reports_per_s(d, 0, 200)
            reports_per_s(d, 200, 1000)
            keys_last = reports_per_s(d, 1200, 200)
            tasks_first = tasks_per_s(d, 0, 200)
            tasks_per_s(d, 200, 1500)
            tasks_last = tasks_per_s(d, 1700, 200)
        waits = waits_beside_a_big_listing(Path(tmp) / "big")
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    print(
        f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}, load {os.getloadavg()[0]:.1f}"
    )
    print("| measure | value | goal |")
    print("|---|---|---|")
    print(
        f"| reports/s: first 200 keys, after 1,200 keys | {keys_first:.0f}, {keys_last:.0f} | "
        "the second at least half the first |"
    )
    print(
        f"| task failures/s: first 200 ids, after 1,700 ids | {tasks_first:.0f}, "
        f"{tasks_last:.0f} | the second at least half the first |"
    )
    print(
        f"| socket wait beside a 15 MB listing: median, 2nd worst, worst of {len(waits)} | "
        f"{statistics.median(waits):.1f}, {waits[-2]:.1f}, {waits[-1]:.1f} ms | "
        "2nd worst < 150 ms |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

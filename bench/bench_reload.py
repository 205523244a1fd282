"""Reload benchmark: save -> new config applied, and a reload storm under ~1k queries/s.

Runs `hroute run` on a temp config (no backend is probed: this measures hroute itself),
then:
  1. save -> applied: write a config that adds a backend and time until the daemon's API
     lists it (median and max of N saves, written in place and by rename alternately).
     The anchor is llama-swap's `-watch-config`, which polls every 2 s.
  2. reload under load: client threads query /v1/route and /v1/usable at ~1k/s in total
     while the config flips N times; every failed or mixed answer is counted.

Usage (from the repository root): .venv/bin/python -m bench.bench_reload [--saves 20] [--flips 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.daemon import Daemon, wait_until

HEAD = "defaults:\n  probe: {interval_s: 30, jitter: 0}\nbackends:\n"


def config(names: list[str]) -> str:
    lines = [
        f"  {n}: {{kind: openai, base_url: 'http://127.0.0.1:{9000 + i}', probe: {{enabled: false}}}}"
        for i, n in enumerate(names)
    ]
    chain = ", ".join(names)
    return HEAD + "\n".join(lines) + f"\nprofiles:\n  p: {{chain: [{chain}]}}\n"


def listed(d: Daemon) -> set[str]:
    status, body = d.client().request("GET", "/v1/backends")
    return {b["name"] for b in body["backends"]} if status == 200 else set()


def save_to_applied(d: Daemon, saves: int) -> list[float]:
    times = []
    for i in range(saves):
        names = ["a", f"n{i}"]
        text = config(names)
        start = time.perf_counter()
        if i % 2:
            tmp = d.config_path.with_name(".next.yaml")
            tmp.write_text(text)
            os.replace(tmp, d.config_path)
        else:
            d.config_path.write_text(text)
        wait_until(lambda n=set(names): listed(d) == n, 10, interval_s=0.002, what=f"save {i}")
        times.append((time.perf_counter() - start) * 1000)
    return times


def storm(d: Daemon, flips: int, rate_per_thread: float = 250.0, threads: int = 4) -> dict:
    stop = threading.Event()
    counts = {"queries": 0, "failed": 0, "mixed": 0}
    lock = threading.Lock()

    def worker() -> None:
        client = d.client(budget_s=2.0)
        period = 1.0 / rate_per_thread
        nxt = time.perf_counter()
        while not stop.is_set():
            ok, mixed = True, False
            try:
                status, body = client.request("GET", "/v1/route?profile=p")
                ok = status in (200, 503)
                mixed = ok and len({c["backend"][0] for c in body["chain"]}) != 1
            except Exception:  # every failure is counted
                ok = False
            with lock:
                counts["queries"] += 1
                counts["failed"] += not ok
                counts["mixed"] += mixed
            nxt += period
            delay = nxt - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    d.config_path.write_text(config(["y1", "y2"]))  # names whose first letters agree
    wait_until(lambda: listed(d) == {"y1", "y2"}, 10, what="the storm's first config")
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for i in range(flips):
        names = ["x1", "x2"] if i % 2 == 0 else ["y1", "y2"]
        d.config_path.write_text(config(names))
        wait_until(lambda n=set(names): listed(d) == n, 10, interval_s=0.005, what=f"flip {i}")
        time.sleep(0.1)  # let queries run against each configuration
    stop.set()
    for t in pool:
        t.join(10)
    counts["seconds"] = time.perf_counter() - start
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--saves", type=int, default=20)
    parser.add_argument("--flips", type=int, default=20)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Daemon(Path(tmp), config(["a"]), env={"HROUTE_LOG_LEVEL": "warning"}) as d,
    ):
        times = save_to_applied(d, args.saves)
        load = storm(d, args.flips)
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
        f"{time.strftime('%Y-%m-%d')}"
    )
    print("| measure | value | goal / anchor |")
    print("|---|---|---|")
    print(
        f"| save -> applied, median of {len(times)} | {statistics.median(times):.0f} ms | "
        f"<= 500 ms; llama-swap polls every 2000 ms |"
    )
    print(f"| save -> applied, max | {max(times):.0f} ms | |")
    qps = load["queries"] / load["seconds"]
    print(
        f"| reload storm: {args.flips} reloads, {load['queries']} queries at {qps:.0f}/s | "
        f"{load['failed']} failed, {load['mixed']} mixed | 0 failed |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

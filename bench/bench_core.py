"""In-process costs of the core under fleet-scale churn (issue 25), against a Redis GET.

- applying one remote record (another host's key cooldown) to the registry: the core alone,
  and with the log line it tells (the daemon's log sink, to /dev/null);
- what a change costs a reader of the snapshot: reading the file, its header and index, and
  the one section asked about, at 200 and 2,000 cloud backends with 15 held keys each;
- the anchor: one Redis GET on a private redis-server over a Unix socket, in the same run.
Usage: .venv/bin/python -m bench.bench_core
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import redis

from bench.bench_usable import machine, stop, wait_for
from hroute.config.model import load_config
from hroute.core.credentials import fingerprint
from hroute.core.events import Topic
from hroute.core.health_values import Scope
from hroute.core.reasons import Reason
from hroute.core.registry import Registry
from hroute.core.shared_record import Shared
from hroute.core.snapshot_format import SnapshotFile, encode
from hroute.edges.clock import RealClock
from hroute.systemd.logs import log_event

BACKENDS, KEYS_EACH, ROUNDS = 20, 250, 5
GOAL_APPLY_US = 20.0


def registry(n: int, *, logged: bool) -> Registry:
    lines = ["backends:"] + [
        f"  cloud{b}: {{kind: openai, base_url: 'https://c{b}.example.com/v1', model: m,"
        " tier: cloud, probe: {enabled: false}}"
        for b in range(n)
    ]
    reg = Registry(load_config("\n".join(lines) + "\n"), RealClock())
    if logged:
        reg.subscribe(Topic.EVENT, log_event)
    return reg


def apply_us(logged: bool) -> float:
    """µs per remote record taken, over 5,000 records (20 backends x 250 keys)."""
    reg = registry(BACKENDS, logged=logged)
    records = [
        Shared(reg.directory.identity(f"cloud{b}"), Scope.KEY, Reason.RATE_LIMIT, 600.0,
               "other-host", credential=fingerprint(f"k{b}-{k}"), version=1)
        for b in range(BACKENDS)
        for k in range(KEYS_EACH)
    ]  # fmt: skip
    t = time.perf_counter()
    for record in records:
        reg.take_shared(record)
    return (time.perf_counter() - t) / len(records) * 1e6


def snapshot_file(n: int, path: Path) -> None:
    backends = {
        f"cloud{b}": {
            "state": "unknown", "model": "m", "blocked": None, "until": None,
            "until_reason": None, "models": {},
            "creds": {fingerprint(f"k{b}-{k}"): {"m": [1e6 + k, "rate_limit"]}
                      for k in range(15)},
        }
        for b in range(n)
    }  # fmt: skip
    urls = {"urls": {f"https://c{b}.example.com": f"cloud{b}" for b in range(n)}}
    path.write_bytes(encode({"pid": 1, "version": 1, "expires": 1e12}, backends, urls))


def reader_us(path: Path, name: str, n: int = 2000) -> float:
    """µs for what a reader does after a change: open, read, header and one section."""
    t = time.perf_counter()
    for _ in range(n):
        fd = os.open(path, os.O_RDONLY)
        raw = os.read(fd, os.fstat(fd).st_size + 1)
        os.close(fd)
        SnapshotFile(raw).backend(name)
    return (time.perf_counter() - t) / n * 1e6


def redis_get_us(tmp: Path, procs: list, n: int = 5000) -> float:
    sock = str(tmp / "redis.sock")
    opts = ["--port", "0", "--unixsocket", sock, "--unixsocketperm", "700"]
    opts += ["--save", "", "--appendonly", "no", "--dir", str(tmp), "--logfile", "redis.log"]
    procs.append(subprocess.Popen(["redis-server", *opts]))
    wait_for(lambda: os.path.exists(sock), 10, "redis")
    r = redis.Redis(unix_socket_path=sock)
    r.set("k", "v")
    t = time.perf_counter()
    for _ in range(n):
        r.get("k")
    return (time.perf_counter() - t) / n * 1e6


def main() -> int:
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server not found: apt-get install -y redis-server")
    logging.basicConfig(level=logging.INFO, filename=os.devnull)
    info = machine()
    procs: list = []
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="hroute-core-") as tmp:
        try:
            for n in (200, 2000):
                snapshot_file(n, Path(tmp) / f"s{n}")
            for _ in range(ROUNDS):  # interleaved: every figure sees the same noise
                rows.setdefault("apply", []).append(apply_us(False))
                rows.setdefault("apply_logged", []).append(apply_us(True))
                for n in (200, 2000):
                    rows.setdefault(f"read{n}", []).append(reader_us(Path(tmp) / f"s{n}", "cloud7"))
                rows.setdefault("redis", []).append(redis_get_us(Path(tmp), procs))
        finally:
            for p in procs:
                stop(p)
    med = {k: median(v) for k, v in rows.items()}
    anchor = med["redis"]
    print(f"\n{info}; medians of {ROUNDS} rounds\n")
    print("| what | µs | ÷ Redis GET | goal | met |\n|---|---:|---:|---|---|")
    table = [
        ("apply one remote record (core)", "apply", f"≤ {GOAL_APPLY_US:.0f} µs"),
        ("apply one remote record + its log line", "apply_logged", "—"),
        ("a change, read: 200 backends, 3,000 keys", "read200", "—"),
        ("a change, read: 2,000 backends, 30,000 keys", "read2000", "—"),
        ("Redis GET · redis-py (anchor)", "redis", "—"),
    ]
    for label, key, goal in table:
        met = "" if goal == "—" else ("met" if med[key] <= GOAL_APPLY_US else "not met")
        print(f"| {label} | {med[key]:.1f} | {med[key] / anchor:.2f} | {goal} | {met} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

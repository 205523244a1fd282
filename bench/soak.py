"""Soak: ~1,000 mixed requests/s for minutes, with faults injected every few seconds.

Runs `hroute run` against three fake backends on loopback and, from client threads, asks
the socket API at about --rate requests/s in total (usable over the socket and from the
snapshot, route, report, backends, events, version). Every --fault-every seconds one fault
is injected, in turn:

  flap         a backend stops answering (connection refused), or comes back
  reload       the config is rewritten (in place or by rename), probe settings changed
  bad-save     an empty file, then a truncate-then-write save, then the good file again
  garbage      junk bytes, half requests, raw keys as credentials, free-text reasons,
               NaN numbers, control characters, and 200 idle connections held a while
  credentials  a burst of 500 reports with distinct credential fingerprints
  tasks        a burst of 300 task failures over a pool of 1,000 task ids (a steady state
               that the run reaches; the bound of 10,000 tasks is the fault matrix's case)
  sighup       SIGHUP (a reload)

Pass criteria (the exit status says): 0 errors for well-formed requests (anything but the
expected status, or no answer within 2 s), RSS growth <= 5 % from the end of warm-up (the
first 20 % of the run) to the end, and a flat descriptor count: the median of the last
samples within 16 of the median after warm-up (the garbage fault holds 200 connections
for a second, so single samples may catch those).

Usage (from the repository root): .venv/bin/python -m bench.soak [--duration 600] [--rate 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from tests.support.daemon import Daemon
from tests.support.fakebackend import FakeBackend
from tests.support.faults import raw_request

from hroute.client import Client, fingerprint

WORKERS = 8
BUDGET_S = 2.0


def config(fakes: list[FakeBackend], interval_s: float, extra: bool) -> str:
    lines = [
        "defaults:",
        f"  probe: {{interval_s: {interval_s}, timeout_s: 0.5, fall: 2, rise: 1, jitter: 0.1}}",
        "  cooldown: {base_s: 5, max_s: 30}",
        "backends:",
    ]
    for i, fb in enumerate(fakes):
        lines.append(f"  b{i}: {{kind: {fb.kind}, base_url: '{fb.base_url}'}}")
    if extra:
        lines.append(
            "  spare: {kind: openai, base_url: 'http://127.0.0.1:9', probe: {enabled: false}}"
        )
    lines.append("profiles:")
    lines.append("  p: {chain: [b0, b1, b2]}")
    return "\n".join(lines) + "\n"


class Load:
    """Client threads at a fixed total rate; counts answers and errors."""

    def __init__(self, d: Daemon, rate: float) -> None:
        self.d, self.rate = d, rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = 0
        self.errors: Counter[str] = Counter()
        self.latencies_ms: list[float] = []

    def run(self, worker: int) -> None:
        client = Client(self.d.socket, budget_s=BUDGET_S)
        period = WORKERS / self.rate
        next_at = time.monotonic()
        i = worker
        while not self.stop.is_set():
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
            next_at = max(next_at + period, time.monotonic() - 1.0)  # never a catch-up storm
            i += WORKERS
            t = time.perf_counter()
            problem = self._one(client, i)
            took = (time.perf_counter() - t) * 1000
            with self.lock:
                self.done += 1
                if problem:
                    self.errors[problem] += 1
                if i % 10 == 0:
                    self.latencies_ms.append(took)

    def _one(self, client: Client, i: int) -> str | None:
        kind = i % 20
        name = f"b{i % 3}"
        try:
            if kind < 8:
                status, _ = client.request("GET", f"/v1/usable?backend={name}")
                return None if status == 200 else f"usable {status}"
            if kind < 11:
                client.usable(name)  # the snapshot; never raises, never errors
                return None
            if kind < 14:
                status, _ = client.request("GET", "/v1/route?profile=p")
                return None if status in (200, 503) else f"route {status}"
            if kind < 17:
                body = {"backend": name, "outcome": "success"}
                if i % 7 == 0:
                    body = {"backend": name, "outcome": "failure", "reason": "timeout"}
                status, _ = client.request("POST", "/v1/reports", body)
                return None if status == 202 else f"report {status}"
            if kind == 17:
                status, _ = client.request("GET", "/v1/backends")
                return None if status == 200 else f"backends {status}"
            if kind == 18:
                status, _ = client.request("GET", "/v1/events?since=0")
                return None if status == 200 else f"events {status}"
            status, _ = client.request("GET", "/v1/version")
            return None if status == 200 else f"version {status}"
        except Exception as exc:  # every failure of a good request counts
            return f"{type(exc).__name__}"


class Faults:
    """One fault every `every_s`, in turn; well-formed parts count into `load`."""

    def __init__(
        self, d: Daemon, fakes: list[FakeBackend], load: Load, every_s: float, task_pool: int
    ) -> None:
        self.d, self.fakes, self.load, self.every_s = d, fakes, load, every_s
        self.task_pool = task_pool
        self.count: Counter[str] = Counter()
        self._interval = 0.5
        self._n = 0

    def run(self) -> None:
        steps = [
            self.flap,
            self.reload,
            self.garbage,
            self.credentials,
            self.bad_save,
            self.flap,
            self.tasks,
            self.sighup,
        ]
        while not self.load.stop.wait(self.every_s):
            step = steps[self._n % len(steps)]
            self._n += 1
            try:
                step()
            except Exception as exc:  # a fault that cannot be injected is told
                print(f"fault {step.__name__} failed: {exc!r}", file=sys.stderr)
            self.count[step.__name__] += 1

    def _good_config(self) -> str:
        self._interval = 0.6 if self._interval == 0.5 else 0.5
        return config(self.fakes, self._interval, extra=self._n % 4 == 0)

    def flap(self) -> None:
        fb = self.fakes[1]
        if fb._thread is not None:
            fb.stop()
        else:
            fb.start()

    def reload(self) -> None:
        text = self._good_config()
        if self._n % 2:
            tmp = self.d.config_path.with_name(".soak.yaml")
            tmp.write_text(text)
            os.replace(tmp, self.d.config_path)
        else:
            self.d.config_path.write_text(text)

    def bad_save(self) -> None:
        good = self._good_config()
        self.d.config_path.write_text("")
        time.sleep(0.5)
        with open(self.d.config_path, "r+") as f:
            f.truncate(0)
            f.flush()
            time.sleep(0.02)
            f.write(good)

    def garbage(self) -> None:
        sock = self.d.socket
        for junk in (
            b"\x00\xff" * 64 + b"\r\n\r\n",
            b"GET /v1/usable HTTP/1.1\r\n",
            b"\x16\x03\x01",
        ):
            raw_request(sock, junk, timeout_s=1)
        client = Client(sock, budget_s=BUDGET_S)
        for body in (
            {"backend": "b0", "outcome": "failure", "reason": "rate_limit", "credential": "sk-x"},
            {"backend": "b0", "outcome": "failure", "reason": "because\nCRITICAL x"},
            {"backend": "b0", "outcome": "failure", "reason": "timeout", "retry_after_s": True},
            {"backend": "b0", "outcome": "failure", "detail": "\x1b[2J" * 200},
        ):
            client.request("POST", "/v1/reports", body)
        idle = []
        try:
            for _ in range(200):
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(sock))
                idle.append(s)
            time.sleep(1.0)
        finally:
            for s in idle:
                s.close()

    def credentials(self) -> None:
        client = Client(self.d.socket, budget_s=BUDGET_S)
        base = self._n * 1000
        for k in range(500):
            fp = fingerprint(f"soak-{base + k}")
            body = {"backend": "b2", "outcome": "failure", "reason": "rate_limit", "credential": fp}
            self._count(client, "POST", "/v1/reports", body, 202)

    def tasks(self) -> None:
        client = Client(self.d.socket, budget_s=BUDGET_S)
        for k in range(300):
            path = f"/v1/tasks/soak-{(self._n * 300 + k) % self.task_pool}/failures"
            self._count(client, "POST", path, {"reason": "no_progress"}, 202)

    def sighup(self) -> None:
        assert self.d.proc is not None
        self.d.proc.send_signal(signal.SIGHUP)

    def _count(self, client: Client, method: str, path: str, body: dict, want: int) -> None:
        try:
            status, _ = client.request(method, path, body)
            problem = None if status == want else f"fault-burst {status}"
        except Exception as exc:
            problem = f"fault-burst {type(exc).__name__}"
        with self.load.lock:
            self.load.done += 1
            if problem:
                self.load.errors[problem] += 1


def sample(pid: int) -> tuple[int, int]:
    """(RSS in kB, open descriptors) of the daemon."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s in total")
    parser.add_argument("--fault-every", type=float, default=3.0, help="seconds between faults")
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument(
        "--distinct-tasks", action="store_true", help="a new task id for every task failure"
    )
    args = parser.parse_args(argv)
    # SIGTERM ends the run like Ctrl-C: the daemon and the fakes are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))

    fakes = [FakeBackend(kind=k).start() for k in ("llama-server", "openai", "ollama")]
    tmp = Path(tempfile.mkdtemp(prefix="hroute-soak-"))
    d = Daemon(tmp, config(fakes, 0.5, extra=False)).start()
    assert d.proc is not None
    load = Load(d, args.rate)
    faults = Faults(d, fakes, load, args.fault_every, 10**9 if args.distinct_tasks else 1000)
    threads = [threading.Thread(target=load.run, args=(w,), daemon=True) for w in range(WORKERS)]
    threads.append(threading.Thread(target=faults.run, daemon=True))
    samples: list[tuple[float, int, int, int]] = []  # (t, rss kB, fds, requests done)
    start = time.monotonic()
    for t in threads:
        t.start()
    try:
        while (elapsed := time.monotonic() - start) < args.duration:
            time.sleep(min(args.sample_every, max(0.0, args.duration - elapsed)))
            if d.proc.poll() is not None:
                print(f"the daemon exited with {d.proc.returncode}", file=sys.stderr)
                break
            rss, fds = sample(d.proc.pid)
            with load.lock:
                samples.append((time.monotonic() - start, rss, fds, load.done))
    finally:
        load.stop.set()
        for t in threads:
            t.join(10)
        alive = d.proc.poll() is None
        d.stop()
        for fb in fakes:
            fb.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    warm = [s for s in samples if s[0] >= 0.2 * args.duration]
    base_rss = statistics.mean(s[1] for s in warm[:3])
    end_rss = statistics.mean(s[1] for s in warm[-3:])
    growth = (end_rss - base_rss) / base_rss * 100
    fds = [s[2] for s in warm]
    base_fds = statistics.median(fds[:5])
    end_fds = statistics.median(fds[-5:])
    fd_drift = abs(end_fds - base_fds)
    wall = samples[-1][0]
    rate = samples[-1][3] / wall
    lat = sorted(load.latencies_ms)
    ok = alive and not load.errors and growth <= 5.0 and fd_drift <= 16
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "duration_s": round(wall, 1),
        "requests": samples[-1][3],
        "requests_per_s": round(rate, 1),
        "errors": dict(load.errors),
        "p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)], 2) if lat else None,
        "max_ms": round(lat[-1], 1) if lat else None,
        "faults": dict(faults.count),
        "rss_kb_after_warmup": round(base_rss),
        "rss_kb_end": round(end_rss),
        "rss_growth_pct": round(growth, 2),
        "rss_kb_max": max(s[1] for s in samples),
        "fds_after_warmup": base_fds,
        "fds_end": end_fds,
        "fds_min_max": [min(fds), max(fds)],
        "daemon_alive_at_end": alive,
        "pass": ok,
    }
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

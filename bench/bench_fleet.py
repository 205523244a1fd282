"""Benchmark: a fleet of backends. The daemon's CPU and memory while it probes them all.

Starts fake OpenAI-compatible servers on loopback (each answers `GET <prefix>/v1/models`
for any prefix, so one server stands for hundreds of backends with distinct URLs), then
`hroute run` with N `openai` backends spread over them, waits until every backend has been
probed, and measures the daemon's CPU (utime + stime) and RSS over a window, and the probes
it really made (`hroute_probes_total`). Rows: 1,000 backends every 5 s (goal ≤ 20 % of a
core, RSS ≤ 70 MiB) and 10,000 every 30 s (it must run: every backend probed on time).

Usage (from the repository root): .venv/bin/python -m bench.bench_fleet [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from tests.support.procs import free_port

from hroute.client import Client
from hroute.core.snapshot_format import SnapshotFile

HROUTE = str(Path(sys.executable).with_name("hroute"))
FAKE_SERVERS = 2

FAKE = """
import sys
from aiohttp import web

async def models(request):
    return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

app = web.Application()
app.router.add_get("/{prefix:.*}/models", models)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def usage(pid: int) -> tuple[float, float]:
    """VmRSS in MiB and utime + stime in seconds."""
    rss = Path(f"/proc/{pid}/status").read_text().split("VmRSS:", 1)[1].split()[0]
    ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]
    return int(rss) / 1024, sum(map(int, ticks)) / os.sysconf("SC_CLK_TCK")


def probes_made(client: Client) -> float:
    """The daemon's hroute_probes_total, summed over backends and results."""
    text = metrics_text(client)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hroute_probes_total{")
    )


def healthy(sock: Path) -> int:
    """How many backends the daemon's snapshot shows healthy (0 while it has none)."""
    try:
        snap = SnapshotFile(sock.with_suffix(".snapshot").read_bytes())
        return sum(snap.backend(n)["state"] == "healthy" for n in snap.names())
    except (OSError, ValueError):
        return 0


def metrics_text(client: Client) -> str:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(client.socket_path))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks).split(b"\r\n\r\n", 1)[1].decode()


def config(n: int, interval_s: float, ports: list[int], sock: Path, state: Path) -> str:
    lines = [
        f"daemon: {{socket: {sock}, state_dir: {state}, log_level: warning}}",
        f"defaults: {{probe: {{interval_s: {interval_s}, timeout_s: 5}}}}",
        "backends:",
    ]
    for i in range(n):
        port = ports[i % len(ports)]
        lines.append(
            f"  b{i}: {{kind: openai, base_url: 'http://127.0.0.1:{port}/t{i}/v1', model: fake-model}}"
        )
    lines.append("profiles: {all: {chain: [b0, b1]}}")
    return "\n".join(lines) + "\n"


def measure(n: int, interval_s: float, window_s: float, tmp: Path, ports: list[int]) -> dict:
    sock, cfg = tmp / f"fleet{n}" / "hroute.sock", tmp / f"fleet{n}.yaml"
    cfg.write_text(config(n, interval_s, ports, sock, tmp / f"state{n}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HROUTE_", "NOTIFY_"))}
    log = open(tmp / f"fleet{n}.log", "wb")  # noqa: SIM115 - closed below
    daemon = subprocess.Popen([HROUTE, "run", "--config", str(cfg)], env=env, stderr=log)
    client = Client(sock, budget_s=30.0)
    try:
        deadline = time.monotonic() + 120
        while True:
            if daemon.poll() is not None:
                raise SystemExit(f"hroute exited; see {log.name}")
            if healthy(sock) == n:  # read from the snapshot: costs the daemon nothing
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"not every backend became healthy; see {log.name}")
            time.sleep(0.5)
        time.sleep(min(interval_s, 10))  # past the first round's burst
        rss0, cpu0 = usage(daemon.pid)
        probes0, t0 = probes_made(client), time.monotonic()
        time.sleep(window_s)
        rss1, cpu1 = usage(daemon.pid)
        probes1, t1 = probes_made(client), time.monotonic()
        return {
            "n": n,
            "interval_s": interval_s,
            "cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
            "rss_mib": max(rss0, rss1),
            "probes_per_s": (probes1 - probes0) / (t1 - t0),
            "expected_per_s": n / interval_s,
            "healthy": healthy(sock),
        }
    finally:
        client.close()
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows (a smoke test)")
    args = parser.parse_args()
    runs = [(1000, 5.0, 10.0 if args.quick else 30.0), (10_000, 30.0, 30.0 if args.quick else 60.0)]
    fakes = []
    with tempfile.TemporaryDirectory(prefix="hroute-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            ports = [free_port() for _ in range(FAKE_SERVERS)]
            for port in ports:
                fakes.append(subprocess.Popen([sys.executable, "-c", FAKE, str(port)]))
            time.sleep(1.0)
            rows = [measure(n, iv, w, tmp, ports) for n, iv, w in runs]
        finally:
            for p in fakes:
                p.terminate()
                p.wait(10)
    cpu = (
        Path("/proc/cpuinfo").read_text().split("model name", 1)[1].split("\n", 1)[0].strip(": \t")
    )
    print(
        f"\nMachine: {os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python "
        f"{platform.python_version()}, {date.today().isoformat()}, load {os.getloadavg()[0]:.1f}\n"
    )
    print("| fleet | CPU, % of one core | RSS | probes/s (expected) | healthy | goal |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        if r["n"] == 1000:
            ok = r["cpu_pct"] <= 20 and r["rss_mib"] <= 70
            goal = f"≤ 20 % and ≤ 70 MiB: {'met' if ok else '**not met**'}"
        else:
            ok = r["healthy"] == r["n"] and r["probes_per_s"] >= 0.9 * r["expected_per_s"]
            goal = f"every backend probed on time: {'met' if ok else '**not met**'}"
        print(
            f"| {r['n']:,} `openai` backends every {r['interval_s']:g} s | {r['cpu_pct']:.1f} % | "
            f"{r['rss_mib']:.1f} MiB | {r['probes_per_s']:.0f} ({r['expected_per_s']:.0f}) | "
            f"{r['healthy']:,} | {goal} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of hroute's hot path, `Client.usable()`, against Redis and a raw NDJSON floor.

One run measures, as medians over interleaved rounds (the machine is noisy), one client's
p50/p99 latency and 8 client processes' total queries/s of: `usable()` on the snapshot (the
default path; by backend and by base_url), `GET /v1/usable` on the socket (one HTTP exchange,
connection: close), a Redis GET with redis-py (the anchor) and an asyncio NDJSON server with a
client that keeps its connection (the floor of any socket design); then the RSS and CPU of the
daemon at idle with 10 `openai` backends (fakes, probed every 10 s) and the time from spawning
`hroute run` to a serving socket. All in a temp dir, on loopback and Unix sockets.
Usage (or `make bench`): .venv/bin/python bench/bench_usable.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing as mp
import os
import platform
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from statistics import median as mid

import redis

from hroute.client import Client

FAKE = Path(__file__).resolve().parent.parent / "tests" / "support" / "fakebackend.py"
HROUTE = str(Path(sys.executable).with_name("hroute"))  # `hroute`, from this venv
N_BACKENDS, PROCS, BATCH, MAX_CALLS = 10, 8, 32, 50_000_000
FULL, QUICK = (5, 20_000, 3.0, 10.0, 5), (1, 2000, 1.0, 2.0, 2)  # rounds, calls, s, idle s, starts
NAME = "b3"  # the backend every client asks about
ANSWER = dict(backend=NAME, usable=True, state="healthy", reason=None, retry_after_s=None)
PATHS = {  # table label -> kind, as make_call() knows it
    "usable(backend) · snapshot": "snapshot",
    "usable(base_url) · snapshot": "snapshot_url",
    "GET /v1/usable · socket": "socket",
    "route() · socket": "route",
    "report() · socket": "report",
    "Redis GET · redis-py": "redis",
    "NDJSON floor · raw socket": "ndjson",
}
SOCKET_PATHS = ("socket", "route", "report")


def ndjson_client(path: str):
    """A blocking client that keeps one connection and exchanges one JSON line per call."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    sock.connect(path)
    line = json.dumps({"backend": NAME}).encode() + b"\n"

    def call() -> dict:
        sock.sendall(line)
        data = sock.recv(4096)
        while not data.endswith(b"\n"):
            data += sock.recv(4096)
        return json.loads(data)

    return call


def make_call(kind: str, addr: dict[str, str]):
    """A zero-argument callable doing one query of `kind`; built in the process that uses it."""
    if kind == "redis":
        return functools.partial(redis.Redis(unix_socket_path=addr["redis"]).get, "usable:" + NAME)
    if kind == "ndjson":
        return ndjson_client(addr["ndjson"])
    client = Client(addr["hroute"])  # the shipped default budget (100 ms)
    if kind == "socket":
        return functools.partial(client.request, "GET", f"/v1/usable?backend={NAME}")
    if kind == "route":
        return functools.partial(client.request, "GET", "/v1/route?profile=all")
    if kind == "report":
        body = {"backend": NAME, "outcome": "success"}
        return functools.partial(client.request, "POST", "/v1/reports", body)
    if kind == "snapshot_url":
        return functools.partial(client.usable, base_url=addr["url"])
    return functools.partial(client.usable, backend=NAME)


def check(kind: str, addr: dict[str, str]) -> None:
    """Fail loudly if a path does not answer what it should (else we would time the wrong thing)."""
    got = make_call(kind, addr)()
    if kind.startswith("snapshot"):  # served from the snapshot, not by the socket fallback
        ok = got.source == "snapshot" and got.backend == NAME and got.usable
    elif kind == "socket":
        ok = got[0] == 200 and got[1]["backend"] == NAME
    elif kind == "route":
        ok = got[0] == 200 and got[1]["backend"] == "b0"
    elif kind == "report":
        ok = got[0] == 202 and got[1]["name"] == NAME
    else:
        ok = (json.loads(got) if kind == "redis" else got) == ANSWER
    if not ok:
        raise SystemExit(f"{kind}: unexpected answer {got!r}")


def latency(call, n: int, max_s: float, warm: int = 1000) -> tuple[float, float, int]:
    """p50 and p99 in µs of `call` over up to `n` calls (and `max_s` s) after a warm-up, and
    how many failed (the socket path over its 100 ms budget: the caller waited all the same)."""
    clock, samples, errors = time.perf_counter_ns, [], 0
    deadline = time.monotonic() + max_s
    for i in range(-warm, n):
        t = clock()
        try:
            call()
        except (OSError, ValueError):
            errors += i >= 0  # failures after the warm-up
        samples.append(clock() - t)
        if i % 256 == 0 and time.monotonic() > deadline:
            break
    samples = sorted(samples[warm:] or samples)  # (all of them if the deadline hit first)
    return samples[len(samples) // 2] / 1000, samples[int(0.99 * len(samples))] / 1000, errors


def qps_worker(kind: str, addr: dict[str, str], barrier, duration: float, out) -> None:
    """One client process: warm up, wait for the others, then call for `duration` seconds."""
    call = make_call(kind, addr)
    latency(call, 0, 5.0, warm=200)
    barrier.wait(60)
    n, errors, start = 0, 0, time.monotonic()
    while n < MAX_CALLS and time.monotonic() - start < duration:
        for _ in range(BATCH):
            try:
                call()
            except (OSError, ValueError):  # over budget under load: a figure
                errors += 1
        n += BATCH
    out.put((n - errors, errors, time.monotonic() - start))


def qps(kind: str, addr: dict[str, str], duration: float) -> tuple[float, int]:
    """Total successful queries/s of PROCS client processes, and how many calls failed."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(PROCS), ctx.Queue()
    args = (kind, addr, barrier, duration, out)
    procs = [ctx.Process(target=qps_worker, args=args) for _ in range(PROCS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60 + duration) for _ in procs]
    for p in procs:
        p.join(10)
    return sum(ok / secs for ok, _, secs in results), sum(err for _, err, _ in results)


def ndjson_server(path: str) -> None:
    """The floor: asyncio answers one JSON line per JSON line on a Unix socket."""
    table = {NAME: ANSWER}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(json.dumps(table.get(json.loads(line)["backend"])).encode() + b"\n")
            await writer.drain()
        writer.close()

    async def serve() -> None:
        await (await asyncio.start_unix_server(handle, path)).serve_forever()

    asyncio.run(serve())


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.002):
    """Poll `predicate` until truthy; give up after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(interval_s)
    raise SystemExit(f"timed out after {timeout_s}s waiting for {what}")


def stop(p: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it does not go within 10 s."""
    p.terminate()  # nothing happens if it is gone already
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def start_fake(procs: list) -> int:
    """One fake OpenAI-compatible server; its port once it prints READY."""
    cmd = [sys.executable, str(FAKE), "--kind", "openai", "--port", "0", "--model", "fake-model"]
    procs.append(p := subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    if not select.select([p.stdout], [], [], 15)[0]:
        raise SystemExit("a fake backend did not start")
    return int(p.stdout.readline().split()[1])


def daemon_config(ports: list[int], sock: Path) -> str:
    """10 openai backends on the fakes, probed every 10 s, one profile over them all."""
    state = sock.parent.parent / f"state-{sock.parent.name}"  # never another run's state
    lines = [f"daemon: {{socket: {sock}, state_dir: {state}, log_level: warning}}"]
    lines += ["defaults: {probe: {interval_s: 10}}", "backends:"]
    for i, port in enumerate(ports):
        url = f"http://127.0.0.1:{port}/v1"
        lines.append(f"  b{i}: {{kind: openai, base_url: '{url}', model: fake-model}}")
    lines.append(f"profiles: {{all: {{chain: [{', '.join(f'b{i}' for i in range(len(ports)))}]}}}}")
    return "\n".join(lines) + "\n"


def spawn_daemon(config: Path, sock: Path, procs: list) -> tuple[subprocess.Popen, float]:
    """Spawn `hroute run`; return it and the seconds it took to answer on its socket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HROUTE_", "NOTIFY_"))}
    snap = sock.with_suffix(".snapshot")
    with open(config.with_suffix(".log"), "ab") as log:
        t0 = time.perf_counter()
        procs.append(
            p := subprocess.Popen([HROUTE, "run", "--config", config], env=env, stderr=log)
        )

    def serving() -> bool:
        if p.poll() is not None:
            raise SystemExit(f"hroute exited with {p.returncode}; see {log.name}")
        try:  # a new client each time: one remembers an untrusted (missing) dir for 1 s
            return Client(sock, budget_s=0.5).request("GET", "/v1/version")[0] == 200
        except (OSError, ValueError):
            return False

    wait_for(serving, 20, "the daemon's socket")
    t_serving = time.perf_counter() - t0
    wait_for(snap.exists, 5, "the snapshot")  # published right after; usable() needs it
    return p, t_serving


# The chosen packages; the daemon itself loads prometheus-client only at the first scrape.
FLOOR_IMPORTS = "anyio, aiohttp, pydantic_settings, yaml, watchfiles, sdnotify, prometheus_client"


def import_floor_mib() -> float:
    """RSS of a Python that imports the chosen packages and runs an anyio loop, nothing
    else: what any daemon built on them costs before its own code (the anchor of the RSS
    goal, measured in the same run)."""
    code = (
        f"import os, {FLOOR_IMPORTS}\n"
        "async def main():\n    await anyio.sleep(0.5)\n"
        "    print(open(f'/proc/{os.getpid()}/status').read().split('VmRSS:')[1].split()[0])\n"
        "anyio.run(main)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def usage(pid: int) -> tuple[float, float]:
    """VmRSS in MiB (/proc/PID/status) and utime + stime in seconds (/proc/PID/stat)."""
    rss = Path(f"/proc/{pid}/status").read_text().split("VmRSS:", 1)[1].split()[0]
    ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]
    return int(rss) / 1024, sum(map(int, ticks)) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    """nproc, CPU model, kernel, Python, Redis, date, and the 1-minute load average."""
    cpu = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln)
    rv = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return (
        f"{os.cpu_count()} cores ({cpu.split(':', 1)[1].strip()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, Redis {rv.split('v=')[1].split()[0]}, "
        f"redis-py {redis.__version__}, {date.today().isoformat()}, load {os.getloadavg()[0]:.1f}"
    )


def print_tables(
    head: str, med: dict, errors: dict, daemon_rows: list[tuple[str, str, str]]
) -> None:
    """The Markdown tables: the paths with their ratios to Redis, then the daemon's figures."""
    r50, _, rq = med["redis"]
    print(f"\n{head}\n")
    print("| path | p50 µs | p99 µs | p50 ÷ Redis | q/s, 8 procs | q/s ÷ Redis | goals: ", end="")
    print("p50 ≤ Redis · p99 ≤ 1 ms · q/s ≥ Redis |\n|---|---:|---:|---:|---:|---:|---|")
    for label, kind in PATHS.items():
        p50, p99, q = med[kind]
        met = (p50 <= r50, p99 <= 1000, q >= rq)
        goals = " · ".join("met" if ok else "**not met**" for ok in met)
        goals = goals if kind.startswith("snapshot") or kind in SOCKET_PATHS else "anchor"
        goals += f" ({errors[kind]} failed calls)" if errors[kind] else ""
        print(f"| {label} | {p50:.1f} | {p99:.1f} | {p50 / r50:.2f} | ", end="")
        print(f"{q:,.0f} | {q / rq:.2f} | {goals} |")
    print(f"\n| daemon, {N_BACKENDS} `openai` backends, probe interval 10 s | value | goal |")
    print("|---|---:|---|")
    for name, value, target in daemon_rows:
        print(f"| {name} | {value} | {target} |")


def run(quick: bool, tmp: Path, procs: list) -> None:
    """Start everything, measure, print the Markdown tables."""
    rounds, n_calls, duration, idle_s, starts = QUICK if quick else FULL
    note = functools.partial(print, file=sys.stderr, flush=True)
    info = machine()  # before we load the machine ourselves
    ports = [start_fake(procs) for _ in range(N_BACKENDS)]
    sock, config = tmp / "run" / "hroute.sock", tmp / "hroute.yaml"
    config.write_text(daemon_config(ports, sock))
    daemon, _ = spawn_daemon(config, sock, procs)

    def all_healthy() -> bool:
        views = Client(sock, budget_s=1.0).request("GET", "/v1/backends")[1]["backends"]
        return {b["state"] for b in views} == {"healthy"}

    wait_for(all_healthy, 15, "every backend to be healthy", 0.05)
    note("daemon up, every backend healthy; measuring it at idle, then the paths")
    time.sleep(1.0 if quick else 3.0)
    (rss_idle, cpu0), t0 = usage(daemon.pid), time.monotonic()
    time.sleep(idle_s)
    cpu_idle = 100 * (usage(daemon.pid)[1] - cpu0) / (time.monotonic() - t0)
    addr = {"hroute": str(sock), "url": f"http://localhost:{ports[3]}/v1/"}
    addr |= {"redis": str(tmp / "redis.sock"), "ndjson": str(tmp / "ndjson.sock")}
    opts = ["--port", "0", "--unixsocket", addr["redis"], "--unixsocketperm", "700"]
    opts += ["--save", "", "--appendonly", "no", "--dir", str(tmp), "--logfile", "redis.log"]
    procs.append(redis_proc := subprocess.Popen(["redis-server", *opts]))
    procs.append(subprocess.Popen([sys.executable, __file__, "--ndjson-server", addr["ndjson"]]))
    wait_for(lambda: all(os.path.exists(addr[k]) for k in ("redis", "ndjson")), 10, "anchors")
    redis.Redis(unix_socket_path=addr["redis"]).set("usable:" + NAME, json.dumps(ANSWER))
    for kind in PATHS.values():
        check(kind, addr)
    lat, thr = {k: [] for k in PATHS.values()}, {k: [] for k in PATHS.values()}
    errors = dict.fromkeys(PATHS.values(), 0)
    for r in range(rounds):  # interleaved, so that every path sees the same noise
        for kind in PATHS.values():
            *figures, err = latency(make_call(kind, addr), n_calls, 15.0)
            lat[kind].append(figures)
            errors[kind] += err
        for kind in PATHS.values():
            q, err = qps(kind, addr, duration)
            thr[kind].append(q)
            errors[kind] += err
        done = (f"{k} {lat[k][-1][0]:.1f}/{lat[k][-1][1]:.1f}µs {thr[k][-1]:,.0f}q/s" for k in thr)
        note(f"round {r + 1}/{rounds}: " + ", ".join(done))
    check("snapshot", addr)  # still served by the snapshot after all that
    rss_load, redis_rss = usage(daemon.pid)[0], usage(redis_proc.pid)[0]
    stop(daemon)
    socks = []  # a fresh daemon each time, on its own socket, same backends
    for i in range(starts):
        s, cfg = tmp / f"start{i}" / "hroute.sock", tmp / f"start{i}.yaml"
        cfg.write_text(daemon_config(ports, s))
        p, t_serving = spawn_daemon(cfg, s, procs)
        socks.append(t_serving * 1000)
        stop(p)
    med = {k: (mid(x[0] for x in lat[k]), mid(x[1] for x in lat[k]), mid(thr[k])) for k in lat}
    spread = f"{mid(socks):.0f} ms ({min(socks):.0f}–{max(socks):.0f})"

    def goal(ok: bool) -> str:
        return "met" if ok else "**not met**"

    floor = min(import_floor_mib() for _ in range(3))
    daemon_rows = [
        (
            "RSS at idle (VmRSS)",
            f"{rss_idle:.1f} MiB",
            f"≤ import floor + 5 = {floor + 5:.1f} MiB: {goal(rss_idle <= floor + 5)}",
        ),
        (f"import floor ({FLOOR_IMPORTS}, a loop)", f"{floor:.1f} MiB", "anchor"),
        (
            f"CPU at idle, over {idle_s:g} s",
            f"{cpu_idle:.2f} % of one core",
            f"≤ 0.2 %: {goal(cpu_idle <= 0.2)}",
        ),
        ("RSS after the benchmark load", f"{rss_load:.1f} MiB", ""),
        (
            f"start → socket serving, median of {starts} (min–max)",
            spread,
            f"≤ 300 ms: {goal(mid(socks) <= 300)}",
        ),
        ("Redis RSS, for scale", f"{redis_rss:.1f} MiB", "anchor"),
    ]
    head = f"Machine: {info}. Medians of {rounds} round(s); latency: one client, up to "
    head += f"{n_calls:,} calls; q/s: {PROCS} client processes for {duration:g} s."
    print_tables(head, med, errors, daemon_rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke test)")
    parser.add_argument("--ndjson-server", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ndjson_server:  # the floor runs in its own process: this script, re-run
        ndjson_server(args.ndjson_server)
        return 0
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server not found: apt-get install -y redis-server")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="hroute-bench-") as tmp:
        try:
            run(args.quick, Path(tmp), procs)
        finally:
            for p in reversed(procs):
                stop(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`hroute run` supervising a real server process (tests/support/fake_llama.py) as users run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.procs import dead, free_port

pytestmark = pytest.mark.system

FAKE = str(Path(__file__).resolve().parents[1] / "support" / "fake_llama.py")
FAST_PROBE = {"interval_s": 0.1, "timeout_s": 0.5, "fall": 1, "rise": 1, "jitter": 0}


def fake(port: int, *args: str) -> list[str]:
    return [sys.executable, FAKE, "--port", str(port), *args]


def first_run_then(port: int, tmp: Path, first: list[str], later: list[str] = ()) -> list[str]:
    """A command that runs the fake with `first` switches once, then with `later` ones.

    hroute still gets an argv list; the shell only tells the first run from the others.
    """
    marker = tmp / "first-run-done"
    script = (
        f'if [ -e "{marker}" ]; then exec "$@" {" ".join(later)}; '
        f'else touch "{marker}"; exec "$@" {" ".join(first)}; fi'
    )
    return ["/bin/sh", "-c", script, "sh", *fake(port)]


def config(
    port: int, command: list[str] | None, probe: dict[str, Any] | None = None, **supervise: Any
) -> str:
    block = {"command": command, "stop_timeout_s": 2} if command else {}
    block.update(supervise)
    return "\n".join(
        [
            "backends:",
            "  loc:",
            "    kind: llama-server",
            f"    base_url: 'http://127.0.0.1:{port}'",
            f"    probe: {json.dumps(probe or FAST_PROBE)}",
            f"    supervise: {json.dumps(block)}",
            "  spare: {kind: openai, base_url: 'http://127.0.0.1:9', probe: {enabled: false}}",
            "profiles:",
            "  coding: {chain: [loc, spare]}",
            "",
        ]
    )


def process(d: Daemon) -> dict[str, Any]:
    return d.backend("loc")["process"]


def wait_process(d: Daemon, timeout_s: float = 10, **want: Any) -> dict[str, Any]:
    def matches() -> dict[str, Any] | None:
        p = process(d)
        return p if all(p.get(k) == v for k, v in want.items()) else None

    return wait_until(matches, timeout_s, what=f"process {want}")


def events(d: Daemon, event: str | None = None) -> list[dict[str, Any]]:
    status, body = d.get("/v1/events")
    assert status == 200
    return [e for e in body["events"] if event is None or e["event"] == event]


def hroute(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hroute.cli", "--socket", str(d.socket), *args],
        capture_output=True,
        text=True,
        timeout=15,
        env=d.env,
    )


def test_server_is_started_watched_until_ready_and_its_output_tagged(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(port, fake(port, "--ready-after-ms", "500", "--print-lines", "2"))
    with Daemon(tmp_path, cfg) as d:
        p = wait_process(d, state="running")
        assert p["pid"] and os.getsid(p["pid"]) == p["pid"]  # its own session and group
        assert p["restarts"] == 0 and p["last_exit"] is None and p["mode"] == "child"
        b = d.wait_state("loc", "healthy")
        assert b["usable"] is True
        # /health said 503 "Loading model" first: the backend was starting, never usable early.
        assert any(e.get("new") == "starting" for e in events(d, "starting"))
        d.wait_for_log(f"loc: started pid {p['pid']}")
        d.wait_for_log(f"loc: pid {p['pid']} ready after")
        d.wait_for_log("hroute.child: [loc] fake_llama stdout line 1")
        d.wait_for_log("hroute.child: [loc] fake_llama stderr line 1")
        d.wait_for_log("hroute.child: [loc] main: model loaded")

        status = hroute(d, "status")
        assert status.returncode == 0
        assert any(
            line.split()[:3] == ["loc", "llama-server", "healthy"] and "(running)" in line
            for line in status.stdout.splitlines()
        ), status.stdout
        metrics = d.get_text("/metrics")
        assert 'hroute_process_state{backend="loc",state="running"} 1.0' in metrics
        assert 'hroute_process_restarts_total{backend="loc"} 0.0' in metrics

        status, body = d.client().request("POST", "/v1/backends/spare/restart")
        assert status == 409 and body["error"]["code"] == "not_supervised"
        refused = hroute(d, "restart", "spare")
        assert refused.returncode == 1 and "not supervised" in refused.stderr


def test_a_server_binding_late_is_starting_not_down_and_ready_at_the_next_poll(
    tmp_path: Path,
) -> None:
    port = free_port()
    command = fake(port, "--bind-after-ms", "2000", "--log-health")
    # Probes every 30 s: only the supervisor's own readiness poll can see it ready in time.
    with Daemon(tmp_path, config(port, command, probe={**FAST_PROBE, "interval_s": 30})) as d:
        p = wait_process(d, state="running")
        d.wait_for_log(f"loc: pid {p['pid']} ready after")
        # Refused for 2 s while binding: starting all along, never a false alarm.
        order = [
            e["event"]
            for e in events(d)
            if e.get("backend") == "loc" and e["event"] not in ("fallback", "route")
        ]
        assert order[:2] == ["starting", "process_started"], order
        assert sorted(order[2:]) == ["backend_up", "process_ready"], order
        assert "-> unhealthy" not in d.log and "connection refused" not in d.log, d.log
        # The first poll after the port was bound found it ready: usable one poll later.
        d.wait_for_log("fake_llama: GET /health #1 -> 200")
        assert "GET /health #2" not in d.log
        assert d.backend("loc")["usable"] is True


def test_crash_is_seen_at_once_logged_with_its_code_and_restarted(tmp_path: Path) -> None:
    port = free_port()
    command = first_run_then(port, tmp_path, ["--exit-after-s", "2", "--exit-code", "3"])
    # Probes every 30 s: only the process exit itself can take the backend down in time.
    slow = {**FAST_PROBE, "interval_s": 30}
    with Daemon(tmp_path, config(port, command, probe=slow)) as d:
        first = wait_process(d, state="running")["pid"]
        line = d.wait_for_log("exited with code 3 after 2.")  # 2.0s, 2.1s ...
        line = d.wait_for_log("restarting in")
        assert f"loc: pid {first} exited with code 3 after" in line
        assert line.endswith("restarting in 0s") and line.startswith("WARNING")
        [down] = [e for e in events(d, "backend_down") if e.get("reason") == "exited"]
        assert down["new"] == "unhealthy" and "exited with code 3" in down["detail"]
        p = wait_process(d, state="running", restarts=1)
        assert p["pid"] != first and p["last_restart_reason"] == "exited"
        assert p["last_exit"]["code"] == 3 and p["last_exit"]["signal"] is None
        assert events(d, "process_started")[-1]["id"] > down["id"]
        assert d.wait_state("loc", "healthy")["usable"] is True
        assert d.client().route("coding")["backend"] == "loc"


def test_route_falls_through_while_the_server_is_down(tmp_path: Path) -> None:
    port = free_port()
    command = first_run_then(port, tmp_path, ["--exit-after-s", "1"], ["--ready-after-ms", "1200"])
    with Daemon(tmp_path, config(port, command, probe={**FAST_PROBE, "interval_s": 30})) as d:
        d.wait_for_log("exited with code 0")
        # Restarted, but loading for 1.5 s: the chain's next backend serves meanwhile.
        assert d.client().route("coding")["backend"] == "spare"
        assert d.backend("loc")["usable"] is False
        wait_process(d, state="running", restarts=1)
        wait_until(lambda: d.client().route("coding")["backend"] == "loc", 10, what="loc again")


def test_crash_loop_backs_off_goes_fatal_and_hroute_restart_recovers(tmp_path: Path) -> None:
    port = free_port()
    crashes_until_fixed = 'if [ -e ok ]; then exec "$@"; else exec "$@" --crash-on-start 7; fi'
    cfg = config(
        port,
        ["/bin/sh", "-c", crashes_until_fixed, "sh", *fake(port)],
        restart={"backoff_initial_s": 0.2, "multiplier": 2, "backoff_max_s": 5},
        start_limit={"burst": 4, "interval_s": 60},
        cwd=str(tmp_path),
    )
    with Daemon(tmp_path, cfg) as d:
        line = d.wait_for_log("ERROR hroute: loc: pid", timeout_s=15)
        assert "exited with code 7" in line and "giving up after" in line
        assert "4 starts within 60s (start_limit: burst 4, interval_s 60)" in line
        assert "then run: hroute restart loc" in line
        restarts = events(d, "restart")
        assert [(e["reason"], e["detail"].rsplit("; ", 1)[1]) for e in restarts] == [
            ("exited", "restarting in 0s"),
            ("exited", "restarting in 0.2s"),
            ("exited", "restarting in 0.4s"),
        ]
        [fatal] = events(d, "fatal")
        assert fatal["reason"] == "exited" and "exited with code 7" in fatal["detail"]
        starts = [e["ts"] for e in events(d, "process_started")]
        assert len(starts) == 4 and starts[3] - starts[2] >= 0.35  # it really waited
        b = d.backend("loc")
        assert b["usable"] is False and b["reason"] == "fatal"
        assert b["process"]["state"] == "fatal" and b["process"]["pid"] is None
        assert d.client().route("coding")["backend"] == "spare"

        (tmp_path / "ok").touch()  # the operator fixes the cause ...
        done = hroute(d, "restart", "loc")  # ... and says so
        assert done.returncode == 0 and "loc: restart requested" in done.stdout
        p = wait_process(d, state="running")
        assert p["last_restart_reason"] == "manual" and p["restarts"] == 4
        assert d.wait_state("loc", "healthy")["usable"] is True


def test_hang_is_detected_killed_and_restarted_with_reason_hang(tmp_path: Path) -> None:
    port = free_port()
    command = first_run_then(port, tmp_path, ["--hang-after-s", "1"])
    probe = {**FAST_PROBE, "timeout_s": 0.3}
    with Daemon(tmp_path, config(port, command, probe=probe, hang_restart_after=2)) as d:
        hung = wait_process(d, state="running")["pid"]
        line = d.wait_for_log("got no answer (GET /health: no answer within 0.3s); restarting")
        assert f"loc: pid {hung} is alive but 2 probes in a row got no answer" in line
        assert line.startswith("WARNING") and line.endswith("restarting in 0s")
        p = wait_process(d, state="running", restarts=1)
        assert p["last_restart_reason"] == "hang" and p["pid"] != hung
        assert p["last_exit"]["code"] == 0  # it took SIGTERM
        assert dead(hung)
        assert d.wait_state("loc", "healthy")["usable"] is True


def test_server_that_ignores_sigterm_is_killed_after_stop_timeout(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(port, fake(port, "--ignore-sigterm"), stop_timeout_s=0.5)
    with Daemon(tmp_path, cfg) as d:
        stubborn = wait_process(d, state="running")["pid"]
        status, _ = d.client().request("POST", "/v1/backends/loc/restart")
        assert status == 202
        line = d.wait_for_log(f"loc: pid {stubborn} killed")
        assert "no exit within stop_timeout_s 0.5s of SIGTERM" in line and line.startswith("WARN")
        d.wait_for_log("[loc] fake_llama: ignoring SIGTERM")
        p = wait_process(d, state="running", restarts=1)
        assert p["last_exit"]["signal"] == "SIGKILL" and p["last_restart_reason"] == "manual"
        assert dead(stubborn)


def test_sigterm_to_hroute_stops_the_server_gracefully(tmp_path: Path) -> None:
    port = free_port()
    d = Daemon(tmp_path, config(port, fake(port))).start()
    try:
        pid = wait_process(d, state="running")["pid"]
    finally:
        assert d.stop() == 0
    assert dead(pid)
    assert f"loc: pid {pid} stopped (hroute is stopping)" in d.log


def test_sigkill_to_hroute_takes_the_server_with_it(tmp_path: Path) -> None:
    port = free_port()
    d = Daemon(tmp_path, config(port, fake(port))).start()
    try:
        pid = wait_process(d, state="running")["pid"]
    finally:
        d.stop(signal.SIGKILL)
    wait_until(lambda: dead(pid), 5, what=f"server pid {pid} to die with hroute")


def test_port_already_taken_is_reported_plainly(tmp_path: Path) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    cfg = config(port, fake(port), restart={"backoff_initial_s": 0.2, "backoff_max_s": 0.2})
    try:
        with Daemon(tmp_path, cfg) as d:
            line = d.wait_for_log("already in use")
            assert f"port {port} on 127.0.0.1 is already in use by another process" in line
            assert f"ss -ltnp 'sport = :{port}'" in line
            b = wait_until(
                lambda: (b := d.backend("loc"))["process"]["state"] == "backoff" and b,
                5,
                what="backoff",
            )
            assert b["usable"] is False and b["reason"] == "port_in_use"
            assert "already in use" in b["process"]["detail"] and b["process"]["pid"] is None
            assert "fake_llama" not in d.log  # nothing was spawned
            squatter.close()
            wait_process(d, state="running")
            assert d.wait_state("loc", "healthy")["usable"] is True
    finally:
        squatter.close()


def test_startup_timeout_is_a_failed_start(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(
        port,
        fake(port, "--ready-after-ms", "60000"),
        startup_timeout_s=0.7,
        start_limit={"burst": 2, "interval_s": 60},
    )
    with Daemon(tmp_path, cfg) as d:
        line = d.wait_for_log("not ready within startup_timeout_s 0.7s; restarting in 0s")
        assert line.startswith("WARNING hroute: loc: pid")
        p = wait_process(d, state="fatal")
        assert p["restarts"] == 1 and p["last_restart_reason"] == "startup_timeout"
        assert d.backend("loc")["reason"] == "fatal"


def test_systemd_mode_reads_the_unit_and_restarts_it_on_a_hang(tmp_path: Path) -> None:
    """Against a stand-in `systemctl` on PATH (a real systemd is tested elsewhere)."""
    port = free_port()
    bin_dir, state, calls = tmp_path / "bin", tmp_path / "unit-state", tmp_path / "calls"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"if sys.argv[1] == 'show': print(open({str(state)!r}).read())\n"
    )
    systemctl.chmod(0o755)
    servers: list[subprocess.Popen[bytes]] = []

    def start_server(*args: str) -> int:
        servers.append(subprocess.Popen(fake(port, *args), stderr=subprocess.DEVNULL))
        state.write_text(f"ActiveState=active\nSubState=running\nMainPID={servers[-1].pid}\n")
        return servers[-1].pid

    cfg = config(
        port,
        None,
        probe={**FAST_PROBE, "timeout_s": 0.3},
        mode="systemd",
        unit="llama-server.service",
        hang_restart_after=2,
    )
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    try:
        hung = start_server("--hang-after-s", "1.5")
        with Daemon(tmp_path, cfg, env=env) as d:
            p = wait_process(d, state="running", pid=hung)
            assert p["mode"] == "systemd" and p["unit"] == "llama-server.service"
            line = d.wait_for_log("systemctl restart llama-server.service")
            assert f"pid {hung} is alive but 2 probes in a row got no answer" in line
            wait_until(lambda: "restart --no-block llama-server.service" in calls.read_text(), 5)
            b = d.backend("loc")
            assert b["usable"] is False and b["reason"] == "hang"
            assert b["process"]["last_restart_reason"] == "hang"

            servers[0].kill()  # what systemd would do; the exit is noticed at once
            d.wait_for_log(f"main pid {hung} exited; the unit's Restart= decides")
            fresh = start_server()
            wait_process(d, state="running", pid=fresh)
            assert d.wait_state("loc", "healthy")["usable"] is True

            assert hroute(d, "restart", "loc").returncode == 0
            wait_until(lambda: "reset-failed llama-server.service" in calls.read_text(), 5)
    finally:
        for server in servers:
            server.kill()
            server.wait(5)


def test_reload_restarts_a_changed_server_and_stops_a_removed_one(tmp_path: Path) -> None:
    port = free_port()
    with Daemon(tmp_path, config(port, fake(port))) as d:
        old = wait_process(d, state="running")["pid"]
        d.config_path.write_text(config(port, fake(port, "--print-lines", "1")))
        assert hroute(d, "reload").returncode == 0
        new = wait_process(d, state="running", restarts=0)
        assert new["pid"] != old and dead(old)
        d.wait_for_log("[loc] fake_llama stdout line 0")

        lines = config(port, fake(port)).splitlines(keepends=True)
        d.config_path.write_text("".join(x for x in lines if "supervise:" not in x))
        assert hroute(d, "reload").returncode == 0
        wait_until(lambda: "process" not in d.backend("loc"), 10, what="supervision to end")
        wait_until(lambda: dead(new["pid"]), 10, what="the server to stop")


DAEMONIZING = """
import os, sys
pidfile = sys.argv[1]
if os.fork() == 0:  # double fork: the sleeper leaves the server's session and its tree
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "300"])
    os._exit(0)
os.wait()
# The grandchild may not have become `sleep` yet: look until it has (os.wait saw only its parent).
sleepers = []
while not sleepers:
    sleepers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_sleeper(p)]
with open(pidfile + ".tmp", "w") as f:
    f.write(str(max(sleepers)))
os.replace(pidfile + ".tmp", pidfile)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""
SLEEPER_OF = """
def _is_sleeper(p):
    try:
        argv = open(f"/proc/{p}/cmdline", "rb").read().split(b"\\0")
        env = open(f"/proc/{p}/environ", "rb").read()
    except OSError:
        return False
    return argv[:2] == [b"sleep", b"300"] and MARK in env
MARK = os.environ["ORPHAN_MARK"].encode()
"""


def test_a_server_that_daemonizes_leaves_no_orphan(tmp_path: Path) -> None:
    # A supervised server that double-forks a helper into its own session: a process group
    # kill misses it, and before hroute adopted orphans it outlived every stop.
    port, pidfile = free_port(), tmp_path / "sleeper.pid"
    mark = f"orphan-{os.getpid()}-{port}"
    script = "import os\n" + SLEEPER_OF + DAEMONIZING
    command = [sys.executable, "-c", script, str(pidfile), FAKE, "--port", str(port)]
    with Daemon(tmp_path, config(port, command), env={"ORPHAN_MARK": mark}) as d:
        wait_process(d, state="running")
        first = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), 10))
        assert not dead(first)
        # A restart stops the old server: its helper goes with it (it could hold a port).
        pidfile.unlink()
        assert d.client().request("POST", "/v1/backends/loc/restart")[0] == 202
        second = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), 15))
        wait_until(lambda: dead(first), 10, what=f"the first server's orphan {first} to end")
        assert not dead(second)
    wait_until(lambda: dead(second), 10, what=f"the orphan {second} to end with hroute")

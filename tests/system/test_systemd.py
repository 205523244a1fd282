"""hroute under a real systemd 252, as users meet it: `dpkg -i`, `systemctl enable --now`,
`journalctl -u hroute`.

systemd is booted as PID 1 in private namespaces over an overlay of / (tests/support/
systemd_root.py); the .deb that `make deb` builds is installed into it. The tests run in
order against one booted root and one installed package; the last one purges it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hroute.systemd.journal import MESSAGE_IDS
from tests.support.daemon import wait_until as _wait_until
from tests.support.systemd_root import SystemdRoot, root_skip_reason

REPO = Path(__file__).resolve().parents[2]
SOCKET = "/run/hroute/hroute.sock"
WATCHDOG_S = 4


def _cannot_run() -> str | None:
    if not (shutil.which("curl") and shutil.which("dpkg-deb")):
        return "needs curl and dpkg-deb"
    return root_skip_reason()


CANNOT_RUN = _cannot_run()
REQUIRED = os.environ.get("HROUTE_REQUIRE_SYSTEMD") == "1"  # .ci/run: a skip is a failure

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.timeout(600),  # the first test also builds the .deb when it is not cached
    pytest.mark.skipif(CANNOT_RUN is not None and not REQUIRED, reason=CANNOT_RUN or ""),
]

# Nothing listens on 127.0.0.1:9 in the root's own network namespace: every probe is
# refused, so the backend goes down at once (a backend_down event for the journal test).
CONFIG = """\
daemon:
  log_level: info
backends:
  dead-local:
    kind: llama-server
    base_url: "http://127.0.0.1:9"
    probe: {interval_s: 1, timeout_s: 0.5, fall: 1}
profiles:
  coding: {chain: [dead-local]}
"""

# Test-only: the SIGUSR2 hook that blocks the event loop, and a short watchdog to catch it.
DROP_IN = f"""\
[Service]
Environment=HROUTE_TEST_HOOKS=1 HROUTE_TEST_BLOCK_S=120
WatchdogSec={WATCHDOG_S}s
LimitCORE=0
"""


def wait_until(predicate, timeout_s: float, what: str):
    return _wait_until(predicate, timeout_s, interval_s=0.1, what=what)


def _source_digest() -> str:
    digest = hashlib.sha256()
    roots = ["pyproject.toml", "README.md", "src/hroute", "systemd", "packaging", "etc/hroute"]
    for root in roots:
        path = REPO / root
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                digest.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


# Wheels the .deb's Python (Debian 12's 3.11.2) needs and this venv's newer one does not:
# redis wants async-timeout below 3.11.3, so pip here would not fetch it.
TARGET_ONLY = b"async-timeout>=4.0.3"


def _wheelhouse(cache: Path) -> Path:
    """hroute's dependencies as wheels, fetched once per pyproject.toml: then the .deb builds
    offline in seconds instead of asking PyPI for every package each time."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + TARGET_ONLY).hexdigest()[:16]
    wheels = cache / "wheels" / key
    if not (wheels / ".complete").exists():
        shutil.rmtree(cache / "wheels", ignore_errors=True)
        wheels.mkdir(parents=True)
        run_bounded(
            [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), f"{REPO}[cluster]",
             "setuptools>=68", "wheel", *TARGET_ONLY.decode().split()],
            "pip wheel",
        )  # fmt: skip
        (wheels / ".complete").touch()
    return wheels


def built_deb() -> Path:
    """The .deb of this checkout: $HROUTE_DEB, else `packaging/deb.sh` (what `make deb` runs)
    once per source digest into $HROUTE_CACHE/deb/."""
    if os.environ.get("HROUTE_DEB"):
        return Path(os.environ["HROUTE_DEB"])
    cache = Path(os.environ.get("HROUTE_CACHE") or Path.home() / ".cache/hroute")
    out = cache / "deb" / _source_digest()
    debs = sorted(out.glob("hroute_*.deb"))
    if debs:
        return debs[0]
    wheels = _wheelhouse(cache)
    shutil.rmtree(cache / "deb", ignore_errors=True)  # builds of older sources
    out.mkdir(parents=True)
    stdout = run_bounded(
        ["packaging/deb.sh"],
        "make deb",
        env={"OUT": str(out), "PIP_ARGS": f"--no-index --find-links {wheels}"},
    )
    return Path(stdout.strip().splitlines()[-1])


def run_bounded(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, f"{what} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    if CANNOT_RUN:
        pytest.fail(f"HROUTE_REQUIRE_SYSTEMD=1 but: {CANNOT_RUN}", pytrace=False)
    deb = built_deb()
    base = tmp_path_factory.mktemp("systemd") / "root"
    with SystemdRoot(base) as booted:
        booted.boot()
        booted.run("dpkg", "-i", str(deb), timeout_s=180)
        booted.path("/etc/hroute/hroute.yaml").write_text(CONFIG)
        drop_in = booted.path("/etc/systemd/system/hroute.service.d/test.conf")
        drop_in.parent.mkdir(parents=True)
        drop_in.write_text(DROP_IN)
        booted.run("systemctl", "daemon-reload")
        yield booted


def curl(root: SystemdRoot, path: str, timeout_s: float = 10) -> dict:
    result = root.run(
        "curl", "-sS", "--fail", "--max-time", str(timeout_s), "--unix-socket", SOCKET,
        f"http://hroute{path}", timeout_s=timeout_s + 5,
    )  # fmt: skip
    return json.loads(result.stdout)


def main_pid(root: SystemdRoot) -> int:
    return int(root.show("hroute.service", "MainPID"))


def journal(root: SystemdRoot, *matches: str) -> list[dict]:
    out = root.run("journalctl", "-u", "hroute", "-o", "json", "--no-pager", *matches).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_package_installs_the_user_and_enables_nothing(root):
    root.run("systemd-analyze", "verify", "hroute.service", "hroute.socket")
    assert root.run("getent", "passwd", "hroute").stdout.startswith("hroute:")
    assert root.run("getent", "group", "hroute").stdout.startswith("hroute:")
    for unit in ("hroute.service", "hroute.socket"):
        state = root.run("systemctl", "is-enabled", unit, check=False).stdout.strip()
        assert state == "disabled", unit
    assert root.run("systemctl", "is-active", "hroute.service", check=False).stdout.strip() in (
        "inactive",
        "failed",
    )


def test_enable_now_serves_on_the_socket(root):
    root.run("systemctl", "enable", "--now", "hroute.socket", "hroute.service", timeout_s=60)
    for unit in ("hroute.socket", "hroute.service"):
        assert root.run("systemctl", "is-active", unit).stdout.strip() == "active"
    assert "version" in curl(root, "/v1/version")
    assert curl(root, "/v1/backends/dead-local")["name"] == "dead-local"
    assert "dead-local" in root.run("hroute", "status").stdout  # the packaged CLI
    # The socket systemd made: group hroute, 0660; the daemon runs as hroute, not root.
    st = root.path(SOCKET).stat()
    assert oct(st.st_mode & 0o777) == "0o660"
    assert root.run("stat", "-c", "%G", SOCKET).stdout.strip() == "hroute"
    uid = root.run("id", "-u", "hroute").stdout.strip()
    status = root.path(f"/proc/{main_pid(root)}/status").read_text()
    assert f"Uid:\t{uid}\t" in status
    # The snapshot is published beside the socket, in the RuntimeDirectory.
    wait_until(lambda: root.path("/run/hroute/hroute.snapshot").exists(), 10, "the snapshot")


def test_systemctl_status_shows_the_summary(root):
    wanted = "1 backend: 0 usable; dead-local down (connection)"
    wait_until(lambda: root.show("hroute.service", "StatusText") == wanted, 15, "STATUS=")
    status = root.run("systemctl", "status", "--no-pager", "hroute.service", check=False).stdout
    assert f'Status: "{wanted}"' in status


def test_backend_down_is_in_the_journal_with_its_fields(root):
    entries = wait_until(
        lambda: journal(root, "HROUTE_EVENT=backend_down"), 15, "a backend_down entry"
    )
    entry = entries[0]
    assert entry["HROUTE_BACKEND"] == "dead-local"
    assert entry["HROUTE_REASON"] == "connection"
    assert entry["MESSAGE_ID"] == MESSAGE_IDS["backend_down"]
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "hroute"
    assert entry["_SYSTEMD_UNIT"] == "hroute.service"
    assert "dead-local" in entry["MESSAGE"]
    # journalctl -x explains it from the catalog the package installed.
    explained = root.run(
        "journalctl", "-u", "hroute", "-x", "--no-pager", f"MESSAGE_ID={entry['MESSAGE_ID']}"
    ).stdout
    assert "hroute's probes of backend dead-local failed" in explained


def test_reload_keeps_the_daemon_and_its_pid(root):
    pid = main_pid(root)
    root.run("systemctl", "reload", "hroute.service", timeout_s=30)
    wait_until(
        lambda: root.show("hroute.service", "ActiveState") == "active", 15, "active after reload"
    )
    assert main_pid(root) == pid
    assert "version" in curl(root, "/v1/version")
    entries = wait_until(
        lambda: journal(root, "HROUTE_EVENT=config_reloaded"), 15, "a config_reloaded entry"
    )
    assert entries[-1]["MESSAGE_ID"] == MESSAGE_IDS["config_reloaded"]


def test_kill_9_restarts_and_a_client_waiting_meanwhile_is_served(root):
    pid = main_pid(root)
    restarts = int(root.show("hroute.service", "NRestarts"))
    # Kill and connect at once: the connection waits in the socket's backlog, which systemd
    # keeps open, until the restarted daemon accepts it.
    result = root.run(
        "sh", "-c",
        f"kill -9 {pid} && curl -sS --fail --max-time 20 --unix-socket {SOCKET} "
        "http://hroute/v1/version",
        timeout_s=30,
    )  # fmt: skip
    assert "version" in json.loads(result.stdout)
    wait_until(lambda: main_pid(root) not in (0, pid), 15, "a new main PID")
    assert int(root.show("hroute.service", "NRestarts")) == restarts + 1
    assert root.show("hroute.service", "ActiveState") == "active"


def test_watchdog_restarts_a_wedged_event_loop(root):
    wait_until(lambda: root.show("hroute.service", "SubState") == "running", 15, "running")
    pid = main_pid(root)
    restarts = int(root.show("hroute.service", "NRestarts"))
    root.run("kill", "-USR2", str(pid))
    wait_until(lambda: main_pid(root) not in (0, pid), WATCHDOG_S + 15, "the watchdog restart")
    assert int(root.show("hroute.service", "NRestarts")) == restarts + 1
    log = root.run("journalctl", "-u", "hroute", "--no-pager", "-o", "cat").stdout
    assert "Watchdog timeout" in log
    wait_until(lambda: root.show("hroute.service", "ActiveState") == "active", 15, "active")
    assert "version" in curl(root, "/v1/version")


def test_stopped_service_is_started_by_a_client(root):
    root.run("systemctl", "stop", "hroute.service", timeout_s=30)
    assert root.show("hroute.service", "ActiveState") == "inactive"
    assert root.show("hroute.socket", "ActiveState") == "active"
    assert "version" in curl(root, "/v1/version", timeout_s=20)  # socket activation
    # The daemon may answer on the inherited socket a moment before it sends READY=1.
    wait_until(lambda: root.show("hroute.service", "ActiveState") == "active", 15, "active")


# mode: systemd against the shipped example unit and polkit rule (systemd/llama-server.service),
# with the stand-in server tests/support/fake_llama.py in place of the llama-server binary.
SUPERVISED_CONFIG = """\
daemon:
  log_level: info
backends:
  llama-local:
    kind: llama-server
    base_url: "http://127.0.0.1:8080"
    probe: {interval_s: 0.5, timeout_s: 0.5, fall: 1}
    supervise: {mode: systemd, unit: llama-server.service, hang_restart_after: 2}
profiles:
  coding: {chain: [llama-local]}
"""
POLKITD = Path("/usr/lib/polkit-1/polkitd")


def shipped_llama_unit() -> str:
    """The example unit, running the stand-in server; no GPU groups in the test root."""
    lines = []
    for line in (REPO / "systemd/llama-server.service").read_text().splitlines():
        if line.startswith("ExecStart="):
            line = "ExecStart=/usr/bin/python3 /opt/hroute-test/fake_llama.py --port 8080"
        elif line.startswith("SupplementaryGroups="):
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def shipped_polkit_rule() -> str:
    """The polkit rule as the example unit's comment gives it, uncommented."""
    text = (REPO / "systemd/llama-server.service").read_text().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("#   polkit.addRule"))
    end = next(i for i in range(start, len(text)) if text[i] == "#   });")
    return "\n".join(line[4:] for line in text[start : end + 1]) + "\n"


def backend_view(root: SystemdRoot, name: str = "llama-local") -> dict:
    return curl(root, f"/v1/backends/{name}")


def reload_for(root: SystemdRoot, name: str) -> None:
    """`systemctl reload hroute`, then wait until the new config (which has `name`) is
    applied: ExecReload only sends SIGHUP, and hroute reads the file once it holds still."""
    root.run("systemctl", "reload", "hroute.service", timeout_s=30)
    wait_until(
        lambda: any(b["name"] == name for b in curl(root, "/v1/backends")["backends"]),
        20,
        f"the reload that adds {name}",
    )


def unit_pid(root: SystemdRoot, unit: str = "llama-server.service") -> int:
    return int(root.show(unit, "MainPID"))


def test_mode_systemd_restarts_a_hung_unit_through_systemctl_and_polkit(root):
    """hroute runs as the user hroute under its hardened unit; the rule from the example
    unit's comment is all that lets it restart llama-server.service."""
    if not (POLKITD.exists() and shutil.which("dbus-daemon")):
        if REQUIRED:
            pytest.fail("HROUTE_REQUIRE_SYSTEMD=1 but polkitd or dbus-daemon is missing")
        pytest.skip("needs polkitd and dbus-daemon (apt-get install polkitd dbus)")
    opt = root.path("/opt/hroute-test")
    opt.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "tests/support/fake_llama.py", opt / "fake_llama.py")
    root.path("/etc/systemd/system/llama-server.service").write_text(shipped_llama_unit())
    rule = root.path("/etc/polkit-1/rules.d/50-hroute-llama-server.rules")
    rule.parent.mkdir(parents=True, exist_ok=True)
    rule.write_text(shipped_polkit_rule())
    root.run("systemctl", "daemon-reload")
    root.run("systemctl", "start", "dbus.socket")  # the test's target starts nothing else
    root.run("systemctl", "start", "llama-server.service", timeout_s=30)
    root.path("/etc/hroute/hroute.yaml").write_text(SUPERVISED_CONFIG)
    reload_for(root, "llama-local")
    try:
        first = unit_pid(root)
        view = wait_until(
            lambda: (b := backend_view(root))["usable"] and b["process"]["pid"] == first and b,
            20,
            "llama-local healthy, watching the unit's main pid",
        )
        assert view["process"]["mode"] == "systemd" and view["process"]["state"] == "running"

        # A crash is the unit's own Restart= business; hroute sees the exit and follows.
        root.run("kill", "-9", str(first))
        second = wait_until(lambda: unit_pid(root) not in (0, first) and unit_pid(root), 15, "")
        wait_until(
            lambda: (b := backend_view(root))["usable"] and b["process"]["pid"] == second,
            20,
            "healthy again on systemd's restart",
        )
        exited = [e for e in curl(root, "/v1/events")["events"] if e["event"] == "unit_exited"]
        assert exited and f"main pid {first} exited" in exited[-1]["detail"]

        # A hang is not: the process lives, only hroute's probes see it. systemctl restart,
        # as the user hroute, allowed by the polkit rule.
        root.run("kill", "-STOP", str(second))
        third = wait_until(
            lambda: unit_pid(root) not in (0, second) and unit_pid(root), 30, "hang restart"
        )
        view = wait_until(
            lambda: (b := backend_view(root))["usable"] and b["process"]["pid"] == third and b,
            20,
            "healthy after the hang restart",
        )
        assert view["process"]["last_restart_reason"] == "hang"
        assert view["process"]["restarts"] == 1
        assert "failed" not in view["process"]["detail"]
        [entry] = journal(root, "HROUTE_EVENT=restart", "HROUTE_REASON=hang")
        assert entry["HROUTE_BACKEND"] == "llama-local"
        assert entry["MESSAGE_ID"] == MESSAGE_IDS["restart"]
        assert f"pid {second} is alive but 2 probes in a row got no answer" in entry["MESSAGE"]
    finally:
        root.path("/etc/hroute/hroute.yaml").write_text(CONFIG)
        root.run("systemctl", "reload", "hroute.service", check=False, timeout_s=30)
        root.run("systemctl", "stop", "llama-server.service", check=False, timeout_s=30)


CHILD_CONFIG = """\
daemon:
  log_level: info
backends:
  llama-child:
    kind: llama-server
    base_url: "http://127.0.0.1:8081"
    probe: {interval_s: 0.5, timeout_s: 0.5, fall: 1}
    supervise:
      command: ["/usr/bin/python3", "/opt/hroute-test/fake_llama.py", "--port", "8081"]
      restart: {backoff_initial_s: 0.2}
profiles:
  coding: {chain: [llama-child]}
"""


def test_mode_child_under_the_hardened_unit_and_a_clean_stop(root):
    """hroute's own unit runs the server as its child; stopping hroute stops the child
    through hroute (one graceful stop, no crash restart on the way out)."""
    opt = root.path("/opt/hroute-test")
    opt.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "tests/support/fake_llama.py", opt / "fake_llama.py")
    root.path("/etc/hroute/hroute.yaml").write_text(CHILD_CONFIG)
    reload_for(root, "llama-child")
    try:
        view = wait_until(
            lambda: (b := backend_view(root, "llama-child"))["usable"] and b, 20, "child healthy"
        )
        first = view["process"]["pid"]
        assert view["process"]["mode"] == "child"
        cgroup = root.path(f"/proc/{first}/cgroup").read_text()
        assert "/system.slice/hroute.service" in cgroup  # hroute's child, in hroute's cgroup
        root.run("kill", "-9", str(first))
        wait_until(
            lambda: (
                (b := backend_view(root, "llama-child"))["usable"]
                and b["process"]["pid"] not in (None, first)
            ),
            20,
            "the child restarted",
        )
        [crash] = journal(root, "HROUTE_EVENT=restart", "HROUTE_BACKEND=llama-child")
        assert crash["HROUTE_REASON"] == "exited" and "killed by SIGKILL" in crash["MESSAGE"]
        second = backend_view(root, "llama-child")["process"]["pid"]

        cursor = journal(root, "-n", "1")[-1]["__CURSOR"]
        root.run("systemctl", "stop", "hroute.service", timeout_s=60)
        assert not root.path(f"/proc/{second}").exists()
        stopped = root.run(
            "journalctl", "-u", "hroute", "--no-pager", "-o", "cat", "--after-cursor", cursor
        ).stdout
        assert f"llama-child: pid {second} stopped (hroute is stopping)" in stopped
        assert "restarting in" not in stopped  # the child's exit was not taken for a crash
        assert "received SIGTERM" in stopped  # its own last words, forwarded
    finally:
        root.path("/etc/hroute/hroute.yaml").write_text(CONFIG)
        root.run("systemctl", "start", "hroute.service", check=False, timeout_s=30)


def test_purge_removes_what_the_package_added(root):
    root.run("dpkg", "--purge", "hroute", timeout_s=120)
    assert root.run("getent", "passwd", "hroute", check=False).returncode != 0
    assert root.run("getent", "group", "hroute", check=False).returncode != 0
    for path in (
        "/usr/lib/hroute",
        "/usr/bin/hroute",
        "/usr/lib/systemd/system/hroute.service",
        "/etc/hroute/hroute.yaml",
        "/var/lib/hroute",
        "/run/hroute",
        "/etc/systemd/system/multi-user.target.wants/hroute.service",
        "/etc/systemd/system/sockets.target.wants/hroute.socket",
    ):
        assert not os.path.lexists(root.path(path)), path
    assert root.run("systemctl", "is-active", "hroute.service", check=False).stdout.strip() != (
        "active"
    )

"""`hroute demo` to completion in a pseudo-terminal, as a newcomer would run it."""

from __future__ import annotations

import os
import pwd
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.support.procs import dead
from tests.support.terminal import PtyProcess, run_in_pty
from tests.support.users import as_nobody, installed_for_everyone, shared_tmpdir

pytestmark = pytest.mark.system

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.timeout(90)
def test_demo_tells_the_whole_story_and_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where its work directory must appear
    env.pop("HROUTE_SOCKET", None)
    rc, raw = run_in_pty(
        [sys.executable, "-m", "hroute.cli", "demo", "--duration", "18"], env=env, timeout_s=75
    )
    out = ANSI.sub("", raw).replace("\r\n", "\n")
    assert rc == 0, out
    assert "\x1b[31m" in raw  # coloured on a terminal

    story = re.findall(r"^\[ *([\d.]+)s\] (\w+) +(.*)$", out, re.M)
    tags = [tag for _, tag, _ in story]
    text = {tag: [t for _, g, t in story if g == tag] for tag in set(tags)}
    # Each act, by the real daemon: probes, the supervisor, the registry's cooldown.
    assert any(re.match(r"local-a crashed: pid \d+ exited with code 134", t) for t in text["CRASH"])
    assert any(t.startswith("local-b is alive but stopped answering") for t in text["HANG"])
    assert any("supervisor restarts local-a" in t for t in text["RESTART"])
    assert any("supervisor restarts local-b" in t for t in text["RESTART"])
    assert any("local-a -> local-b" in t for t in text["FALLBACK"])
    assert any("-> cloud" in t for t in text["FALLBACK"])
    assert any("cloud answered 429, Retry-After" in t for t in text["AGENT"])
    assert any(
        # a 429 without a key holds that model of the cloud API; the line names the model
        re.search(r"\(cloud\): cooling down for \d+s \(rate_limit\)", t)
        for t in text["COOLDOWN"]
    )
    assert any("cooldown over" in t for t in text["COOLDOWN"])
    assert any(t == "probe: local-a is healthy" for t in text["RECOVERY"])
    assert any(t == "probe: local-b is healthy" for t in text["RECOVERY"])
    # In the order they happen: the crash before its restart, the restart before recovery.
    # (A fallback may come before the supervisor's restart line: both follow the crash.)
    first = {tag: tags.index(tag) for tag in ("DOWN", "CRASH", "RESTART", "FALLBACK", "RECOVERY")}
    assert first["CRASH"] < first["RESTART"] < first["RECOVERY"]
    assert first["DOWN"] < first["FALLBACK"] < first["RECOVERY"]
    assert re.search(r"^demo over after \d+s: 2 crash, 1 hang, 3 restarts", out, re.M), out

    # Nothing left behind: the work directory and every process it started are gone.
    work = re.search(r"work directory (\S+)", out).group(1)
    assert work.startswith(str(tmp_path))
    assert f"removed {work}" in out
    assert not Path(work).exists()
    assert list(tmp_path.iterdir()) == []
    pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
    assert len(pids) >= 5  # two servers at first, and their three restarts
    assert all(dead(pid) for pid in pids)


@pytest.mark.timeout(240)
def test_demo_needs_no_root() -> None:
    """As user nobody, with hroute installed as `make install` does: it runs to the end."""
    with shared_tmpdir() as shared:
        hroute = str(installed_for_everyone(shared))
        own = shared / "nobody"
        own.mkdir()
        nobody = pwd.getpwnam("nobody")
        os.chown(own, nobody.pw_uid, nobody.pw_gid)
        argv = as_nobody([hroute, "demo", "--duration", "15"], own, TMPDIR=str(own))
        rc, raw = run_in_pty(argv, timeout_s=75)
        out = ANSI.sub("", raw)
        assert rc == 0, out
        assert "CRASH" in out and "HANG" in out and "COOLDOWN" in out
        assert re.search(r"^demo over after \d+s", out, re.M), out
        assert list(own.iterdir()) == []


def _daemon_of(demo: PtyProcess) -> int:
    """The pid of the `hroute run` the demo started."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if int(stat[1]) == demo.proc.pid and b"run" in argv and b"hroute.cli" in argv:
            return int(entry.name)
    raise AssertionError(f"no daemon under the demo; output:\n{demo.output}")


def test_ctrl_c_ends_the_demo_and_still_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    demo = PtyProcess([sys.executable, "-m", "hroute.cli", "demo"], env=env)
    try:
        demo.expect("probes say all three backends are up", 30)
        daemon = _daemon_of(demo)
        # Ctrl-C goes to the terminal's foreground process group: the demo stops its daemon
        # itself. Had the daemon got it too, it could exit first and the demo call it an error.
        assert os.getpgid(daemon) != os.getpgid(demo.proc.pid)
        demo.interrupt()
        rc = demo.wait(30)
    finally:
        demo.close()
    out = demo.output
    assert rc == 130, out
    assert "interrupted; cleaning up" in out
    assert list(tmp_path.iterdir()) == []
    pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
    assert len(pids) == 2 and all(dead(pid) for pid in pids + [daemon])
    assert "ERROR" not in out


def test_a_daemon_that_dies_under_the_demo_is_an_error(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    demo = PtyProcess([sys.executable, "-m", "hroute.cli", "demo"], env=env)
    try:
        demo.expect("probes say all three backends are up", 30)
        daemon = _daemon_of(demo)
        os.kill(daemon, signal.SIGTERM)  # not the demo's doing: it exits 0 all the same
        rc = demo.wait(30)
    finally:
        demo.close()
    out = demo.output
    assert "ERROR" in out and "the daemon exited with 0" in out, out
    assert rc == 1, out
    assert list(tmp_path.iterdir()) == []

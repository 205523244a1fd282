"""Signals at awkward moments."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.faults import config, still_answers, unprobed
from tests.support.procs import free_port

pytestmark = [pytest.mark.faults, pytest.mark.system]


def _catches_sighup(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(ln for ln in status.splitlines() if ln.startswith("SigCgt")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGHUP - 1)))


def _survives(d: Daemon) -> None:
    try:
        wait_until(d._serving, 15, what="the daemon to serve after an early SIGHUP")
        still_answers(d)
    finally:
        d.stop()
    assert d.proc.returncode == 0, d.log


def test_sighup_is_caught_long_before_the_daemon_serves(tmp_path: Path) -> None:
    d = Daemon(tmp_path, config({"a": unprobed(free_port())})).start(wait=False)
    try:
        wait_until(lambda: d.proc.poll() is not None or _catches_sighup(d.proc.pid), 15, 0.001)
        assert not d.socket.exists()  # caught from the start, not only once serving
    except BaseException:
        d.stop()
        raise
    d.proc.send_signal(signal.SIGHUP)
    _survives(d)


def test_sighup_half_a_second_after_start(tmp_path: Path) -> None:
    d = Daemon(tmp_path, config({"a": unprobed(free_port())})).start(wait=False)
    time.sleep(0.4)  # the audit's fault: `systemctl reload` right after `start`
    d.proc.send_signal(signal.SIGHUP)
    _survives(d)

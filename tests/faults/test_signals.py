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


@pytest.mark.parametrize("after_s", [0.15, 0.3, 0.45])
def test_sighup_while_starting_does_not_kill(tmp_path: Path, after_s: float) -> None:
    d = Daemon(tmp_path, config({"a": unprobed(free_port())})).start(wait=False)
    try:
        time.sleep(after_s)  # the fault: an operator's `systemctl reload` right after start
        d.proc.send_signal(signal.SIGHUP)
        wait_until(d._serving, 15, what="the daemon to serve after an early SIGHUP")
        still_answers(d)
    finally:
        d.stop()
    assert d.proc.returncode == 0, d.log

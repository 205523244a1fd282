"""The socket and the snapshot beside it: removed, replaced, planted, poisoned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hroute.client import Client
from tests.support.daemon import Daemon, wait_until
from tests.support.faults import config, still_answers, unprobed
from tests.support.procs import free_port

pytestmark = [pytest.mark.faults, pytest.mark.system]


def beside(d: Daemon, tmp_path: Path) -> tuple[Client, Path]:
    """A client whose socket is the daemon's (a symlink) but whose snapshot is the test's."""
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    (mine / "hroute.sock").symlink_to(d.socket)
    return Client(mine / "hroute.sock", budget_s=2.0), mine / "hroute.snapshot"


def _bytes_read() -> int:
    """What this process has read so far (rchar: every read(2), page cache included)."""
    io = Path("/proc/self/io").read_text().split()
    return int(io[io.index("rchar:") + 1])


def counted_usable(client: Client) -> tuple[str, int]:
    """The answer's source and how many bytes this process read to get it."""
    before = _bytes_read()
    answer = client.usable("a")
    return answer.source, _bytes_read() - before


def test_a_fifo_for_a_snapshot_does_not_hang_the_client(shared: Daemon, tmp_path: Path) -> None:
    client, snap = beside(shared, tmp_path)
    os.mkfifo(snap)
    source, _ = counted_usable(client)  # an answer at all: opening the FIFO did not block
    assert source == "socket"
    still_answers(shared)


def test_a_400_mb_snapshot_is_not_read(shared: Daemon, tmp_path: Path) -> None:
    client, snap = beside(shared, tmp_path)
    with open(snap, "wb") as f:
        f.truncate(400 * 1024 * 1024)  # sparse: costs no disk
    source, read = counted_usable(client)
    assert source == "socket" and read < 1024 * 1024, read
    still_answers(shared)


@pytest.mark.parametrize(
    "text",
    [
        '{"v": 1, "expires": 1e12, "backends": {"a": {"state": "unhealthy"',
        '{"v": 1, "expires": NaN, "backends": {}, "urls": {}}',
        '{"v": 1, "expires": Infinity, "backends": {}, "urls": {}}',
        '{"v": 1, "expires": 1e12, "backends": {"a": {"blocked": "x", "until": NaN}}, "urls": {}}',
        '{"v": 1, "expires": 1e12, "backends": {"a": 7}, "urls": {}}',
        "[1, 2, 3]",
    ],
    ids=["cut", "nan-expiry", "inf-expiry", "nan-until", "wrong-shape", "not-a-map"],
)
def test_a_corrupt_snapshot_means_ask_the_socket(shared: Daemon, tmp_path: Path, text: str) -> None:
    client, snap = beside(shared, tmp_path)
    snap.write_text(text)
    source, _ = counted_usable(client)
    assert source == "socket"
    still_answers(shared)


def test_nan_in_state_json_is_set_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    doc = {
        "format": "hroute-state/1",
        "saved_at": 1.0,
        "backends": [
            {
                "identity": ["chat_completions", "http://127.0.0.1:9", None],
                "state": "healthy",
                "cooldown": {"until_wall": float("nan"), "reason": "rate_limit"},
            }
        ],
    }
    (state / "state.json").write_text(json.dumps(doc))
    with Daemon(tmp_path, config({"a": unprobed(9)})) as d:
        d.wait_for_log("is unreadable")
        assert d.backend("a")["usable"] is True
        assert any(p.name.startswith("state.json.bad-") for p in state.iterdir())
        still_answers(d)


def test_a_deleted_socket_is_noticed_and_recreated(tmp_path: Path) -> None:
    with Daemon(tmp_path, config({"a": unprobed(free_port())})) as d:
        d.socket.unlink()
        d.wait_for_log("was removed or replaced; listening there again")
        wait_until(d.socket.exists, 5, what="the socket to be back")
        still_answers(d)


def test_no_second_daemon_on_the_same_path_even_after_the_file_went(tmp_path: Path) -> None:
    with Daemon(tmp_path, config({"a": unprobed(free_port())})) as d:
        d.socket.unlink()
        second = subprocess.run(
            [sys.executable, "-m", "hroute.cli", "run", "--config", str(d.config_path)],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode != 0 and "another hroute daemon" in second.stderr
        wait_until(d.socket.exists, 5, what="the first daemon to recreate its socket")
        still_answers(d)
        assert d.client().report("a", reason="server_error")
        assert d.backend("a")["usable"] is False  # the one registry took it


def test_a_socket_replaced_by_a_file_stops_the_daemon_for_systemd(tmp_path: Path) -> None:
    d = Daemon(tmp_path, config({"a": unprobed(free_port())})).start()
    try:
        d.socket.unlink()
        d.socket.write_text("not a socket")
        assert d.proc.wait(15) != 0
        assert "not a socket" in d.log
    finally:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGKILL)
        d.stop()


def test_an_emptied_socket_directory_is_made_again_and_still_locked(tmp_path: Path) -> None:
    with Daemon(tmp_path, config({"a": unprobed(free_port())})) as d:
        for p in d.socket.parent.iterdir():
            p.unlink()
        d.socket.parent.rmdir()
        d.wait_for_log("was removed or replaced; listening there again")
        wait_until(d.socket.exists, 5, what="the socket to be back")
        assert d.socket.with_name("hroute.sock.lock").exists()
        second = subprocess.run(
            [sys.executable, "-m", "hroute.cli", "run", "--config", str(d.config_path)],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode != 0 and "another hroute daemon" in second.stderr
        still_answers(d)

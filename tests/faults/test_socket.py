"""The socket and the snapshot beside it: removed, replaced, planted, poisoned."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hroute.client import Client
from tests.support.daemon import Daemon, wait_until
from tests.support.faults import config, raw_request, still_answers, unprobed
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


def _v3(section: str, span: str | None = None, expires: str = "1e12") -> str:
    """A snapshot in the daemon's layout whose one section (backend a) is `section`."""
    span = span or f"[0,{len(section.encode())}]"
    urls = '{"urls":{},"url_models":{}}'
    at = len(section.encode())
    head = f'{{"v":3,"pid":1,"version":0,"expires":{expires},"urls":[{at},{len(urls)}]}}'
    return head + "\n" + f'{{"a":{span}}}' + "\n" + section + urls


GOOD = '{"state":"unhealthy","model":null,"blocked":"x","until":null,"until_reason":null,'
GOOD += '"models":{},"creds":{}}'


def test_the_snapshot_beside_is_believed_when_well_formed(shared: Daemon, tmp_path: Path) -> None:
    """The control for the corrupt cases below: the same layout, intact, is what decides."""
    client, snap = beside(shared, tmp_path)
    snap.write_text(_v3(GOOD))
    answer = client.usable("a")
    assert (answer.usable, answer.reason, answer.source) == (False, "x", "snapshot")


@pytest.mark.parametrize(
    "text",
    [
        _v3(GOOD)[:40],
        _v3(GOOD, expires="NaN"),
        _v3(GOOD, expires="Infinity"),
        _v3(GOOD.replace('"until":null', '"until":NaN')),
        _v3("7"),
        _v3(GOOD[:30]),
        _v3(GOOD, span="[0,99999]"),
        _v3(GOOD, span="[-5,3]"),
        _v3(GOOD, span='"a"'),
        _v3("[" * 100_000 + "]" * 100_000),
        "[1, 2, 3]",
        '{"v": 2, "expires": 1e12, "backends": {"a": {"blocked": "x"}}, "urls": {}}',
    ],
    ids=[
        "cut", "nan-expiry", "inf-expiry", "nan-until", "wrong-shape", "cut-section",
        "past-the-end", "negative-offset", "not-a-span", "deep", "not-a-map", "old-format",
    ],
)  # fmt: skip
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


# --- the socket's HTTP: RFC 9112 cases on the running daemon -------------------------------


def exchange(d: Daemon, data: bytes, timeout_s: float = 3.0) -> list[tuple[int, bytes, bytes]]:
    """Send `data` on one connection; every answer read until the daemon closes it."""
    return answers(raw_request(d.socket, data, timeout_s=timeout_s))


def answers(raw: bytes) -> list[tuple[int, bytes, bytes]]:
    """(status, head, body) of each response in `raw`, in order."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"a cut response: {raw[:200]!r}"
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        out.append((int(head.split()[1]), head, rest[:length]))
        raw = rest[length:]
    return out


VERSION = b"GET /v1/version HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    "length", ["\u00b2", "9" * 5001, "-1", "0x10"], ids=["superscript", "5001-digits", "neg", "hex"]
)
def test_a_bad_content_length_is_a_400_not_a_traceback(shared: Daemon, length: str) -> None:
    data = VERSION + f"Content-Length: {length}\r\n\r\n".encode("latin-1")
    got = exchange(shared, data)
    assert [status for status, _, _ in got] == [400]
    assert b"Content-Length" in got[0][2]
    assert "Traceback" not in shared.log
    still_answers(shared)


def test_two_content_lengths_cannot_smuggle_the_next_request(shared: Daemon) -> None:
    hidden = b"GET /v1/backends HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    data = VERSION + f"Content-Length: 0\r\nContent-Length: {len(hidden)}\r\n\r\n".encode()
    got = exchange(shared, data + hidden)
    assert [status for status, _, _ in got] == [400]  # and closed: nothing is read after it
    still_answers(shared)


def test_bare_lf_is_answered_at_once_not_at_the_idle_timeout(shared: Daemon) -> None:
    got = exchange(shared, b"GET /v1/version HTTP/1.1\nHost: x\n\n", timeout_s=3)
    assert [status for status, _, _ in got] == [400]
    still_answers(shared)


def test_a_17_kib_head_in_one_piece_is_431(shared: Daemon) -> None:
    data = VERSION + b"X-Pad: " + b"a" * (17 * 1024) + b"\r\nConnection: close\r\n\r\n"
    assert [status for status, _, _ in exchange(shared, data)] == [431]
    still_answers(shared)


def test_expect_100_continue_is_answered_before_the_body(shared: Daemon) -> None:
    body = b'{"backend": "a", "outcome": "success"}'
    head = (
        b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
        + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(3)
        s.connect(str(shared.socket))
        s.sendall(head)
        interim = s.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    assert [status for status, _, _ in answers(rest)] == [202]


def test_an_http_1_0_keep_alive_answer_says_so(shared: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(3)
        s.connect(str(shared.socket))
        s.sendall(b"GET /v1/version HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        fields = head.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")[1:]
        assert b"connection: keep-alive" in fields
        s.sendall(b"GET /v1/version HTTP/1.0\r\n\r\n")  # the same connection serves a second
        rest = head
        while chunk := s.recv(65536):
            rest += chunk
    assert [status for status, _, _ in answers(rest)] == [200, 200]


RELOAD = b"POST /v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def test_87_kb_pipelined_behind_a_reload_are_each_answered_in_order(shared: Daemon) -> None:
    many = (VERSION + b"\r\n") * (87_000 // (len(VERSION) + 2))
    last = VERSION + b"Connection: close\r\n\r\n"
    got = exchange(shared, RELOAD + many + last, timeout_s=10)
    statuses = [status for status, _, _ in got]
    assert statuses[0] == 200 and b'"ok":true' in got[0][2], got[0]
    assert statuses[1:] == [200] * (many.count(b"GET") + 1)
    still_answers(shared)


def test_a_too_large_request_behind_a_reload_gets_its_own_413(shared: Daemon) -> None:
    big = b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Length: 87000\r\n\r\n" + b"x" * 87000
    got = exchange(shared, RELOAD + big, timeout_s=10)
    assert [status for status, _, _ in got] == [200, 413]
    assert b'"ok":true' in got[0][2]
    still_answers(shared)

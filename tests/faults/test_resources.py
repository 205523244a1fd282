"""Descriptors and the listen queue: idle clients and connect storms cannot take it down."""

from __future__ import annotations

import fcntl
import resource
import select
import socket
import struct
import subprocess
import termios
from pathlib import Path

import pytest

from hroute.edges.limits import BACKLOG
from tests.support.daemon import Daemon, wait_until
from tests.support.fakebackend import FakeBackend
from tests.support.faults import config, still_answers, unprobed
from tests.support.procs import free_port

pytestmark = [pytest.mark.faults, pytest.mark.system]


@pytest.fixture(scope="module", autouse=True)
def _many_fds() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))


def _listen_backlog(path: Path) -> int:
    out = subprocess.run(["ss", "-xlnH"], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if str(path) in ln)
    return int(line.split()[3])  # Netid State Recv-Q Send-Q: Send-Q is the backlog


def test_the_requested_backlog_is_the_real_one(shared: Daemon) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert _listen_backlog(shared.socket) == min(BACKLOG, somaxconn)
    socks, failed = [], 0
    try:
        for _ in range(1000):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            try:
                s.connect(str(shared.socket))
            except BlockingIOError:
                failed += 1
            socks.append(s)
    finally:
        for s in socks:
            s.close()
    assert failed == 0, f"{failed} of 1000 simultaneous connects failed"
    still_answers(shared)


def test_idle_clients_cannot_starve_probes_with_the_default_fd_limit(tmp_path: Path) -> None:
    with FakeBackend(kind="openai") as fb:
        spec = f"{{kind: openai, base_url: '{fb.base_url}', probe: {{interval_s: 0.2, fall: 1}}}}"
        with Daemon(tmp_path, config({"up": spec}), nofile=1024) as d:
            d.wait_state("up", "healthy")
            idle = []
            try:
                for _ in range(1100):
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(str(d.socket))
                    idle.append(s)
                fb.clear_requests()
                fb.wait_for_requests(5, "/v1/models", timeout_s=10)  # probes still run
                assert d.backend("up")["state"] == "healthy"
                still_answers(d)
            finally:
                for s in idle:
                    s.close()
            assert "too many open files" not in d.log.lower()
            assert len(d.log) < 100_000, f"{len(d.log)} bytes of log"
            events = [e["event"] for e in d.get("/v1/events")[1]["events"]]
            assert "backend_down" not in events
            wait_until(lambda: d.proc.poll() is None, 1)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _hung_up(s: socket.socket) -> bool:
    """The daemon closed its end (whatever it wrote may still wait in ours)."""
    poller = select.poll()
    poller.register(s, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


def _send_until_stalled(s: socket.socket, data: bytes, stall_s: float = 3.0) -> int:
    """Send what the daemon takes, a little at a time (one read never holds a whole
    request's worth); stop when it has taken nothing for `stall_s`."""
    s.setblocking(False)
    sent = 0
    while sent < len(data):
        if not select.select([], [s], [], stall_s)[1]:
            break
        try:
            sent += s.send(data[sent : sent + 2048])
        except (BlockingIOError, InterruptedError):
            continue
        except (BrokenPipeError, ConnectionResetError):
            break  # dropped already (stalled past the idle deadline)
    return sent


def _unread(s: socket.socket) -> int:
    """Bytes sent on `s` that the daemon has not read yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def _status_of_fresh_request(d: Daemon) -> int | str:
    """A real client's first request on a new connection: its status, or how it failed."""
    try:
        return d.client(budget_s=3).request("GET", "/v1/version")[0]
    except OSError as exc:
        return type(exc).__name__


def _drain(s: socket.socket) -> bytes:
    s.setblocking(True)
    s.settimeout(5)
    chunks = []
    try:
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return b"".join(chunks)


def test_a_client_that_never_reads_holds_no_memory_and_is_dropped(tmp_path: Path) -> None:
    env = {"HROUTE_TEST_HOOKS": "1", "HROUTE_TEST_IDLE_TIMEOUT_S": "2"}
    backends = {f"b{i}": unprobed(free_port()) for i in range(40)}  # /metrics: ~20 KB
    with Daemon(tmp_path, config(backends), env=env) as d:
        one = len(d.get_text("/metrics"))
        before = _rss_kib(d.proc.pid)
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.socket(socket.AF_UNIX) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(str(d.socket))
            sent = _send_until_stalled(s, request * 5000)
            still_answers(d)  # the loop turned: what was sent met the server
            grown_kib = _rss_kib(d.proc.pid) - before
            # Every answer queued would be 5,000 x ~20 KB = 100 MB; paused, a few hundred KB.
            assert grown_kib < 16 * 1024, f"RSS grew {grown_kib} KiB ({sent} bytes sent)"
            wait_until(lambda: _hung_up(s), 15, what="the stalled connection to be dropped")
            got = _drain(s)
        answered = got.count(b"HTTP/1.1 200 OK")
        assert answered < 100 and len(got) < 2 * 1024 * 1024, (answered, len(got), one)
        still_answers(d)


def test_slow_heads_cannot_take_every_place_from_real_clients(tmp_path: Path) -> None:
    """Slowloris: past the connection cap, real requests still get answers (not 503), and a
    head trickled a byte at a time is cut at the request deadline."""
    env = {"HROUTE_TEST_HOOKS": "1", "HROUTE_TEST_REQUEST_TIMEOUT_S": "1"}
    head = b"GET /v1/version HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    with Daemon(tmp_path, config({"a": unprobed(free_port())}), env=env, nofile=1024) as d:
        slow: list[socket.socket] = []
        try:
            for _ in range(1000):  # the cap is 1,024 - 128 = 896
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(d.socket))
                s.setblocking(False)
                s.send(head[:1])
                slow.append(s)
            # Every slow byte is read (or its connection refused) before a real client comes.
            wait_until(lambda: not any(map(_unread, slow)), 10, what="the daemon to read them")
            statuses = [_status_of_fresh_request(d) for _ in range(20)]
            assert statuses == [200] * 20
            sent = dict.fromkeys(slow, 1)

            def all_cut() -> bool:
                for s in [s for s in slow if s in sent]:
                    try:
                        s.send(head[sent[s] : sent[s] + 1])
                        sent[s] += 1
                    except BlockingIOError:
                        pass
                    except OSError:  # dropped for a real client, or 408 at the deadline
                        cut_after.append(sent.pop(s))
                return not sent

            cut_after: list[int] = []
            wait_until(all_cut, 30, interval_s=0.2, what="every slow head to be cut")
            # A byte every 0.2 s or slower: cut at the 1 s request deadline after a few
            # bytes, not at the 10 s idle timeout (~50 bytes) nor never (1,000).
            assert max(cut_after) <= 25, sorted(cut_after)[-10:]
        finally:
            for s in slow:
                s.close()
        still_answers(d)

"""sd_notify messages, the watchdog interval and the STATUS= line, against a real datagram socket."""

from __future__ import annotations

import os
import socket
import time

import anyio
import pytest

from hroute.systemd.notify import Notifier, keep_watchdog, status_line


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # sdnotify reads the real environment
    yield sock
    sock.close()


def _env(**extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": os.environ["NOTIFY_SOCKET"], **extra}


def test_ready_status_stopping(notify_socket):
    n = Notifier(_env())
    n.ready("1 backend: 1 usable")
    n.status("1 backend: 0 usable; b down (connection)")
    n.stopping()
    n.close()
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=1 backend: 1 usable"
    assert notify_socket.recv(4096) == b"STATUS=1 backend: 0 usable; b down (connection)"
    assert notify_socket.recv(4096) == b"STOPPING=1"
    assert n.last_status == "1 backend: 0 usable; b down (connection)"


def test_reloading_carries_monotonic_usec(notify_socket):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n = Notifier(_env())
    n.reloading()
    n.close()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = notify_socket.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].split("=")[1]) <= after


def test_utf8_status_survives_sdnotify(notify_socket):
    n = Notifier(_env())
    n.status("llama-café starting")
    n.close()
    assert notify_socket.recv(4096).decode() == "STATUS=llama-café starting"


def test_watchdog_interval():
    pid = str(os.getpid())
    assert Notifier({}).watchdog_interval_s() is None
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "20000000"}
    assert Notifier(env).watchdog_interval_s() == 20.0
    assert Notifier({**env, "WATCHDOG_PID": pid}).watchdog_interval_s() == 20.0
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval_s() is None
    assert Notifier({**env, "WATCHDOG_USEC": "0"}).watchdog_interval_s() is None
    assert Notifier({**env, "WATCHDOG_USEC": "x"}).watchdog_interval_s() is None


def test_keep_watchdog_pings_at_half_the_interval(notify_socket):
    n = Notifier(_env(WATCHDOG_USEC="200000"))  # 0.2 s: pings every 0.1 s
    slept: list[float] = []

    class Enough(Exception):
        pass

    async def sleep(seconds: float) -> None:  # a clock that lets three intervals pass
        slept.append(seconds)
        if len(slept) == 3:
            raise Enough

    with pytest.raises(Enough):
        anyio.run(keep_watchdog, n, sleep)
    n.close()
    notify_socket.settimeout(0)
    pings = []
    while True:
        try:
            pings.append(notify_socket.recv(64))
        except BlockingIOError:
            break
    assert pings == [b"WATCHDOG=1"] * 3  # one before each wait
    assert slept == [0.1, 0.1, 0.1]


def _view(name, state, usable, reason=None, cooldown=None):
    return {
        "name": name,
        "state": state,
        "usable": usable,
        "reason": reason,
        "cooldown_remaining_s": cooldown,
    }


def test_status_line_summarises_in_one_line():
    views = [
        _view("llama-local", "starting", False, "starting"),
        _view("ollama", "healthy", True),
        _view("openrouter", "healthy", False, "rate_limit", 25.0),
        _view("claude", "unknown", True),
    ]
    assert status_line(views) == (
        "4 backends: 2 usable; llama-local starting; openrouter cooling down (rate_limit)"
    )
    assert status_line([_view("b", "unhealthy", False, "connection")]) == (
        "1 backend: 0 usable; b down (connection)"
    )


def test_status_line_stays_short():
    views = [_view(f"b{i}", "unhealthy", False, "timeout") for i in range(6)]
    line = status_line(views)
    assert line.endswith("; 3 more") and line.count(";") == 4

"""A private `redis-server` per test: a Unix socket in a fresh temp dir, no persistence.

Without the binary those tests skip with the reason, unless CI=true or HROUTE_REQUIRE_REDIS=1
(.ci/run sets it and installs the Debian package `redis-server`): there a missing binary is a
failure, so the cluster tests cannot silently not run. Never the system's Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

HOW = "install the Debian package 'redis-server' (.ci/run does)"


def require_redis_server() -> str:
    """The path of redis-server; skip, or fail where it is required."""
    import pytest

    path = shutil.which("redis-server")
    if path:
        return path
    problem = f"redis-server is not on PATH; {HOW}"
    if os.environ.get("HROUTE_REQUIRE_REDIS") == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"HROUTE_REQUIRE_REDIS=1 or CI=true but {problem}", pytrace=False)
    pytest.skip(problem)


class RedisServer:
    """One redis-server on a Unix socket (a short path: sun_path holds 108 bytes)."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or require_redis_server()
        self.dir = Path(tempfile.mkdtemp(prefix="hroute-redis-"))
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.socket.unlink(missing_ok=True)
        options = {
            "--port": "0",  # no TCP: only the socket in our temp dir
            "--unixsocket": str(self.socket),
            "--unixsocketperm": "700",
            "--save": "",  # no persistence: a killed server forgets everything
            "--appendonly": "no",
            "--dir": str(self.dir),
            "--daemonize": "no",
        }
        self.proc = subprocess.Popen(
            [self.binary, *(part for pair in options.items() for part in pair)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode}")
            if self.ping():
                return self
            time.sleep(0.02)
        raise AssertionError(f"redis-server did not answer on {self.socket} in {timeout_s}s")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(str(self.socket))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a Redis that is very slow)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no goodbye to its clients, and (no persistence) it forgets everything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Run `hroute run` as users do: a subprocess on a temp config, watched through its socket."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hroute.client import Client

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


class Daemon:
    """One `hroute run` subprocess with its own socket under `tmp`."""

    def __init__(
        self,
        tmp: Path,
        config_text: str,
        env: dict[str, str] | None = None,
        nofile: int | None = None,
    ) -> None:
        self.tmp = tmp
        self.config_path = tmp / "hroute.yaml"
        self.config_path.write_text(config_text)
        self.socket = tmp / "run" / "hroute.sock"
        self.state_dir = tmp / "state"
        self.env = {
            **os.environ,
            "HROUTE_SOCKET": str(self.socket),
            "HROUTE_STATE_DIR": str(self.state_dir),
            **(env or {}),
        }
        self.env.pop("NOTIFY_SOCKET", None)
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard), e.g. systemd's default 1024
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._cond = threading.Condition()

    def start(self, wait: bool = True) -> Daemon:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hroute.cli", "run", "--config", str(self.config_path)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=None if self.nofile is None else self._limit_fds,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        if wait:
            try:
                wait_until(self._serving, 15, what="the daemon to serve its socket")
            except BaseException:
                self.stop(timeout_s=5)  # no pipe or process is left for a later test to trip on
                raise
        return self

    def _limit_fds(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def _serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log}")
        try:
            status, _ = self.client().request("GET", "/v1/version", budget_s=1)
        except (OSError, TimeoutError, ValueError):
            return False
        return status == 200

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_log(self, text: str, timeout_s: float = 10.0) -> str:
        """Wait for a stderr line containing `text`; return it."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no log line with {text!r} in {timeout_s}s:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(left)

    def client(self, budget_s: float = 2.0) -> Client:
        return Client(self.socket, budget_s=budget_s)

    def get(self, path: str) -> tuple[int, Any]:
        return self.client().request("GET", path)

    def get_text(self, path: str) -> str:
        """GET a non-JSON resource (e.g. /metrics) over the socket; the body as text."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            raw = b"".join(iter(lambda: s.recv(65536), b""))
        return raw.split(b"\r\n\r\n", 1)[1].decode()

    def backend(self, name: str) -> dict[str, Any]:
        status, body = self.get(f"/v1/backends/{name}")
        assert status == 200, body
        return body

    def wait_state(self, name: str, state: str, timeout_s: float = 10.0) -> dict[str, Any]:
        return wait_until(
            lambda: (b := self.backend(name))["state"] == state and b,
            timeout_s,
            what=f"{name} to be {state}",
        )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        if self.proc is None:
            return 0
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"daemon did not stop within {timeout_s}s:\n{self.log}") from None
        finally:
            self._reader.join(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
        return self.proc.returncode

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

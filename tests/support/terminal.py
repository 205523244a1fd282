"""Run a command in a pseudo-terminal, as a user at a terminal would, and collect its output."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time


def run_in_pty(
    argv: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 30.0
) -> tuple[int, str]:
    """Run `argv` with a pty as stdin/stdout/stderr; its exit status and everything it wrote.

    Fails (AssertionError) when it does not end within `timeout_s`; the process group is
    killed then, so nothing is left running.
    """
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        argv,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        start_new_session=True,
        close_fds=True,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                out = b"".join(chunks).decode(errors="replace")
                raise AssertionError(f"{argv} did not end within {timeout_s}s; output:\n{out}")
            ready, _, _ = select.select([leader], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: every writer closed the pty
                    data = b""
                if not data:
                    break
                chunks.append(data)
        return proc.wait(timeout_s), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class PtyProcess:
    """A command on a pseudo-terminal that a test reads from as it runs, and can signal."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self._leader, follower = pty.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=follower, stdout=follower, stderr=follower, env=env,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
        os.close(follower)
        self.output = ""

    def _read(self, timeout_s: float) -> bool:
        ready, _, _ = select.select([self._leader], [], [], timeout_s)
        if not ready:
            return True
        try:
            data = os.read(self._leader, 65536)
        except OSError:
            data = b""
        self.output += data.decode(errors="replace")
        return bool(data)

    def expect(self, text: str, timeout_s: float = 30.0) -> None:
        """Read until `text` has been written; fail after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                raise AssertionError(f"no {text!r} within {timeout_s}s; output:\n{self.output}")

    def interrupt(self) -> None:
        """Ctrl-C, as the terminal sends it: SIGINT to the foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout_s: float = 30.0) -> int:
        """Read to the end; the exit status."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._read(0.5):
            pass
        return self.proc.wait(max(deadline - time.monotonic(), 0.1))

    def close(self) -> None:
        os.close(self._leader)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

"""Helpers for the fault matrix: a daemon to abuse, raw requests, and "does it still answer?"."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import Daemon

HEAD = """defaults:
  probe: {interval_s: 30, timeout_s: 0.5, fall: 1, rise: 1, jitter: 0}
  cooldown: {base_s: 30, max_s: 300}
"""


def config(backends: dict[str, str], profiles: dict[str, list[str]] | None = None) -> str:
    """A config with `backends` (name -> flow mapping) and optional profiles."""
    lines = [HEAD, "backends:"] + [f"  {n}: {spec}" for n, spec in backends.items()]
    if profiles:
        lines.append("profiles:")
        lines += [f"  {p}: {{chain: [{', '.join(c)}]}}" for p, c in profiles.items()]
    return "\n".join(lines) + "\n"


def unprobed(port: int) -> str:
    return f"{{kind: openai, base_url: 'http://127.0.0.1:{port}', probe: {{enabled: false}}}}"


def still_answers(d: Daemon) -> None:
    """The case's second half: the daemon is alive and answers a plain request at once."""
    assert d.proc is not None and d.proc.poll() is None, f"daemon died:\n{d.log[-4000:]}"
    status, body = d.client(budget_s=2.0).request("GET", "/v1/version")
    assert status == 200 and "version" in body


def raw_request(sock_path: Path, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send bytes as they are (garbage included); return whatever comes back."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout_s)
        s.connect(str(sock_path))
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def files_text(d: Daemon) -> str:
    """Everything the daemon wrote that a secret must never reach: state, snapshot, log."""
    parts = [d.log]
    for path in (d.state_dir / "state.json", d.socket.with_suffix(".snapshot")):
        if path.exists():
            parts.append(path.read_text())
    return "\n".join(parts)


def hroute_cli(d: Daemon, *args: str) -> str:
    """What `hroute ARGS` prints (stdout and stderr) against this daemon's socket."""
    run = subprocess.run(
        [sys.executable, "-m", "hroute.cli", "--socket", str(d.socket), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=d.env,
    )
    return run.stdout + run.stderr

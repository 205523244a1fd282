"""The agent-side client: standard library only, synchronous, and fail-open.

`usable()` is on every agent turn, so it reads the snapshot the daemon publishes beside
its socket (a stat and a dict lookup when nothing changed) and only falls back to a
socket round trip when the snapshot is missing or expired. Whatever goes wrong (no
daemon, a refused connection, no answer within the budget) the answer lets the caller
go ahead exactly as if hroute did not exist; nothing here raises into the caller.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from hroute.core.credentials import fingerprint
from hroute.core.identity import normalize_base_url
from hroute.core.verdict import decide
from hroute.paths import default_socket_path, snapshot_path, untrusted_dir

DEFAULT_BUDGET_S = 0.1
MAX_SNAPSHOT_BYTES = 4 * 1024 * 1024  # a few thousand backends; a 400 MB plant is not read
DIR_RECHECK_S = 1.0

__all__ = ["Client", "Usable", "fingerprint"]  # fingerprint(key): what `credential=` takes


@dataclass(slots=True)
class Usable:
    """hroute's answer to "may I use this backend now?"."""

    usable: bool
    backend: str | None = None
    state: str = "unknown"
    reason: str | None = None
    retry_after_s: float | None = None
    source: str = "snapshot"  # snapshot | socket | fail-open

    def __bool__(self) -> bool:
        return self.usable


class Client:
    """Talks to the hroute daemon over its Unix socket (and reads its snapshot)."""

    def __init__(
        self, socket_path: str | os.PathLike[str] | None = None, budget_s: float = DEFAULT_BUDGET_S
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.budget_s = budget_s
        self._snapshot_path = str(snapshot_path(self.socket_path))
        self._snap_key: tuple[int, int, int] | None = None
        self._snap: dict[str, Any] | None = None
        self._dir_owner: int | None = None  # set once the directory is found trustworthy
        self._dir_checked_at = float("-inf")

    # --- the hot path ---------------------------------------------------------------

    def usable(
        self,
        backend: str | None = None,
        *,
        base_url: str | None = None,
        credential: str | None = None,
    ) -> Usable:
        """May the caller use (or restore) this backend now? Never raises."""
        try:
            snap = self._read_snapshot()
            if snap is not None:
                try:
                    return _from_snapshot(snap, backend, base_url, credential)
                except (KeyError, TypeError, ValueError, AttributeError):
                    self._snap = None  # malformed: ask the socket instead
            query = {
                k: v
                for k, v in (
                    ("backend", backend),
                    ("base_url", base_url),
                    ("credential", credential),
                )
                if v
            }
            status, body = self.request("GET", "/v1/usable?" + urlencode(query))
            if status == 200:
                return Usable(
                    bool(body["usable"]),
                    body.get("backend"),
                    body.get("state", "unknown"),
                    body.get("reason"),
                    body.get("retry_after_s"),
                    "socket",
                )
        except Exception:  # noqa: BLE001 - fail open, whatever happened
            pass
        return Usable(True, backend, "unknown", "hroute_unavailable", None, "fail-open")

    def _trusted_dir(self) -> bool:
        """The socket's directory is root's or ours (or the daemon's, placed by root) and
        writable by nobody else; otherwise another user could have planted the snapshot
        or swapped the socket, and hroute is not asked at all (fail open)."""
        if self._dir_owner is not None:
            return True
        now = time.monotonic()
        if now - self._dir_checked_at < DIR_RECHECK_S:
            return False
        self._dir_checked_at = now
        directory = self.socket_path.parent
        if untrusted_dir(directory) is None:
            self._dir_owner = os.stat(directory).st_uid
        return self._dir_owner is not None

    def _read_snapshot(self) -> dict[str, Any] | None:
        if not self._trusted_dir():
            raise OSError(f"{self.socket_path.parent} is not a directory hroute may trust")
        try:
            st = os.stat(self._snapshot_path)
        except OSError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._snap_key:
            self._snap, self._snap_key = self._load_snapshot(), key
        snap = self._snap
        if snap is None or snap["expires"] < time.monotonic():
            return None  # left behind by a daemon that is gone, or not one to trust: ask
        return snap

    def _load_snapshot(self) -> dict[str, Any] | None:
        """The snapshot if it is a regular file of the daemon's user (or root), of bounded
        size and well-formed; None (ask the socket) for anything else."""
        try:
            # O_NONBLOCK: a FIFO planted here must not hang the agent's turn.
            fd = os.open(self._snapshot_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SNAPSHOT_BYTES:
                return None
            if st.st_uid not in (0, os.getuid(), self._dir_owner) or st.st_mode & 0o002:
                return None
            raw = os.read(fd, MAX_SNAPSHOT_BYTES + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            snap = json.loads(raw, parse_constant=_no_constants)
        except (ValueError, RecursionError):
            return None
        ok = (
            isinstance(snap, dict)
            and snap.get("v") == 1
            and isinstance(snap.get("expires"), float | int)
            and math.isfinite(snap["expires"])
            and isinstance(snap.get("backends"), dict)
            and isinstance(snap.get("urls"), dict)
        )
        return snap if ok else None

    # --- the rest of the API ---------------------------------------------------------

    def route(
        self, profile: str, exclude: list[str] | tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """The backend to use for `profile`, or None when hroute cannot say (fail open).

        When no backend of the profile is usable the answer has `backend: None` and
        `retry_after_s`.
        """
        query = {"profile": profile}
        if exclude:
            query["exclude"] = ",".join(exclude)
        try:
            status, body = self.request("GET", "/v1/route?" + urlencode(query))
        except Exception:  # noqa: BLE001
            return None
        return body if status in (200, 503) else None

    def report(
        self,
        backend: str | None = None,
        *,
        base_url: str | None = None,
        outcome: str = "failure",
        reason: str | None = None,
        **fields: Any,
    ) -> bool:
        """Tell hroute what the caller saw; True when the daemon took it. Never raises."""
        body = {
            "backend": backend,
            "base_url": base_url,
            "outcome": outcome,
            "reason": reason,
            **fields,
        }
        try:
            status, _ = self.request(
                "POST", "/v1/reports", {k: v for k, v in body.items() if v is not None}
            )
        except Exception:  # noqa: BLE001
            return False
        return status == 202

    def request(
        self, method: str, path: str, body: Any = None, budget_s: float | None = None
    ) -> tuple[int, Any]:
        """One HTTP/1.1 exchange over the socket; raises OSError/TimeoutError/ValueError."""
        deadline = time.monotonic() + (self.budget_s if budget_s is None else budget_s)
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {quote(path, safe='/?&=%,:+@')} HTTP/1.1\r\nHost: hroute\r\n"
            f"Connection: close\r\nContent-Length: {len(payload)}\r\n"
        )
        if payload:
            head += "Content-Type: application/json\r\n"
        if not self._trusted_dir():
            raise PermissionError(f"{self.socket_path.parent} is not a directory hroute may trust")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_left(deadline))
            sock.connect(str(self.socket_path))
            sock.sendall(head.encode() + b"\r\n" + payload)
            chunks = []
            while True:
                sock.settimeout(_left(deadline))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return _parse_response(b"".join(chunks))


def _from_snapshot(
    snap: dict[str, Any], backend: str | None, base_url: str | None, credential: str | None
) -> Usable:
    backends = snap["backends"]
    name = backend if backend in backends else None
    if name is None and base_url:
        name = snap["urls"].get(_normalized(base_url))
    if name is None:
        return Usable(True, backend, "unknown", "not_monitored", None)
    entry = backends[name]
    verdict = decide(
        time.monotonic(),
        block=entry["blocked"],
        until=entry["until"],
        until_reason=entry["until_reason"],
        credentials=entry["creds"],
        credential=credential,
    )
    return Usable(verdict.usable, name, entry["state"], verdict.reason, verdict.retry_after_s)


@functools.lru_cache(maxsize=256)
def _normalized(base_url: str) -> str:
    return normalize_base_url(base_url)  # agents ask about the same few URLs every turn


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number hroute writes")


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("hroute did not answer within the budget")
    return left


def _parse_response(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError("not an HTTP response")
    return int(status_line[1]), (json.loads(body) if body else None)

"""The agent-side client: standard library only, synchronous, and fail-open.

`usable()` is on every agent turn, so it reads the snapshot the daemon publishes beside
its socket (a stat and a dict lookup when nothing changed) and only falls back to a
socket round trip when the snapshot is missing or expired. Whatever goes wrong (no
daemon, a refused connection, no answer within the budget) the answer lets the caller
go ahead exactly as if hroute did not exist; nothing here raises into the caller.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from hroute.core.credentials import fingerprint
from hroute.core.snapshot_format import SnapshotFile
from hroute.paths import default_socket_path, snapshot_path, untrusted_dir
from hroute.snapshot_reader import Usable, _from_snapshot
from hroute.wire import _Closed, _exchange, _left

DEFAULT_BUDGET_S = 0.1
MAX_SNAPSHOT_BYTES = 16 * 1024 * 1024  # ten thousand backends; a 400 MB plant is not read
DIR_RECHECK_S = 1.0

__all__ = ["Client", "Usable", "fingerprint"]  # fingerprint(key): what `credential=` takes


class Client:
    """Talks to the hroute daemon over its Unix socket (and reads its snapshot)."""

    def __init__(
        self, socket_path: str | os.PathLike[str] | None = None, budget_s: float = DEFAULT_BUDGET_S
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.budget_s = budget_s
        self._snapshot_path = str(snapshot_path(self.socket_path))
        self._snap_key: tuple[int, int, int] | None = None
        self._snap: SnapshotFile | None = None
        self._conn: socket.socket | None = None  # kept open between calls
        self._conn_pid = 0  # a forked child must not share its parent's connection
        self._lock = threading.Lock()
        self._dir_owner: int | None = None  # set once the directory is found trustworthy
        self._dir_checked_at = float("-inf")

    # --- the hot path ---------------------------------------------------------------

    def usable(
        self,
        backend: str | None = None,
        *,
        base_url: str | None = None,
        credential: str | None = None,
        model: str | None = None,
    ) -> Usable:
        """May the caller use (or restore) this backend now? Never raises.

        Its server, `model` on it (by default the model of the backend configured there) and,
        with `credential`, that key all decide.
        """
        try:
            snap = self._read_snapshot()
            if snap is not None and _caught_up(self._snapshot_path, snap):
                try:
                    return _from_snapshot(snap, backend, base_url, credential, model)
                except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
                    self._snap = None  # malformed: ask the socket instead
            query = {
                k: v
                for k, v in (
                    ("backend", backend),
                    ("base_url", base_url),
                    ("credential", credential),
                    ("model", model),
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
        except Exception:  # fail open, whatever happened
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

    def _read_snapshot(self) -> SnapshotFile | None:
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
        if snap is None or snap.expires < time.monotonic():
            return None  # left behind by a daemon that is gone, or not one to trust: ask
        return snap

    def _load_snapshot(self) -> SnapshotFile | None:
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
            raw = os.read(fd, st.st_size + 1)  # the size it has: a 16 MB buffer costs 50 µs
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            return SnapshotFile(raw)
        except (ValueError, RecursionError):
            return None

    # --- the rest of the API ---------------------------------------------------------

    def route(
        self,
        profile: str,
        exclude: list[str] | tuple[str, ...] = (),
        *,
        task: str | None = None,
        needs: str | None = None,
        allow_paid: bool = False,
        credential: str | None = None,
        task_type: str | None = None,
    ) -> dict[str, Any] | None:
        """The backend to use for `profile`, or None when hroute cannot say (fail open).

        `task` routes a task that failed locally often enough past the local tier;
        `needs` is e.g. "vision,tools,context:20000"; `allow_paid` uses paid backends past
        their budget (the user confirmed); `credential` is the caller's key fingerprint.
        When no backend is usable the answer has `backend: None`, each backend's reason,
        `help`, and `retry_after_s` (or `retry_after_unknown`).
        """
        query = {"profile": profile}
        if exclude:
            query["exclude"] = ",".join(exclude)
        for key, value in (
            ("task", task), ("needs", needs), ("credential", credential), ("task_type", task_type)
        ):  # fmt: skip
            if value:
                query[key] = value
        if allow_paid:
            query["allow_paid"] = "1"
        try:
            status, body = self.request("GET", "/v1/route?" + urlencode(query))
        except Exception:
            return None
        return body if status in (200, 503) else None

    def task_failure(
        self, task: str, reason: str, *, detail: str | None = None
    ) -> dict[str, Any] | None:
        """Report that `task` failed on its backend (`reason`: repeated_tool_failure,
        invalid_output, no_progress, task_timeout, user_request); the answer says, per
        profile, whether the task now escalates. None when hroute cannot say. Never raises."""
        body = {"reason": reason, **({"detail": detail[:2000]} if detail else {})}
        try:
            status, answer = self.request(
                "POST", f"/v1/tasks/{quote(task, safe='')}/failures", body
            )
        except Exception:
            return None
        return answer if status == 202 else None

    def usage(
        self,
        backend: str | None = None,
        *,
        base_url: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> dict[str, Any] | None:
        """Add a call's tokens to today's spend of a paid backend; the answer carries the
        spend and whether a budget now blocks it. None when hroute cannot say. Never raises."""
        body = {
            k: v
            for k, v in (
                ("backend", backend),
                ("base_url", base_url),
                ("input_tokens", input_tokens),
                ("output_tokens", output_tokens),
            )
            if v is not None
        }
        try:
            status, answer = self.request("POST", "/v1/usage", body)
        except Exception:
            return None
        return answer if status == 202 else None

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
            status, answer = self.request(
                "POST", "/v1/reports", {k: v for k, v in body.items() if v is not None}
            )
            if status == 202 and isinstance(answer, dict) and "seen" in answer:
                _REPORTED[self._snapshot_path] = (answer["seen"]["pid"], answer["seen"]["version"])
        except Exception:
            return False
        return status == 202

    def request(
        self, method: str, path: str, body: Any = None, budget_s: float | None = None
    ) -> tuple[int, Any]:
        """One HTTP/1.1 exchange over the socket; raises OSError/TimeoutError/ValueError.

        The connection is kept for the next call (an agent asks every turn); one that the
        daemon closed meanwhile (restart, idle timeout) is replaced once, transparently.
        Threads share nothing: a call that finds the connection in use opens its own.
        """
        deadline = time.monotonic() + (self.budget_s if budget_s is None else budget_s)
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {quote(path, safe='/?&=%,:+@')} HTTP/1.1\r\nHost: hroute\r\n"
            f"Content-Length: {len(payload)}\r\n"
        )
        if payload:
            head += "Content-Type: application/json\r\n"
        wire = head.encode() + b"\r\n" + payload
        if not self._trusted_dir():
            raise PermissionError(f"{self.socket_path.parent} is not a directory hroute may trust")
        if not self._lock.acquire(blocking=False):
            return _exchange(self._connect(deadline), wire, deadline, keep=False)[0]
        try:
            kept = self._conn if self._conn_pid == os.getpid() else None
            self._conn = None
            if kept is not None:
                try:
                    answer, reusable = _exchange(kept, wire, deadline, keep=True)
                except (ConnectionError, _Closed):
                    kept.close()  # the daemon let it go: one fresh try, below
                else:
                    self._keep(kept if reusable else None)
                    return answer
            sock = self._connect(deadline)
            answer, reusable = _exchange(sock, wire, deadline, keep=True)
            self._keep(sock if reusable else None)
            return answer
        finally:
            self._lock.release()

    def _connect(self, deadline: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_left(deadline))
            sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        return sock

    def _keep(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        self._conn, self._conn_pid = sock, os.getpid()

    def close(self) -> None:
        """Close the kept connection (it is also closed when the client is collected)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        conn = self.__dict__.get("_conn")
        if conn is not None:
            conn.close()


# Snapshot path -> (daemon pid, registry version) of this process's latest report. Until the
# snapshot holds that version, usable() asks the socket: an agent reads its own report back
# at once, though the daemon coalesces snapshot writes.
_REPORTED: dict[str, tuple[int, int]] = {}


def _caught_up(path: str, snap: SnapshotFile) -> bool:
    seen = _REPORTED.get(path)
    if seen is None or snap.pid != seen[0]:
        return True  # nothing reported, or to a daemon that has since been replaced
    if isinstance(snap.version, int) and snap.version >= seen[1]:
        del _REPORTED[path]
        return True
    return False

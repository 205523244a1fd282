"""The listening Unix socket: inherited from systemd, or made here safely."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

from hroute.core.errors import HrouteError, SocketInUseError
from hroute.edges.files import prepare_dir
from hroute.edges.limits import BACKLOG

SD_LISTEN_FDS_START = 3


def inherited_socket(env: dict[str, str] | None = None) -> socket.socket | None:
    """The AF_UNIX listening socket systemd passed (LISTEN_FDS), if it is for us."""
    env = os.environ if env is None else env
    if env.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM:
            os.set_inheritable(fd, False)
            sock.setblocking(False)
            return sock
        sock.detach()
    return None


def bind_unix_socket(path: Path, mode: int = 0o660) -> socket.socket:
    """Bind a listening socket at `path`, replacing a stale one, refusing a live one.

    The directory must be ours (or root's) and writable by nobody else: in a directory
    another user owns or can write, that user could swap the socket for their own.
    """
    prepare_socket_dir(path)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise HrouteError(f"{path}: exists and is not a socket; refusing to replace it")
        if _is_live(path):
            raise SocketInUseError(str(path))
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bind under a restrictive umask so the socket is never briefly open to everyone.
        old = os.umask(0o777 & ~mode)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, mode)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise HrouteError(f"{path}: cannot listen: {exc.strerror or exc}") from exc
    return sock


def prepare_socket_dir(path: Path) -> None:
    """Make the socket's directory (0700) and check that nobody else can write it: the lock
    and the snapshot are written there too."""
    prepare_dir(path.parent, "serve")


def lock_socket_path(path: Path) -> int:
    """Hold `<socket>.lock` for the daemon's life; SocketInUseError if another daemon does.

    A socket file deleted under a running daemon once let a second daemon start on the same
    path: two registries, each with its own state. The lock outlives the file.
    """
    prepare_socket_dir(path)
    lock = path.with_name(path.name + ".lock")
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(lock, flags, 0o600)
    except OSError as exc:
        why = "a symbolic link (not followed)" if exc.errno == errno.ELOOP else exc.strerror
        raise HrouteError(f"{lock}: cannot use it as the lock file: {why or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HrouteError(f"{lock}: cannot use it as the lock file: not a regular file")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SocketInUseError(str(path)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def keep_lock(path: Path, fd: int) -> int:
    """`fd` if it still locks the lock file at `path`'s side, else a lock on a new one (the
    directory was emptied): SocketInUseError if another daemon took the path meanwhile."""
    lock = path.with_name(path.name + ".lock")
    try:
        same = os.stat(lock).st_ino == os.fstat(fd).st_ino
    except OSError:
        same = False
    if same:
        return fd
    new = lock_socket_path(path)
    os.close(fd)
    return new


def socket_inode(path: Path) -> int | None:
    """The inode of the socket file at `path` (None when it is gone or not a socket)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ino if stat.S_ISSOCK(st.st_mode) else None


def _is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    else:
        return True
    finally:
        with contextlib.suppress(OSError):
            probe.close()


def listen_tcp(address: str) -> socket.socket:
    """A listening TCP socket for `host:port` (`[::1]:9464` for IPv6), for /metrics."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        sock = socket.create_server((host, int(port)), backlog=BACKLOG)
    except (OSError, ValueError) as exc:
        raise HrouteError(f"metrics_listen {address}: cannot listen: {exc}") from exc
    sock.setblocking(False)
    return sock

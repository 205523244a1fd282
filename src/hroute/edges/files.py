"""The files hroute writes and reads back: never half-written, never through a planted link,
never a read that blocks or has no end.

The directories it writes in (state, socket) are checked at start-up (`prepare_dir`): only
root and hroute's own user may write them. Even so, every file is opened so that a link
or a FIFO placed there is refused, not followed: a root daemon writing through a planted
symlink would overwrite any file on the machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

from hroute.core.errors import HrouteError
from hroute.paths import untrusted_dir

READ_CHUNK = 1 << 20


class UnreadableFileError(OSError):
    """A file that is there but is no regular file of a sane size: set it aside, never read."""


def prepare_dir(directory: Path, what: str) -> None:
    """Make `directory` (every missing level 0700) and check that only we or root can write
    it; HrouteError naming the directory and its owner otherwise. `what`: "keep state"."""
    for level in [*reversed(directory.parents), directory]:
        try:
            os.mkdir(level, 0o700)  # every directory made here is private, not just the last
        except FileExistsError:
            continue
        except OSError as exc:
            raise HrouteError(
                f"cannot {what} in {directory}: cannot create {level}: {exc.strerror or exc}"
            ) from None
    if not directory.is_dir():
        raise HrouteError(f"cannot {what} in {directory}: not a directory")
    problem = untrusted_dir(directory, for_writing=True)
    if problem is not None:
        raise HrouteError(f"refusing to {what} in {problem}")


def write_atomically(
    path: Path, data: bytes | Sequence[bytes], mode: int = 0o640, *, durable: bool = False
) -> None:
    """Write-then-rename, so a reader sees the old file or the new one, never half of one.

    `data` is the content, or its parts in order (written one after the other, never joined).

    The temp file has an unguessable name and is created with O_EXCL|O_NOFOLLOW: a link
    planted under any name is never written through. A write that cannot finish (a full
    disk) raises OSError and leaves the old file in place, with no temp file behind.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode)
    try:
        try:
            for part in [data] if isinstance(data, bytes) else data:
                _write_all(fd, part)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def remove_leftovers(path: Path) -> int:
    """Remove the temp files of `path` that a daemon killed mid-write left (they have random
    names, so nothing else ever would); links are removed, never followed. How many."""
    removed = 0
    prefix = f".{path.name}."
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _write_all(fd: int, data: bytes) -> None:
    # os.write may write less than asked (a full disk writes what fits); what it left out
    # is written again, and a write that makes no progress is the error it stands for.
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "a write made no progress (no space left on device?)")
        view = view[n:]


def read_regular_file(path: Path, limit: int, *, follow: bool = True) -> bytes:
    """The content of the regular file at `path`, if it holds at most `limit` bytes.

    Opened non-blocking, so that a FIFO put in its place never hangs the reader; a FIFO,
    a device, a directory (and a symlink, unless `follow`) or a file over `limit` raise
    UnreadableFileError; what cannot be opened raises the OSError it gave.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise UnreadableFileError(f"{path}: a symbolic link (not followed)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFileError(f"{path}: not a regular file (a {_kind(st.st_mode)})")
        if st.st_size > limit:
            raise UnreadableFileError(f"{path}: {st.st_size} bytes, over the {limit}-byte limit")
        chunks, total = [], 0
        while chunk := os.read(fd, min(READ_CHUNK, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew while being read
                raise UnreadableFileError(f"{path}: over the {limit}-byte limit")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"

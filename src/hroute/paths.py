"""Where hroute's socket and snapshot live. Standard library only: agents import it too."""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from pathlib import Path


def default_socket_path(env: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """$HROUTE_SOCKET; else $RUNTIME_DIRECTORY/hroute.sock; /run/hroute/hroute.sock as root;
    else $XDG_RUNTIME_DIR/hroute/hroute.sock."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    if env.get("HROUTE_SOCKET"):
        return Path(env["HROUTE_SOCKET"])
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "hroute.sock"
    if uid == 0:
        return Path("/run/hroute/hroute.sock")
    runtime = env.get("XDG_RUNTIME_DIR") or f"/tmp/hroute-{uid}"
    return Path(runtime) / "hroute" / "hroute.sock"


def snapshot_path(socket_path: Path) -> Path:
    """The snapshot file published beside the socket."""
    return Path(socket_path).with_suffix(".snapshot")


def default_state_dir(env: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """$STATE_DIRECTORY (systemd); /var/lib/hroute as root; else $XDG_STATE_HOME/hroute."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if uid == 0:
        return Path("/var/lib/hroute")
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hroute"


def untrusted_dir(
    directory: Path, uid: int | None = None, *, for_writing: bool = False
) -> str | None:
    """Why `directory` may not hold hroute's socket and snapshot for `uid`, or None.

    Another user who owns or can write a directory on the way can swap the socket (and
    receive an agent's reports) or plant a snapshot. So every directory from `/` down must
    be owned by root or `uid` and writable by nobody else; the only exception is the last
    one, which may belong to a third user (the daemon's, e.g. /run/hroute) when its parent
    is root's and writable by nobody else, so that only root can have put it there.
    A sticky, world-writable directory such as /tmp may be passed through, not used.

    `for_writing`: the daemon is about to write files there, and the exception does not
    hold: a third user who owns the directory could plant a link a root daemon writes
    through, so the last directory too must be root's or `uid`'s.
    """
    uid = os.getuid() if uid is None else uid
    try:
        directory = Path(os.path.realpath(directory))
        chain = [*reversed(directory.parents), directory]
        stats = [os.stat(p) for p in chain]
    except OSError as exc:
        return f"{directory}: {exc.strerror or exc}"
    for i, (path, st) in enumerate(zip(chain, stats, strict=True)):
        last = i == len(chain) - 1
        others_write = st.st_mode & 0o022
        if st.st_uid not in (0, uid):
            parent = stats[i - 1] if i else None
            placed_by_root = (
                parent is not None and parent.st_uid == 0 and not parent.st_mode & 0o022
            )
            if not (last and placed_by_root and not for_writing):
                return f"{path}: owned by {_user(st.st_uid)}, not by root or uid {uid}"
        if others_write and not (st.st_uid == 0 and st.st_mode & 0o1000 and not last):
            return (
                f"{path}: writable by group or others "
                f"(mode {st.st_mode & 0o7777:o}, owned by {_user(st.st_uid)})"
            )
    return None


def _user(uid: int) -> str:
    """`uid 1001 (alice)`: the number always, the name when there is one."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"

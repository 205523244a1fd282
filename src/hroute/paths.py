"""Where hroute's socket and snapshot live. Standard library only: agents import it too."""

from __future__ import annotations

import os
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

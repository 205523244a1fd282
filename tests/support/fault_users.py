"""Real second (and third) users for the fault matrix: created for a session, then removed.

The daemon and the client run as these users through `setpriv` on the system's
/usr/bin/python3 with this checkout's packages on PYTHONPATH (the development interpreter
may live where other users cannot read).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int

    def argv(self, *args: str) -> list[str]:
        """`args` run as this user, with no supplementary groups."""
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            *args,
        ]

    def env(self, **extra: str) -> dict[str, str]:
        site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": "/nonexistent",
            "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}:{site / 'site-packages'}",
            "PYTHONDONTWRITEBYTECODE": "1",
            **extra,
        }

    def python(
        self, code: str, timeout_s: float = 20, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """Run `code` with the system Python as this user; return the finished process."""
        return subprocess.run(
            self.argv(SYSTEM_PYTHON, "-c", code),
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd="/",
        )

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(SYSTEM_PYTHON, *args),
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )


def create_user(name: str) -> User:
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid)


def remove_user(user: User) -> None:
    subprocess.run(["userdel", user.name], check=False, capture_output=True)


def usable_for_others() -> bool:
    return os.geteuid() == 0 and Path(SYSTEM_PYTHON).exists()

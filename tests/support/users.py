"""Another, unprivileged user for tests: a group to be in or not, a directory and an hroute
that user can reach (the test venv's interpreter lives under /root, which others cannot enter)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def skip_or_fail(why: str) -> None:
    """Skip on a developer's machine; in CI (root, Debian) this test must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but: {why}", pytrace=False)
    pytest.skip(why)


@contextmanager
def throwaway_group() -> Iterator[str]:
    """A throwaway group standing for `hroute` (removed afterwards)."""
    if os.geteuid() != 0 or shutil.which("groupadd") is None:
        skip_or_fail("needs root and groupadd to create a group and switch users")
    name = f"hrt{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", "--system", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], check=True, timeout=30)


@contextmanager
def shared_tmpdir() -> Iterator[Path]:
    """A directory other users may enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="hroute-doctor-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


REPO = Path(__file__).resolve().parents[2]


def installed_for_everyone(where: Path) -> Path:
    """hroute installed from this checkout into a venv on the system Python, as `make install`
    does: the test venv's interpreter lives under /root, which other users cannot enter."""
    system_python = Path("/usr/bin/python3")
    if not system_python.exists():
        skip_or_fail("needs /usr/bin/python3 to install hroute for another user")
    venv = where / "venv"
    subprocess.run([str(system_python), "-m", "venv", str(venv)], check=True, timeout=60)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        + ["--disable-pip-version-check", str(REPO)],
        check=True,
        timeout=180,
        capture_output=True,
    )
    return venv / "bin" / "hroute"


def as_nobody(argv: list[str], home: Path, groups: str | None = None, **env: str) -> list[str]:
    """`argv` run as user nobody (in `groups` only), with a clean environment plus `env`."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        skip_or_fail("needs root and setpriv to run a command as another user")
    who = ["--reuid=nobody", "--regid=nogroup"]
    who += [f"--groups={groups}"] if groups else ["--clear-groups"]
    extra = [f"{k}={v}" for k, v in env.items()]
    return [
        "setpriv",
        *who,
        "--",
        "env",
        "-i",
        f"HOME={home}",
        f"PATH={os.environ['PATH']}",
        *extra,
        *argv,
    ]

"""Which directories may hold hroute's socket and snapshot."""

from __future__ import annotations

import os
from pathlib import Path

from hroute.paths import untrusted_dir


def test_own_private_directory_is_trusted(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    assert untrusted_dir(d) is None


def test_group_or_world_writable_is_not(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    d.chmod(0o777)
    assert "writable by group or others" in untrusted_dir(d)


def test_another_users_directory_is_not(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o755)
    os.chown(d, 4242, 4242)
    inner = d / "hroute"
    inner.mkdir(mode=0o700)
    # Placed by root in a root directory: the daemon's own (like /run/hroute) is fine...
    assert untrusted_dir(d, uid=1000) is None
    # ... but anything below a directory of a third user is not.
    assert "owned by uid 4242" in untrusted_dir(inner, uid=1000)


def test_tmp_itself_is_passed_through_not_used() -> None:
    assert untrusted_dir(Path("/tmp")) is not None
    assert untrusted_dir(Path("/")) is None


def test_missing_directory_is_not_trusted(tmp_path: Path) -> None:
    assert untrusted_dir(tmp_path / "nope") is not None


def test_a_directory_to_write_in_must_be_our_own_or_roots(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir(mode=0o755)
    os.chown(d, 4242, 4242)
    # A client may read a snapshot there (root put the directory there for the daemon) ...
    assert untrusted_dir(d, uid=0) is None
    # ... but a root daemon must not write in it: its owner could plant a link.
    problem = untrusted_dir(d, uid=0, for_writing=True)
    assert problem is not None and problem.startswith(f"{d}: owned by uid 4242")
    assert untrusted_dir(d, uid=4242, for_writing=True) is None

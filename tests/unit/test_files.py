"""Files hroute writes: a planted symlink is never followed, a short write never replaces."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hroute.edges import files
from hroute.edges.files import write_atomically


def test_a_planted_temp_symlink_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    state = tmp_path / "state.json"
    # Whatever name an attacker guesses for the temp file (the old one was predictable).
    for name in (f".state.json.{os.getpid()}.tmp", ".state.json.tmp", "state.json.tmp"):
        (tmp_path / name).symlink_to(victim)
    write_atomically(state, b'{"new": 1}', durable=True)
    assert victim.read_bytes() == b"precious"
    assert state.read_bytes() == b'{"new": 1}' and not state.is_symlink()


def test_a_short_write_on_a_full_disk_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(b"old good state")
    real_write = os.write
    calls = []

    def full_disk(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data[:4096]))  # what fits: a page, then nothing

    monkeypatch.setattr(files.os, "write", full_disk)
    with pytest.raises(OSError) as info:
        write_atomically(state, b"x" * 10_000, durable=True)
    assert info.value.errno == errno.ENOSPC
    assert state.read_bytes() == b"old good state"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp file left


def test_a_write_that_makes_no_progress_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(b"old")
    monkeypatch.setattr(files.os, "write", lambda fd, data: 0)
    with pytest.raises(OSError):
        write_atomically(state, b"new")
    assert state.read_bytes() == b"old"


def test_partial_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(files.os, "write", lambda fd, data: real_write(fd, bytes(data[:1000])))
    state = tmp_path / "state.json"
    data = bytes(range(256)) * 40
    write_atomically(state, data)
    assert state.read_bytes() == data


def test_a_file_given_in_parts_is_written_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = tmp_path / "snapshot.json"
    parts = [b"head", b"\n", b"", bytes(range(256)) * 40, b"tail"]
    real_write = os.write
    monkeypatch.setattr(files.os, "write", lambda fd, data: real_write(fd, bytes(data[:1000])))
    write_atomically(snapshot, parts)
    assert snapshot.read_bytes() == b"".join(parts)
    writes: list[int] = []

    def full_at_the_third(fd: int, data: bytes) -> int:
        writes.append(len(data))
        if len(writes) >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(files.os, "write", full_at_the_third)
    with pytest.raises(OSError):
        write_atomically(snapshot, [b"new", b"\n", b"never written whole"])
    assert snapshot.read_bytes() == b"".join(parts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.json"]


def test_temp_files_a_crash_left_behind_are_removed_and_nothing_else(tmp_path: Path) -> None:
    from hroute.edges.files import remove_leftovers

    state = tmp_path / "state.json"
    state.write_text("{}")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    left = [tmp_path / ".state.json.0123abcd.tmp", tmp_path / ".state.json.4242.tmp"]
    for p in left:
        p.write_text("half a file")
    (tmp_path / ".state.json.link.tmp").symlink_to(victim)
    others = [tmp_path / ".other.json.1.tmp", tmp_path / "state.json.bad-1"]
    for p in others:
        p.write_text("not ours to remove")
    assert remove_leftovers(state) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["state.json", "victim", ".other.json.1.tmp", "state.json.bad-1"]
    )
    assert victim.read_text() == "precious"

"""The files hroute writes and reads: a planted link, a full disk, a FIFO, /dev/zero, a huge or
unreadable state file, a symlinked lock. Each refusal is one clear line, never a traceback."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.fault_users import User
from tests.support.faults import config, still_answers, unprobed
from tests.support.procs import free_port

pytestmark = [pytest.mark.faults, pytest.mark.system]

TEXT = config({"a": unprobed(free_port()), "b": unprobed(free_port())})


def cool(d: Daemon, name: str, seconds: int = 600) -> None:
    d.client().report(name, outcome="failure", reason="rate_limit", retry_after_s=seconds)


def refusal(d: Daemon) -> str:
    """The daemon exited at start-up: its one line, checked to be the only thing it said."""
    assert d.proc is not None
    rc = d.proc.wait(20)
    d.stop()
    assert rc != 0, d.log
    assert "Traceback" not in d.log, d.log
    said = [line for line in d.lines if line.startswith("hroute: ")]
    assert len(said) == 1, d.log
    return said[0]


def serving_or_exited(d: Daemon) -> str:
    def check() -> str | None:
        assert d.proc is not None
        if d.proc.poll() is not None:
            return "exited"
        try:
            status, _ = d.client().request("GET", "/v1/version", budget_s=1)
        except (OSError, TimeoutError, ValueError):
            return None
        return "serving" if status == 200 else None

    return wait_until(check, 20, what="the daemon to serve or exit")


def test_a_root_daemon_never_writes_through_a_link_planted_in_another_users_state_dir(
    users: tuple[User, User], tmp_path: Path
) -> None:
    _, other = users
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, other.uid, other.gid)
    target = tmp_path / "root-owned.conf"
    target.write_text("precious\n")
    d = Daemon(tmp_path, TEXT, env={"HROUTE_STATE_DIR": str(theirs)})
    d.start(wait=False)
    try:
        assert d.proc is not None
        # What the other user can do in a directory of theirs: guess the temp file's name.
        for name in (f".state.json.{d.proc.pid}.tmp", "state.json"):
            (theirs / name).symlink_to(target)
            os.lchown(theirs / name, other.uid, other.gid)
        if serving_or_exited(d) == "serving":
            cool(d, "a")
            with contextlib.suppress(AssertionError):
                wait_until(lambda: target.read_text() != "precious\n", 5, what="a save")
        assert target.read_text() == "precious\n"
        line = refusal(d)
    finally:
        d.stop()
    assert str(theirs) in line and f"owned by uid {other.uid} ({other.name})" in line, line


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs for the state directory: a disk that fills up."""
    if os.geteuid() != 0:
        pytest.fail("the full-disk case needs root to mount a small tmpfs")
    where = tmp_path / "state"
    where.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill_but_a_page(directory: Path) -> None:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - 4096)


def test_a_full_disk_keeps_the_good_state_and_says_so_once(tiny_disk: Path, tmp_path: Path) -> None:
    many = config({f"b{i}": unprobed(free_port()) for i in range(60)})
    d = Daemon(tmp_path, many, env={"HROUTE_STATE_DIR": str(tiny_disk)})
    state = tiny_disk / "state.json"
    with d:
        cool(d, "b0")
        wait_until(lambda: state.exists() and '"rate_limit"' in state.read_text(), what="a save")
        good = state.read_bytes()
        assert len(good) > 2 * 4096  # the next one cannot fit in the page left
        _fill_but_a_page(tiny_disk)
        cool(d, "b1")
        d.wait_for_log("cannot save state: ")
        cool(d, "b2")  # a second failing save, and a third at shutdown
    assert state.read_bytes() == good
    assert sum("cannot save state" in line for line in d.lines) == 1, d.log
    assert not [p.name for p in tiny_disk.iterdir() if p.name.endswith(".tmp")]
    (tiny_disk / "filler").unlink()
    with Daemon(tmp_path, many, env={"HROUTE_STATE_DIR": str(tiny_disk)}) as again:
        assert again.backend("b0")["usable"] is False  # the good file's cooldown came back
        cool(again, "b3")
        wait_until(lambda: '"b3"' in state.read_text() or state.read_bytes() != good)
        still_answers(again)


def _state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    return directory


def test_a_fifo_for_state_json_does_not_hang_the_start(tmp_path: Path) -> None:
    os.mkfifo(_state_dir(tmp_path) / "state.json")
    with Daemon(tmp_path, TEXT) as d:
        d.wait_for_log("set aside")
        [aside] = (tmp_path / "state").glob("state.json.bad-*")
        assert aside.is_fifo()
        still_answers(d)


class _SmallDaemon(Daemon):
    """A daemon that cannot take more than 1 GiB of address space: memory exhaustion fails
    fast instead of taking the machine with it."""

    def _limit_fds(self) -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("kind", ["dev-zero", "sparse-4GiB"])
def test_an_endless_or_huge_state_json_is_set_aside_unread(tmp_path: Path, kind: str) -> None:
    state = _state_dir(tmp_path) / "state.json"
    if kind == "dev-zero":
        state.symlink_to("/dev/zero")
    else:
        with open(state, "wb") as f:
            f.truncate(4 << 30)
    d = _SmallDaemon(tmp_path, TEXT, env={"MALLOC_ARENA_MAX": "2"})
    d.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    with d:
        d.wait_for_log("set aside")
        assert not state.exists() and list(state.parent.glob("state.json.bad-*"))
        still_answers(d)


def test_an_unreadable_state_json_is_set_aside_not_overwritten(
    users: tuple[User, User], tmp_path: Path
) -> None:
    victim, _ = users
    home = Path(f"/tmp/hrf-mode000-{victim.uid}")
    subprocess.run(["rm", "-rf", str(home)], check=True)
    try:
        (home / "state").mkdir(parents=True, mode=0o700)
        (home / "hroute.yaml").write_text(TEXT)
        state = home / "state" / "state.json"
        state.write_text('{"cooldowns": "the victim wants these back"}')
        state.chmod(0)
        for p in (home, home / "state", home / "hroute.yaml", state):
            os.chown(p, victim.uid, victim.gid)
        sock = home / "run" / "hroute.sock"
        proc = victim.popen(
            "-m", "hroute.cli", "run", "--config", str(home / "hroute.yaml"),
            HROUTE_STATE_DIR=str(home / "state"), HROUTE_SOCKET=str(sock),
        )  # fmt: skip
        try:
            wait_until(sock.exists, 20, what="the victim's daemon to listen")
            report = (
                "from hroute.client import Client; "
                f"print(Client({str(sock)!r}).report('a', reason='rate_limit', "
                "retry_after_s=600))"
            )
            assert victim.python(report).stdout.strip() == "True"
            wait_until(state.exists, 10, what="a save")
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=20)
        kept = [p for p in state.parent.iterdir() if p.name.startswith("state.json.bad-")]
        assert [p.read_text() for p in kept] == ['{"cooldowns": "the victim wants these back"}']
        assert "set aside" in err and "Permission denied" in err, err
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=True)


def test_a_symlinked_lock_file_is_one_clear_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text("")
    (run / "hroute.sock.lock").symlink_to(target)
    d = Daemon(tmp_path, TEXT)
    d.start(wait=False)
    line = refusal(d)
    assert str(run / "hroute.sock.lock") in line and "symbolic link" in line, line


def test_a_config_replaced_by_a_fifo_does_not_block_the_loop(tmp_path: Path) -> None:
    with Daemon(tmp_path, TEXT) as d:
        cool(d, "a")
        fifo = tmp_path / "new.yaml"
        os.mkfifo(fifo)
        os.replace(fifo, d.config_path)
        d.wait_for_log("config rejected")
        assert "not a regular file" in d.log
        still_answers(d)
        assert d.backend("a")["usable"] is False  # the old configuration and its state


LAUGHS = (
    "_: ["
    + ", ".join(
        ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [
            f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        ]
    )
    + "]\n"
)


@pytest.mark.parametrize(
    "bad, says",
    [
        (TEXT.replace("backends:\n", "backends:\n  a: {kind: openai, base_url: 'http://x'}\n"),
         "duplicate key 'a'"),
        (TEXT.replace("base_s: 30", "base_s: .inf"), "defaults.cooldown.base_s (line 3)"),
        (TEXT.replace("max_s: 300", "max_s: .nan"), "defaults.cooldown.max_s (line 3)"),
        (LAUGHS + TEXT.replace("kind: openai", "kind: *f", 1), "aliases expand this file"),
    ],
    ids=["backend-twice", "base_s-inf", "max_s-nan", "billion-laughs"],
)  # fmt: skip
def test_a_hostile_reload_is_refused_and_the_daemon_keeps_its_config(
    tmp_path: Path, bad: str, says: str
) -> None:
    with Daemon(tmp_path, TEXT) as d:
        cool(d, "a")
        d.config_path.write_text(bad)
        line = d.wait_for_log("config rejected")
        still_answers(d)
        assert says in d.log, d.log[-3000:]
        assert len(d.log) < 20_000  # a short error, not megabytes of one
        assert d.backend("a")["usable"] is False and {
            b["name"] for b in d.get("/v1/backends")[1]["backends"]
        } == {"a", "b"}, line

"""Local users: another user's directory, planted snapshots, the socket's permissions.

Run as real unprivileged users (created for the session, removed after it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hroute.core.snapshot_format import encode
from tests.support.daemon import Daemon, wait_until
from tests.support.fault_users import User
from tests.support.faults import config, still_answers, unprobed
from tests.support.procs import free_port

pytestmark = [pytest.mark.faults, pytest.mark.system]

ASK_USABLE = (
    "import json, time; from hroute.client import Client; c = Client(budget_s=0.5); "
    "t = time.monotonic(); u = c.usable('x'); "
    "print(json.dumps({'usable': u.usable, 'source': u.source, 's': time.monotonic() - t}))"
)
# A well-formed snapshot (the format the daemon writes) that says backend x is down.
ALL_DOWN = encode(
    {"pid": 1, "expires": 1e12},
    {"x": {"state": "unhealthy", "model": None, "blocked": "planted", "until": None,
           "until_reason": None, "models": {}, "creds": {}}},
    {"urls": {}, "url_models": {}},
).decode()  # fmt: skip


@pytest.fixture
def victim_dir(users: tuple[User, User]) -> Iterator[Path]:
    """/tmp/hroute-<victim uid>: the default socket directory without XDG_RUNTIME_DIR."""
    victim, _ = users
    path = Path(f"/tmp/hroute-{victim.uid}")
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim_files(users: tuple[User, User]) -> Iterator[Path]:
    """A config and a state directory the victim can read and write."""
    victim, _ = users
    path = Path(f"/tmp/hrf-files-{victim.uid}")
    shutil.rmtree(path, ignore_errors=True)
    (path / "state").mkdir(parents=True)
    (path / "hroute.yaml").write_text(config({"x": unprobed(free_port())}))
    for p in (path, path / "state", path / "hroute.yaml"):
        os.chown(p, victim.uid, victim.gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _plant(user: User, directory: Path, snapshot: str) -> None:
    code = (
        "import os, json, sys; d = sys.argv[1]; os.makedirs(d + '/hroute', exist_ok=True); "
        "os.chmod(d, 0o777); os.chmod(d + '/hroute', 0o777); "
        "open(d + '/hroute/hroute.snapshot', 'w').write(sys.argv[2])"
    )
    done = subprocess.run(
        user.argv("/usr/bin/python3", "-c", code, str(directory), snapshot),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr


def test_daemon_refuses_a_socket_directory_another_user_made(
    users: tuple[User, User], victim_dir: Path, victim_files: Path
) -> None:
    victim, other = users
    _plant(other, victim_dir, ALL_DOWN)
    proc = victim.popen(
        "-m", "hroute.cli", "run", "--config", str(victim_files / "hroute.yaml"),
        HROUTE_STATE_DIR=str(victim_files / "state"),
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the daemon served in {victim_dir}, a directory of uid {other.uid}")
    assert proc.returncode != 0
    assert f"owned by uid {other.uid}" in err or "writable by group or others" in err, err
    assert not (victim_dir / "hroute" / "hroute.sock").exists()


def test_client_ignores_a_snapshot_planted_by_another_user(
    users: tuple[User, User], victim_dir: Path
) -> None:
    victim, other = users
    _plant(other, victim_dir, ALL_DOWN)
    done = victim.python(ASK_USABLE)
    answer = json.loads(done.stdout)
    assert answer["usable"] is True and answer["source"] == "fail-open", answer


def test_client_ignores_a_snapshot_of_a_third_user_in_its_own_directory(
    users: tuple[User, User], victim_dir: Path
) -> None:
    victim, other = users
    inner = victim_dir / "hroute"
    inner.mkdir(parents=True)
    for p in (victim_dir, inner):
        os.chown(p, victim.uid, victim.gid)
        p.chmod(0o700)
    snap = inner / "hroute.snapshot"
    snap.write_text(ALL_DOWN)
    os.chown(snap, victim.uid, victim.gid)  # the control: the victim's own file is believed
    answer = json.loads(victim.python(ASK_USABLE).stdout)
    assert answer["usable"] is False and answer["source"] == "snapshot", answer
    os.chown(snap, other.uid, other.gid)
    answer = json.loads(victim.python(ASK_USABLE).stdout)
    assert answer["usable"] is True and answer["source"] == "fail-open", answer


def test_the_victims_own_daemon_and_client_work_and_others_cannot_connect(
    users: tuple[User, User], victim_dir: Path, victim_files: Path
) -> None:
    victim, other = users
    proc = victim.popen(
        "-m", "hroute.cli", "run", "--config", str(victim_files / "hroute.yaml"),
        HROUTE_STATE_DIR=str(victim_files / "state"),
    )  # fmt: skip
    try:
        sock = victim_dir / "hroute" / "hroute.sock"
        wait_until(sock.exists, 20, what="the victim's daemon to listen")
        assert (victim_dir.stat().st_mode & 0o077) == 0
        answer = json.loads(victim.python(ASK_USABLE).stdout)
        assert answer["usable"] is True and answer["source"] == "snapshot", answer
        code = (
            "from hroute.client import Client; "
            f"print(Client({str(sock)!r}, budget_s=0.5).report('x', reason='server_error'))"
        )
        assert other.python(code).stdout.strip() == "False"
        assert json.loads(victim.python(ASK_USABLE).stdout)["usable"] is True
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_socket_permissions_keep_other_users_out(
    users: tuple[User, User], tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, other = users
    base = Path(f"/tmp/hrf-perm-{os.getpid()}")
    base.mkdir(mode=0o755)
    try:
        text = config({"x": unprobed(free_port())})
        d = Daemon(tmp_path_factory.mktemp("perm"), text)
        d.socket = base / "hroute.sock"
        d.env["HROUTE_SOCKET"] = str(d.socket)
        with d:
            assert (d.socket.stat().st_mode & 0o777) == 0o660
            code = (
                "from hroute.client import Client; "
                f"c = Client({str(d.socket)!r}, budget_s=0.5); "
                "print(c.report('x', reason='server_error'), c.usable('x').usable)"
            )
            assert other.python(code).stdout.split() == ["False", "True"]
            assert d.backend("x")["usable"] is True  # the report never arrived
            still_answers(d)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_daemon_refuses_its_own_runtime_dir_when_others_can_write_it(
    users: tuple[User, User], victim_files: Path
) -> None:
    victim, other = users
    xdg = Path(f"/tmp/hrf-xdg-{victim.uid}")
    shutil.rmtree(xdg, ignore_errors=True)
    xdg.mkdir()
    os.chown(xdg, victim.uid, victim.gid)
    xdg.chmod(0o777)  # a careless chmod: every local user could swap the socket
    try:
        proc = victim.popen(
            "-m", "hroute.cli", "run", "--config", str(victim_files / "hroute.yaml"),
            HROUTE_STATE_DIR=str(victim_files / "state"), XDG_RUNTIME_DIR=str(xdg),
        )  # fmt: skip
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"the daemon served in {xdg}, which every user can write")
        assert proc.returncode != 0 and "writable by group or others" in err, err
        code = (
            "from hroute.client import Client; "
            f"print(Client({str(xdg / 'hroute' / 'hroute.sock')!r}).usable('x').source)"
        )
        assert victim.python(code).stdout.strip() == "fail-open"
        assert other.uid != victim.uid
    finally:
        shutil.rmtree(xdg, ignore_errors=True)

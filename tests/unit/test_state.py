"""Durable state: round trip, expiry across the restart, and files that are not ours."""

import errno
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest

from hroute.core.cooldowns import Held
from hroute.core.credentials import fingerprint, is_fingerprint
from hroute.core.health import Cooldown, Health, State
from hroute.core.identity import BackendIdentity
from hroute.core.reasons import Reason
from hroute.edges.state_file import decode_state, encode_state, load_state

LOCAL = BackendIdentity("chat_completions", "http://127.0.0.1:8080", None)
FP1, FP2, FP3 = (fingerprint(f"key {i}") for i in (1, 2, 3))
CLOUD = BackendIdentity("anthropic_messages", "https://api.anthropic.com", None)


def sample(now: float) -> dict[BackendIdentity, Health]:
    local = Health(state=State.UNHEALTHY, reason="connection")
    local.server = Held(Cooldown(now + 50, Reason.SERVER_ERROR), incidents=3)
    local.models = {"llama3": Held(Cooldown(None, Reason.MODEL_NOT_FOUND, "not installed"))}
    cloud = Health(state=State.HEALTHY, block="auth")
    cloud.server = Held(Cooldown(now + 600, Reason.RATE_LIMIT))
    cloud.models = {"opus": Held(Cooldown(now + 40, Reason.OVERLOADED), incidents=2)}
    cloud.keys = {
        (FP1, ""): Held(Cooldown(now + 30, Reason.RATE_LIMIT)),
        (FP2, ""): Held(Cooldown(None, Reason.AUTH_PERMANENT)),
        (FP3, ""): Held(Cooldown(now + 1, Reason.BILLING)),
        (FP1, "gpt-a"): Held(Cooldown(now + 60, Reason.RATE_LIMIT), incidents=1),
        ("sk-raw-key-an-old-version-kept", ""): Held(Cooldown(now + 600, Reason.RATE_LIMIT)),
    }
    return {LOCAL: local, CLOUD: cloud}


def test_round_trip_across_a_restart_converts_deadlines() -> None:
    # Saved at monotonic 1000 / wall 5000; restored 10 s later on a rebooted machine
    # whose monotonic clock restarted at 7.
    doc = json.loads(json.dumps(encode_state(sample(1000.0), 1000.0, 5000.0)))
    restored = decode_state(doc, now=7.0, wall=5010.0)
    local, cloud = restored[LOCAL], restored[CLOUD]
    assert local.state is State.UNHEALTHY and local.incidents == 3
    assert (
        local.cooldown.until == pytest.approx(7 + 40)
        and local.cooldown.reason is Reason.SERVER_ERROR
    )
    assert cloud.block == "auth"
    assert cloud.cooldown.until == pytest.approx(7 + 590)
    assert cloud.keys[(FP1, "")].cooldown.until == pytest.approx(7 + 20)
    assert cloud.keys[(FP2, "")].cooldown.until is None  # until the key changes
    assert (FP3, "") not in cloud.keys  # ran out while the daemon was down
    per_model = cloud.keys[(FP1, "gpt-a")]
    assert per_model.cooldown.until == pytest.approx(7 + 50) and per_model.incidents == 1
    assert all(is_fingerprint(fp) for fp, _ in cloud.keys)  # a raw key is not kept
    opus = cloud.models["opus"]
    assert opus.cooldown.until == pytest.approx(7 + 30) and opus.incidents == 2
    missing = local.models["llama3"].cooldown
    assert missing.until is None and missing.detail == "not installed"


def test_a_file_written_before_scopes_still_reads() -> None:
    old = {
        "format": "hroute-state/1",
        "saved_at": 5000.0,
        "backends": [
            {
                "identity": ["chat_completions", "http://127.0.0.1:8080", None],
                "state": "healthy",
                "ejections": 2,
                "cooldown": {"until_wall": 5030.0, "reason": "server_error"},
                "credentials": {FP1: {"until_wall": None, "reason": "auth_permanent"}},
            }
        ],
    }
    [h] = decode_state(old, now=10.0, wall=5010.0).values()
    assert h.incidents == 2 and h.cooldown.until == pytest.approx(30.0)
    assert h.keys[(FP1, "")].cooldown.reason is Reason.AUTH_PERMANENT and h.models == {}


def test_expired_cooldown_is_dropped() -> None:
    doc = encode_state(sample(0.0), 0.0, 100.0)
    restored = decode_state(doc, now=0.0, wall=100.0 + 51)
    assert restored[LOCAL].cooldown is None
    assert restored[CLOUD].cooldown is not None


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        {},
        {"format": "other/1", "saved_at": 1, "backends": []},
        {"format": "hroute-state/1", "saved_at": "x", "backends": []},
        {"format": "hroute-state/1", "saved_at": 1, "backends": [{"identity": "nope"}]},
        {
            "format": "hroute-state/1",
            "saved_at": 1,
            "backends": [{"identity": ["a", "b", None], "state": "weird"}],
        },
        {
            "format": "hroute-state/1",
            "saved_at": 1,
            "backends": [{"identity": ["a", "b", None], "state": "healthy", "ejections": -1}],
        },
    ],
)
def test_foreign_documents_are_refused(doc: object) -> None:
    with pytest.raises(ValueError):
        decode_state(doc, 0.0, 0.0)


class Clock:
    def now(self) -> float:
        return 0.0

    def wall(self) -> float:
        return 10.0


def test_fuzzed_state_files_never_raise_and_are_set_aside(tmp_path: Path) -> None:
    good = json.dumps(encode_state(sample(0.0), 0.0, 10.0)).encode()
    rng = random.Random(1234)
    cases = [good[:n] for n in range(0, len(good), max(1, len(good) // 40))]
    for _ in range(200):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cases.append(bytes(data))
    cases += [b"\x00" * 100, b"\xff\xfe garbage", "ü".encode("latin-1"), b"[" * 100_000]
    set_aside = 0
    for i, data in enumerate(cases):
        path = tmp_path / f"s{i}" / "state.json"
        path.parent.mkdir()
        path.write_bytes(data)
        saved = load_state(path, Clock())  # must never raise
        assert isinstance(saved.records, dict)
        if not path.exists():
            set_aside += 1
            assert list(path.parent.glob("state.json.bad-*"))
    assert set_aside >= len(cases) // 2  # most damage is detected, none of it crashes


def test_missing_file_is_a_fresh_start(tmp_path: Path) -> None:
    saved = load_state(tmp_path / "none.json", Clock())
    assert saved.records == {} and saved.tasks == {} and saved.spend is None


def test_tasks_and_spend_survive() -> None:
    from hroute.core.escalation import TaskState
    from hroute.edges.state_file import decode_saved

    tasks = {"t1": TaskState(["no_progress", "invalid_output"], last_at=990.0)}
    doc = json.loads(
        json.dumps(encode_state({}, 1000.0, 5000.0, tasks, ("2026-11-23", {"r": 1.5}, 86400.0)))
    )
    saved = decode_saved(doc, now=7.0, wall=5010.0)
    assert saved.tasks["t1"].reasons == ["no_progress", "invalid_output"]
    assert saved.tasks["t1"].last_at == pytest.approx(7.0 - 20.0)  # failed 20 s before "now"
    assert saved.spend == ("2026-11-23", {"r": 1.5}, 86400.0)  # the day saved with its end


def test_spend_from_a_file_without_the_days_end_is_kept_for_that_day() -> None:
    from hroute.core.budgets import Spend, budget_day
    from hroute.edges.state_file import decode_saved

    doc = {"format": "hroute-state/1", "saved_at": 5000.0, "backends": [],
           "spend": {"day": "1970-01-01", "by_backend": {"r": 1.5}}}  # fmt: skip
    saved = decode_saved(doc, now=7.0, wall=5010.0)
    assert saved.spend == ("1970-01-01", {"r": 1.5}, None)
    spend = Spend()
    spend.load(*saved.spend)
    from datetime import UTC

    assert spend.spent("r", budget_day(5010.0, UTC)) == 1.5
    assert spend.spent("r", budget_day(86400.0 + 5.0, UTC)) == 0.0


def _load_in_a_thread(path: Path) -> object:
    """load_state(path), failing (not hanging) if it does not return: a FIFO blocks an open."""
    out: list[object] = []
    worker = threading.Thread(target=lambda: out.append(load_state(path, Clock())), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # lets the stuck open return
        os.close(fd)
        worker.join(10)
        pytest.fail(f"load_state blocked on {path}")
    return out[0]


def test_a_fifo_in_place_of_the_state_file_is_set_aside_not_waited_on(tmp_path: Path) -> None:

    path = tmp_path / "state.json"
    os.mkfifo(path)
    saved = _load_in_a_thread(path)
    assert saved.records == {}
    assert not path.exists()
    [aside] = tmp_path.glob("state.json.bad-*")
    assert aside.is_fifo()


def test_a_symlink_is_set_aside_and_its_target_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(encode_state(sample(0.0), 0.0, 10.0)))
    path = tmp_path / "state.json"
    path.symlink_to(target)
    saved = load_state(path, Clock())
    assert saved.records == {}
    [aside] = tmp_path.glob("state.json.bad-*")
    assert aside.is_symlink() and target.exists() and not path.exists()


def test_setting_aside_never_overwrites_what_was_set_aside_before(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    for text in ("first bad", "second bad"):
        path.write_text(text)
        load_state(path, Clock())  # the same second: the same name, were it not made unique
    assert sorted(p.read_text() for p in tmp_path.glob("state.json.bad-*")) == [
        "first bad",
        "second bad",
    ]


@pytest.mark.parametrize("kind", ["dev-zero", "sparse"])
def test_an_endless_or_huge_state_file_is_not_read_into_memory(tmp_path: Path, kind: str) -> None:

    path = tmp_path / "state.json"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as f:
            f.truncate(1 << 30)  # 1 GiB of nothing, on no disk
    code = (
        "import resource, sys; from pathlib import Path\n"
        "from hroute.edges.state_file import load_state\n"
        "resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))\n"
        "class C:\n def now(self): return 0.0\n def wall(self): return 10.0\n"
        "print(load_state(Path(sys.argv[1]), C()).records)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "{}", done.stderr[-2000:]
    assert "set aside" in done.stderr
    assert list(tmp_path.glob("state.json.bad-*")) and not path.exists()


def test_a_failing_save_says_so_once_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:

    from hroute.config.model import load_config
    from hroute.core.health import Report
    from hroute.core.registry import Registry
    from hroute.edges import files, state_file
    from hroute.edges.state_file import StateSaver

    config = load_config("backends:\n  a: {kind: openai, base_url: 'http://127.0.0.1:9'}\n")
    reg = Registry(config, Clock())
    path = tmp_path / "state.json"
    saver = StateSaver(reg, Clock(), path)
    reg.record_report("a", Report(False, Reason.RATE_LIMIT, retry_after_s=600))
    assert anyio.run(saver.save_if_changed)
    good = path.read_bytes()
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if len(data) <= 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data[:4096]))

    monkeypatch.setattr(files.os, "write", full_disk)
    for seconds in (700, 800, 900):
        reg.record_report("a", Report(False, Reason.RATE_LIMIT, retry_after_s=seconds))
        with caplog.at_level("WARNING", logger="hroute"):
            assert not anyio.run(saver.save_if_changed)
    assert path.read_bytes() == good
    said = [m for r in caplog.records if "cannot save state" in (m := r.getMessage())]
    assert len(said) == 1 and said[0].startswith("cannot save state: "), said
    assert state_file.load_state(path, Clock()).records  # the old file still restores


def test_an_inferred_hold_is_still_liftable_after_a_restart() -> None:
    """A daemon restarted mid-outage keeps what the probes saw: the inferred hold they met
    is lifted by the first probe that sees the recovery, as it would have been."""
    from hroute.core.health import Policy, ProbeOutcome, Report

    policy = Policy(fall=1, rise=1, base_s=30.0, max_s=300.0, local=True)
    h = Health()
    h.on_report(Report(False, Reason.SERVER_ERROR), 0.0, policy)
    h.on_probe(ProbeOutcome(Reason.CONNECTION, detail="refused"), 1.0, policy)
    ident = BackendIdentity("openai", "http://127.0.0.1:8080", None)
    doc = json.loads(json.dumps(encode_state({ident: h}, now=2.0, wall=1_700_000_000.0)))
    back = decode_state(doc, now=500.0, wall=1_700_000_001.0)[ident]
    assert back.cooldown is not None and back.cooldown.inferred and back.cooldown.seen_down
    changes = back.on_probe(ProbeOutcome(), 501.0, policy)
    assert [c.event for c in changes if c.event == "cooldown_cleared"] == ["cooldown_cleared"]

"""Durable state: round trip, expiry across the restart, and files that are not ours."""

import json
import random
from pathlib import Path

import pytest

from hroute.core.credentials import fingerprint
from hroute.core.health import Cooldown, Health, State
from hroute.core.identity import BackendIdentity
from hroute.core.reasons import Reason
from hroute.edges.state_file import decode_state, encode_state, load_state

LOCAL = BackendIdentity("chat_completions", "http://127.0.0.1:8080", None)
FP1, FP2, FP3 = (fingerprint(f"key {i}") for i in (1, 2, 3))
CLOUD = BackendIdentity("anthropic_messages", "https://api.anthropic.com", None)


def sample(now: float) -> dict[BackendIdentity, Health]:
    local = Health(state=State.UNHEALTHY, reason="connection", ejections=3)
    local.cooldown = Cooldown(now + 50, Reason.SERVER_ERROR)
    cloud = Health(state=State.HEALTHY, block="auth")
    cloud.cooldown = Cooldown(now + 600, Reason.RATE_LIMIT)
    cloud.credentials = {
        FP1: Cooldown(now + 30, Reason.RATE_LIMIT),
        FP2: Cooldown(None, Reason.AUTH_PERMANENT),
        FP3: Cooldown(now + 1, Reason.BILLING),
        "sk-raw-key-an-old-version-kept": Cooldown(now + 600, Reason.RATE_LIMIT),
    }
    return {LOCAL: local, CLOUD: cloud}


def test_round_trip_across_a_restart_converts_deadlines() -> None:
    # Saved at monotonic 1000 / wall 5000; restored 10 s later on a rebooted machine
    # whose monotonic clock restarted at 7.
    doc = json.loads(json.dumps(encode_state(sample(1000.0), 1000.0, 5000.0)))
    restored = decode_state(doc, now=7.0, wall=5010.0)
    local, cloud = restored[LOCAL], restored[CLOUD]
    assert local.state is State.UNHEALTHY and local.ejections == 3
    assert (
        local.cooldown.until == pytest.approx(7 + 40)
        and local.cooldown.reason is Reason.SERVER_ERROR
    )
    assert cloud.block == "auth"
    assert cloud.cooldown.until == pytest.approx(7 + 590)
    assert cloud.credentials[FP1].until == pytest.approx(7 + 20)
    assert cloud.credentials[FP2].until is None  # until the key changes
    assert FP3 not in cloud.credentials  # ran out while the daemon was down


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
        json.dumps(encode_state({}, 1000.0, 5000.0, tasks, ("2026-11-23", {"r": 1.5})))
    )
    saved = decode_saved(doc, now=7.0, wall=5010.0)
    assert saved.tasks["t1"].reasons == ["no_progress", "invalid_output"]
    assert saved.tasks["t1"].last_at == pytest.approx(7.0 - 20.0)  # failed 20 s before "now"
    assert saved.spend == ("2026-11-23", {"r": 1.5})

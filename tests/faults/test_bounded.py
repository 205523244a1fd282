"""Bounded state per request: distinct credentials and task ids cannot grow what reports walk.

How fast reports stay is bench/bench_hostile.py's figure: a rate measured here would fail
on a busy machine, not on a regression.
"""

from __future__ import annotations

import pytest

from hroute.client import fingerprint
from hroute.core.cooldowns import MAX_SCOPES as MAX_CREDENTIALS
from hroute.core.snapshot_format import SnapshotFile
from tests.support.daemon import Daemon
from tests.support.faults import still_answers

pytestmark = [pytest.mark.faults, pytest.mark.system]


def _burst(d: Daemon, n: int, start: int) -> None:
    client = d.client()
    for i in range(start, start + n):
        fp = fingerprint(f"key-{i}")
        ok = client.report("a", reason="rate_limit", credential=fp, retry_after_s=600)
        assert ok


def test_distinct_credentials_are_bounded(shared: Daemon) -> None:
    _burst(shared, 1400, 0)
    snap = SnapshotFile(shared.socket.with_suffix(".snapshot").read_bytes())
    assert len(snap.backend("a")["creds"]) <= MAX_CREDENTIALS
    # Read-your-write: the key reported last is cooled in the snapshot at once.
    fp = fingerprint("key-1399")
    assert shared.client().usable("a", credential=fp).usable is False
    assert shared.backend("a")["credential_cooldowns"] <= MAX_CREDENTIALS
    still_answers(shared)


def test_distinct_task_ids_are_all_taken(shared: Daemon) -> None:
    client = shared.client()

    for i in range(1900):
        status, _ = client.request(
            "POST", f"/v1/tasks/task-{i}/failures", {"reason": "no_progress"}
        )
        assert status == 202
    # The first task is still known (1,900 is within the cap): its count goes on.
    status, answer = client.request("POST", "/v1/tasks/task-0/failures", {"reason": "no_progress"})
    assert status == 202 and answer["failures"] == 2, answer
    still_answers(shared)

"""Bounded work per request: distinct credentials and task ids cannot make reports slow."""

from __future__ import annotations

import json
import time

import pytest

from hroute.client import fingerprint
from hroute.core.cooldowns import MAX_SCOPES as MAX_CREDENTIALS
from tests.support.daemon import Daemon
from tests.support.faults import still_answers

pytestmark = [pytest.mark.faults, pytest.mark.system]


def _burst(d: Daemon, n: int, start: int) -> float:
    client = d.client()
    t = time.perf_counter()
    for i in range(start, start + n):
        fp = fingerprint(f"key-{i}")
        ok = client.report("a", reason="rate_limit", credential=fp, retry_after_s=600)
        assert ok
    return n / (time.perf_counter() - t)


def test_distinct_credentials_are_bounded_and_reports_stay_fast(shared: Daemon) -> None:
    first = _burst(shared, 200, 0)
    _burst(shared, 1000, 200)
    last = _burst(shared, 200, 1200)
    assert last > first / 2, f"{first:.0f}/s at first, {last:.0f}/s after 1,200 credentials"
    snap = json.loads(shared.socket.with_suffix(".snapshot").read_text())
    assert len(snap["backends"]["a"]["creds"]) <= MAX_CREDENTIALS
    # Read-your-write: the key reported last is cooled in the snapshot at once.
    fp = fingerprint("key-1399")
    assert shared.client().usable("a", credential=fp).usable is False
    assert shared.backend("a")["credential_cooldowns"] <= MAX_CREDENTIALS
    t = time.perf_counter()
    still_answers(shared)
    assert time.perf_counter() - t < 0.5


def test_distinct_task_ids_keep_reports_fast(shared: Daemon) -> None:
    client = shared.client()

    def burst(start: int, n: int) -> float:
        t = time.perf_counter()
        for i in range(start, start + n):
            status, _ = client.request(
                "POST", f"/v1/tasks/task-{i}/failures", {"reason": "no_progress"}
            )
            assert status == 202
        return n / (time.perf_counter() - t)

    first = burst(0, 200)
    burst(200, 1500)
    last = burst(1700, 200)
    assert last > first / 2, f"{first:.0f}/s at first, {last:.0f}/s after 1,700 tasks"
    still_answers(shared)

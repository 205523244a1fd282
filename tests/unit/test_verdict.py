"""The daemon and the client decide "usable" with one definition; these check they agree."""

from __future__ import annotations

import itertools
import time

import pytest

from hroute.client import _from_snapshot
from hroute.config.model import load_config
from hroute.core.health import ProbeOutcome, Report
from hroute.core.reasons import Reason
from hroute.core.registry import Registry

CONFIG = """
backends:
  b: {kind: openai, base_url: "http://127.0.0.1:9/v1", model: m}
profiles:
  p: {chain: [b]}
"""


class MonotonicClock:
    """The registry's clock on the same CLOCK_MONOTONIC the client reads, moved by hand."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self.offset

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - not used here
        raise AssertionError


PROBES = [None, ProbeOutcome(), ProbeOutcome(Reason.CONNECTION), ProbeOutcome(starting=True)]
REPORTS = [
    None,
    Report(False, Reason.SERVER_ERROR),
    Report(False, Reason.RATE_LIMIT, retry_after_s=60, credential="k1"),
    Report(False, Reason.AUTH_PERMANENT, credential="k1"),
    Report(False, Reason.RATE_LIMIT, retry_after_s=30),
]
BLOCKS = [None, "exited"]


@pytest.mark.parametrize(
    ("probe", "report", "block"), list(itertools.product(PROBES, REPORTS, BLOCKS))
)
def test_client_and_daemon_agree(probe, report, block) -> None:
    reg = Registry(load_config(CONFIG), MonotonicClock())
    if probe is not None:
        reg.record_probe("b", probe)
    if report is not None:
        reg.record_report("b", report)
    if block is not None:
        reg.block("b", block, "test")
    snap = reg.snapshot()
    for credential in (None, "k1", "k2"):
        daemon = reg.verdict("b", credential)
        client = _from_snapshot(snap, "b", None, credential)
        assert (client.usable, client.reason) == (daemon.usable, daemon.reason)
        if daemon.retry_after_s is None:
            assert client.retry_after_s is None
        else:
            assert client.retry_after_s == pytest.approx(daemon.retry_after_s, abs=0.5)

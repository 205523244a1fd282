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
from hroute.core.snapshot_format import SnapshotFile, encode

CONFIG = """
backends:
  b: {kind: openai, base_url: "http://127.0.0.1:9/v1", model: m}
profiles:
  p: {chain: [b]}
"""


def as_file(reg: Registry) -> SnapshotFile:
    """The registry's snapshot as the client reads it: written to the file's bytes and back."""
    body = reg.snapshot()
    urls = {"urls": body["urls"], "url_models": body["url_models"]}
    return SnapshotFile(encode({"expires": 1e12}, body["backends"], urls))


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
    snap = as_file(reg)
    for credential in (None, "k1", "k2"):
        daemon = reg.verdict("b", credential)
        client = _from_snapshot(snap, "b", None, credential)
        assert (client.usable, client.reason) == (daemon.usable, daemon.reason)
        if daemon.retry_after_s is None:
            assert client.retry_after_s is None
        else:
            assert client.retry_after_s == pytest.approx(daemon.retry_after_s, abs=0.5)


SCOPED = """
backends:
  a: {kind: openai, base_url: "https://api.example.com/v1", model: gpt-a}
  b: {kind: openai, base_url: "https://api.example.com/v1", model: gpt-b}
profiles:
  p: {chain: [a, b]}
"""
SCOPED_REPORTS = [
    None,
    Report(False, Reason.UPSTREAM_RATE_LIMIT, retry_after_s=40, model="gpt-a"),
    Report(False, Reason.RATE_LIMIT, retry_after_s=60, credential="k1", model="gpt-a"),
    Report(False, Reason.RATE_LIMIT, credential="k1"),
    Report(False, Reason.BILLING, credential="k2", model="gpt-b"),
    Report(False, Reason.MODEL_NOT_FOUND, model="gpt-b"),
    Report(False, Reason.OVERLOADED, model="gpt-a"),
]
MISSING = [None, ProbeOutcome(checked=("gpt-a", "gpt-b"), missing={"gpt-b": "not served"})]


@pytest.mark.parametrize(("probe", "report"), list(itertools.product(MISSING, SCOPED_REPORTS)))
def test_client_and_daemon_agree_on_models_and_keys(probe, report) -> None:
    reg = Registry(load_config(SCOPED), MonotonicClock())
    if probe is not None:
        reg.record_probe("a", probe)
    if report is not None:
        reg.record_report("a", report)
    snap = as_file(reg)
    url = "https://api.example.com/v1"
    for name, credential, model in itertools.product(
        ("a", "b"), (None, "k1", "k2"), (None, "gpt-a", "gpt-b", "gpt-c")
    ):
        daemon = reg.verdict(name, credential, model)
        client = _from_snapshot(snap, name, None, credential, model)
        assert (client.usable, client.reason) == (daemon.usable, daemon.reason), (
            name,
            credential,
            model,
        )
        by_url = _from_snapshot(snap, None, url, credential, model)
        resolved = reg.directory.resolve(base_url=url, model=model)
        assert by_url.backend == resolved
        assert by_url.usable == reg.verdict(resolved, credential, model).usable

"""Removed identities keep their health for as long as their longest cooldown."""

from hroute.config.model import load_config
from hroute.core.health import Report
from hroute.core.reasons import Reason
from hroute.core.registry import Registry
from hroute.core.tombstones import TOMBSTONE_MIN_S

BOTH = """
backends:
  a: {kind: openai, base_url: "http://127.0.0.1:9001"}
  b: {kind: openai, base_url: "http://127.0.0.1:9002"}
"""
ONLY_B = """
backends:
  b: {kind: openai, base_url: "http://127.0.0.1:9002"}
"""


def test_a_backend_that_comes_back_gets_its_cooldown_back(clock) -> None:
    reg = Registry(load_config(BOTH), clock)
    reg.record_report("a", Report(False, Reason.RATE_LIMIT, retry_after_s=1200))
    reg.apply_config(load_config(ONLY_B))
    assert reg.directory.names == ["b"] and len(reg.records()) == 2  # the tombstone is saved too
    clock.advance(900)  # past the minimum, within the cooldown
    reg.expire()
    reg.apply_config(load_config(BOTH))
    assert reg.usable("a")["usable"] is False
    assert 299 < reg.health("a").cooldown_remaining(clock.now()) <= 300


def test_tombstones_expire_after_the_longest_cooldown(clock) -> None:
    reg = Registry(load_config(BOTH), clock)
    reg.record_report("a", Report(False, Reason.SERVER_ERROR))
    reg.apply_config(load_config(ONLY_B))
    clock.advance(TOMBSTONE_MIN_S + 1)
    reg.expire()
    assert len(reg.records()) == 1
    reg.apply_config(load_config(BOTH))
    assert reg.usable("a")["usable"] is True


def test_restore_keeps_saved_records_of_unconfigured_identities(clock) -> None:
    old = Registry(load_config(BOTH), clock)
    old.record_report("a", Report(False, Reason.RATE_LIMIT, retry_after_s=700))
    reg = Registry(load_config(ONLY_B), clock)
    assert reg.restore(old.records()) == 1
    reg.apply_config(load_config(BOTH))
    assert reg.usable("a")["usable"] is False

"""A bad save never loses state: empty, cut short, saved in place, a backend removed."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.faults import config, still_answers, unprobed
from tests.support.procs import free_port

pytestmark = [pytest.mark.faults, pytest.mark.system]

PA, PB = free_port(), free_port()
FULL = config({"a": unprobed(PA), "b": unprobed(PB)}, {"p": ["a", "b"]})
REMOVED = re.compile(r"reloaded: \+\d+ backends?, -[1-9]")
ONLY_B = config({"b": unprobed(PB)}, {"p": ["b"]})


def names(d: Daemon) -> set[str]:
    return {b["name"] for b in d.get("/v1/backends")[1]["backends"]}


# A kept cooldown has run on by the seconds the case took, never more than a test may last
# (pytest's per-test timeout): a bound a busy machine cannot break, which a lost or restarted
# cooldown (hundreds of seconds off) still does.
KEPT_S = 60


def cool_a(d: Daemon, seconds: int = 600) -> float:
    d.client().report("a", outcome="failure", reason="rate_limit", retry_after_s=seconds)
    return d.backend("a")["cooldown_remaining_s"]


def saved_identities(d: Daemon) -> list[str]:
    try:
        doc = json.loads((d.state_dir / "state.json").read_text())
    except FileNotFoundError:
        return []  # not saved yet: saves follow changes by a moment
    return [r["identity"][1] for r in doc["backends"]]


@pytest.fixture
def d(tmp_path: Path):
    with Daemon(tmp_path, FULL) as daemon:
        yield daemon


@pytest.mark.parametrize("text", ["", "\n", "# nothing yet\n", "backends: {}\n"])
def test_a_file_without_backends_is_rejected_and_forgets_nothing(d: Daemon, text: str) -> None:
    before = cool_a(d)
    d.config_path.write_text(text)
    d.wait_for_log("config rejected")
    assert names(d) == {"a", "b"}
    assert 0 < before - d.backend("a")["cooldown_remaining_s"] < KEPT_S
    wait_until(lambda: len(saved_identities(d)) == 2, what="state.json to hold both backends")
    still_answers(d)


def test_an_in_place_save_keeps_a_rate_limit_cooldown(d: Daemon) -> None:
    before = cool_a(d)
    with open(d.config_path, "r+") as f:  # what many editors do: truncate, then write
        f.truncate(0)
        f.flush()
        time.sleep(0.05)  # the fault itself: a writer between its two steps
        f.write(FULL.replace("interval_s: 30", "interval_s: 29"))
    d.wait_for_log("reloaded:")
    a = d.backend("a")
    assert a["usable"] is False and 0 < before - a["cooldown_remaining_s"] < KEPT_S
    assert not REMOVED.search(d.log) and "config rejected" not in d.log  # never half written
    still_answers(d)


def test_a_file_cut_at_a_line_boundary_is_not_applied_while_being_written(d: Daemon) -> None:
    cut, rest = FULL.split("profiles:")
    with open(d.config_path, "w") as f:
        f.write(cut)
        f.flush()
        time.sleep(0.05)  # valid YAML that lost its profiles, for a moment
        f.write("profiles:" + rest.replace("[a, b]", "[b, a]"))
    d.wait_for_log("reloaded:")
    assert "profiles changed: p" in d.log
    assert d.get("/v1/route?profile=p")[1]["chain"][0]["backend"] == "b"
    assert not REMOVED.search(d.log)
    still_answers(d)


def test_a_removed_backend_gets_its_cooldown_back_when_it_returns(d: Daemon) -> None:
    before = cool_a(d)
    d.config_path.write_text(ONLY_B)
    wait_until(lambda: names(d) == {"b"}, what="a to be removed")
    wait_until(lambda: len(saved_identities(d)) == 2, what="the tombstone in state.json")
    d.config_path.write_text(FULL)
    wait_until(lambda: names(d) == {"a", "b"}, what="a to come back")
    a = d.backend("a")
    assert a["usable"] is False and a["reason"] == "rate_limit"
    assert 0 < before - a["cooldown_remaining_s"] < KEPT_S
    still_answers(d)


def test_a_tombstone_survives_a_restart(tmp_path: Path) -> None:
    with Daemon(tmp_path, FULL) as d:
        cool_a(d)
        d.config_path.write_text(ONLY_B)
        wait_until(lambda: names(d) == {"b"}, what="a to be removed")
    d.config_path.write_text(FULL)
    with Daemon(tmp_path, FULL) as d2:
        a = d2.backend("a")
        assert a["usable"] is False and a["cooldown_remaining_s"] > 500
        still_answers(d2)


def test_a_deleted_then_recreated_file_keeps_everything(d: Daemon) -> None:
    before = cool_a(d)
    tmp = d.config_path.with_name("new.yaml")
    tmp.write_text(FULL.replace("interval_s: 30", "interval_s: 28"))
    d.config_path.unlink()
    os.replace(tmp, d.config_path)
    d.wait_for_log("reloaded:")
    assert names(d) == {"a", "b"}
    assert 0 < before - d.backend("a")["cooldown_remaining_s"] < KEPT_S
    still_answers(d)

"""core/scopes.py is design.md's scope table as code: the two must say the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hroute.core.health import Health, Policy, ProbeOutcome, State
from hroute.core.reasons import Reason
from hroute.core.scopes import ProbeEffect, probe_effect

DESIGN = Path(__file__).parents[2] / "docs" / "design.md"
_WORDS = {
    "a server cooldown": ProbeEffect.COOLDOWN,
    "blocks the server": ProbeEffect.BLOCK,
    "nothing": ProbeEffect.NOTHING,
    "counts toward `fall`": ProbeEffect.STATE,
}


def _probe_table() -> dict[Reason, ProbeEffect]:
    text = DESIGN.read_text()
    table = text[text.index("| a probe that fails with | does |") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        reasons, does = line.strip("|").split("|")
        effect = next(e for words, e in _WORDS.items() if does.strip().startswith(words))
        named = [Reason(r) for r in re.findall(r"`([a-z_]+)`", reasons)]
        if reasons.strip().startswith("anything else"):
            rest = set(Reason) - set(rows) - {Reason.UNKNOWN}
            rows.update({r: effect for r in rest})
        else:
            rows.update({r: effect for r in named})
    return rows


def test_the_probe_rules_are_the_design_table() -> None:
    table = _probe_table()
    assert len(table) == len(Reason) - 1
    assert {r: probe_effect(r) for r in table} == table


@pytest.mark.parametrize("reason", [Reason.RATE_LIMIT, Reason.BILLING, Reason.AUTH])
def test_a_probe_failure_that_is_no_outage_leaves_the_state(reason: Reason) -> None:
    h = Health()
    h.on_probe(ProbeOutcome(), 0.0, Policy())
    h.on_probe(ProbeOutcome(reason=reason, retry_after_s=30.0), 1.0, Policy())
    assert h.state is State.HEALTHY and not h.verdict(2.0).usable


def test_a_request_shaped_probe_failure_changes_nothing() -> None:
    h = Health()
    h.on_probe(ProbeOutcome(), 0.0, Policy())
    before = h.mark()
    assert h.on_probe(ProbeOutcome(reason=Reason.CONTEXT_OVERFLOW), 1.0, Policy()) == []
    assert h.mark() == before

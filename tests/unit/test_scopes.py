"""Health has three scopes — server, model, key — and each incident cools its scope once.

Pure: the registry on a fake clock, reports and probe outcomes as values.
"""

from __future__ import annotations

import pytest

from hroute.config.model import load_config
from hroute.core.cooldowns import MAX_SCOPES
from hroute.core.health import Health, Policy, ProbeOutcome, Report
from hroute.core.reasons import Reason
from hroute.core.registry import Registry

OLLAMA = "http://127.0.0.1:11434"
CONFIG = f"""
defaults:
  probe: {{fall: 1}}
  cooldown: {{base_s: 30, max_s: 900, jitter: 0}}
backends:
  qwen: {{kind: ollama, base_url: "{OLLAMA}", model: "qwen3.6:9b"}}
  llama3: {{kind: ollama, base_url: "{OLLAMA}", model: "llama3:8b"}}
  or-a: {{kind: openai, base_url: "{OLLAMA}/v1", model: "qwen3.6:9b"}}
  or-b: {{kind: openai, base_url: "http://localhost:11434/v1/", model: "llama3:8b"}}
  gpt-a: {{kind: openai, base_url: "https://api.example.com/v1", model: gpt-a}}
  gpt-b: {{kind: openai, base_url: "https://api.example.com/v1", model: gpt-b}}
  claude: {{kind: anthropic, base_url: "https://api.anthropic.com", model: opus}}
  haiku: {{kind: anthropic, base_url: "https://api.anthropic.com", model: haiku}}
profiles:
  p: {{chain: [qwen, llama3, gpt-a, gpt-b]}}
"""


@pytest.fixture
def reg(clock) -> Registry:
    return Registry(load_config(CONFIG), clock)


def usable(reg: Registry, *names: str, credential: str | None = None) -> dict[str, bool]:
    return {n: reg.verdict(n, credential).usable for n in names}


def fail(reason: Reason, **kw) -> Report:
    return Report(False, reason, **kw)


# --- fault 1: every configured model is checked -------------------------------------------


def test_a_missing_model_makes_only_its_own_backends_unusable(reg: Registry) -> None:
    reg.record_probe(
        "qwen",
        ProbeOutcome(
            detail="ok",
            checked=("qwen3.6:9b", "llama3:8b"),
            missing={"llama3:8b": "model 'llama3:8b' is not installed (installed: qwen3.6:9b)"},
        ),
    )
    assert usable(reg, "qwen", "or-a", "llama3", "or-b") == {
        "qwen": True,
        "or-a": True,
        "llama3": False,
        "or-b": False,
    }
    view = reg.view("llama3")
    assert view["state"] == "healthy" and view["reason"] == "model_not_found"
    assert view["blocked_by"]["scope"] == "model"
    assert "installed: qwen3.6:9b" in view["blocked_by"]["detail"]
    # Installed later: the next probe lifts it.
    reg.record_probe("qwen", ProbeOutcome(detail="ok", checked=("qwen3.6:9b", "llama3:8b")))
    assert usable(reg, "llama3", "or-b") == {"llama3": True, "or-b": True}


def test_models_at_a_server_are_every_configured_model_there(reg: Registry) -> None:
    assert reg.directory.models_at("qwen") == ("llama3:8b", "qwen3.6:9b")
    assert reg.directory.models_at("gpt-b") == ("gpt-a", "gpt-b")


# --- fault 2: model_not_found is the model's, not the server's -----------------------------


def test_model_not_found_report_cools_only_that_model(reg: Registry) -> None:
    [change] = reg.record_report("llama3", fail(Reason.MODEL_NOT_FOUND, model="llama3:8b"))
    assert change.scope == "model" and change.model == "llama3:8b"
    assert usable(reg, "qwen", "or-a", "llama3", "or-b") == {
        "qwen": True,
        "or-a": True,
        "llama3": False,
        "or-b": False,
    }
    [event] = [e for e in reg.events.since(0) if e["event"] == "cooldown"]
    assert event["held"] == ["llama3", "or-b"]


def test_a_report_without_a_model_counts_for_the_model_of_the_backend_it_names(
    reg: Registry,
) -> None:
    reg.record_report("llama3", fail(Reason.MODEL_NOT_FOUND))
    assert usable(reg, "qwen", "llama3") == {"qwen": True, "llama3": False}


# --- fault 3: rate limits are per model (and per key) --------------------------------------


def test_429_with_a_key_for_one_model_leaves_the_other_model_of_that_key(reg: Registry) -> None:
    reg.record_report("gpt-a", fail(Reason.RATE_LIMIT, credential="fp1", model="gpt-a"))
    assert usable(reg, "gpt-a", "gpt-b", credential="fp1") == {"gpt-a": False, "gpt-b": True}
    assert usable(reg, "gpt-a", "gpt-b", credential="fp2") == {"gpt-a": True, "gpt-b": True}
    assert usable(reg, "gpt-a", "gpt-b") == {"gpt-a": True, "gpt-b": True}
    assert reg.usable("gpt-a", "fp1")["scope"] == "key"


def test_upstream_rate_limit_and_keyless_rate_limit_are_per_model(reg: Registry) -> None:
    reg.record_report("gpt-a", fail(Reason.UPSTREAM_RATE_LIMIT, credential="fp1", model="gpt-a"))
    assert usable(reg, "gpt-a", "gpt-b") == {"gpt-a": False, "gpt-b": True}
    reg.record_report("gpt-b", fail(Reason.RATE_LIMIT, model="gpt-b"))
    assert usable(reg, "gpt-b") == {"gpt-b": False}
    assert reg.usable("gpt-b")["scope"] == "model"


# --- fault 4: one escalation per incident --------------------------------------------------


def test_twelve_reports_of_one_outage_arm_one_base_cooldown(reg: Registry, clock) -> None:
    armed = []
    for _ in range(12):
        armed += reg.record_report("qwen", fail(Reason.SERVER_ERROR, model="qwen3.6:9b"))
        clock.advance(0.05)
    assert [(c.scope, c.cooldown_s) for c in armed] == [("server", 30)]
    assert reg.usable("qwen")["retry_after_s"] == pytest.approx(30 - 0.6)


def test_the_nth_cooldown_is_the_nth_incident(reg: Registry, clock) -> None:
    durations = []
    for _ in range(4):
        for _ in range(5):
            for change in reg.record_report("qwen", fail(Reason.SERVER_ERROR)):
                durations.append(change.cooldown_s)
        clock.advance(durations[-1] + 0.5)  # the next failure comes just after it ran out
        reg.expire()
    assert durations == [30, 60, 90, 120]


# --- the table, row by row -----------------------------------------------------------------

CLOUD = Policy(base_s=30, max_s=900)
LOCAL = Policy(base_s=30, max_s=900, local=True)


@pytest.mark.parametrize(
    ("reason", "credential", "model", "policy", "held"),
    [
        (Reason.CONNECTION, None, "m", CLOUD, ("server", None)),
        (Reason.TIMEOUT, "k", "m", CLOUD, ("server", None)),
        (Reason.SERVER_ERROR, "k", "m", CLOUD, ("server", None)),
        (Reason.INVALID_RESPONSE, None, "m", LOCAL, ("server", None)),
        (Reason.OVERLOADED, None, "m", LOCAL, ("server", None)),
        (Reason.OVERLOADED, "k", "m", CLOUD, ("model", "m")),  # Anthropic's 529: that model
        (Reason.OVERLOADED, None, None, CLOUD, ("server", None)),  # no model: cannot tell
        (Reason.MODEL_NOT_FOUND, None, "m", LOCAL, ("model", "m")),
        (Reason.MODEL_NOT_FOUND, None, None, LOCAL, None),
        (Reason.UPSTREAM_RATE_LIMIT, "k", "m", CLOUD, ("model", "m")),
        (Reason.RATE_LIMIT, None, "m", CLOUD, ("model", "m")),
        (Reason.RATE_LIMIT, None, None, CLOUD, ("server", None)),
        (Reason.RATE_LIMIT, "k", "m", CLOUD, ("key", ("k", "m"))),
        (Reason.RATE_LIMIT, "k", None, CLOUD, ("key", ("k", ""))),
        (Reason.BILLING, "k", "m", CLOUD, ("key", ("k", ""))),  # the account, every model
        (Reason.BILLING, None, "m", CLOUD, ("server", None)),
        (Reason.AUTH, "k", "m", CLOUD, ("key", ("k", ""))),
        (Reason.AUTH_PERMANENT, "k", "m", CLOUD, ("key", ("k", ""))),
        (Reason.AUTH, None, "m", CLOUD, None),  # whose key? nobody's: our probe decides
    ],
)
def test_each_reason_holds_its_scope(reason, credential, model, policy, held) -> None:
    h = Health()
    h.on_probe(ProbeOutcome(), 0, policy)
    changes = h.on_report(Report(False, reason, credential=credential, model=model), 0, policy)
    if held is None:
        assert changes == [] and h.verdict(1, credential, model).usable
        return
    scope, where = held
    [change] = changes
    assert change.scope == scope
    verdict, by = h.scoped_verdict(1, credential, model)
    assert (verdict.usable, verdict.reason, by) == (False, reason, scope)
    if scope == "server":
        assert h.cooldown is not None and not h.models and not h.keys
    elif scope == "model":
        assert list(h.models) == [where] and h.cooldown is None
        assert h.verdict(1, credential, "other").usable  # another model on that server
    else:
        assert list(h.keys) == [where] and h.cooldown is None and not h.models
        assert h.verdict(1, "other-key", model).usable  # another key
        assert h.verdict(1, None, model).usable  # callers without a key


def test_anthropic_529_for_one_model_leaves_the_other(reg: Registry) -> None:
    reg.record_report("claude", fail(Reason.OVERLOADED, credential="fp", model="opus"))
    assert usable(reg, "claude", "haiku", credential="fp") == {"claude": False, "haiku": True}


def test_overloaded_local_server_holds_every_model_on_it(reg: Registry) -> None:
    [change] = reg.record_report("qwen", fail(Reason.OVERLOADED, model="qwen3.6:9b"))
    assert change.scope == "server"
    assert not any(usable(reg, "qwen", "llama3", "or-a", "or-b").values())
    [event] = [e for e in reg.events.since(0) if e["event"] == "cooldown"]
    assert event["held"] == ["qwen", "llama3", "or-a", "or-b"] and event["server"] == "ollama"


# --- incidents -------------------------------------------------------------------------------


def test_a_later_provider_reset_extends_a_running_cooldown_a_shorter_one_does_not() -> None:
    h = Health()
    [first] = h.on_report(fail(Reason.SERVER_ERROR), 0, CLOUD)
    assert first.cooldown_s == 30
    assert h.on_report(fail(Reason.SERVER_ERROR, retry_after_s=10), 1, CLOUD) == []
    [longer] = h.on_report(fail(Reason.SERVER_ERROR, retry_after_s=100), 2, CLOUD)
    assert longer.cooldown_s == 100 and h.cooldown.until == 102
    assert h.incidents == 1  # still the first incident


def test_jitter_spreads_our_own_cooldowns_and_keeps_a_provider_reset_exact() -> None:
    policy = Policy(base_s=30, max_s=900, jitter=0.1)
    ends = []
    for u in (-1.0, 0.0, 1.0):
        h = Health()
        [c] = h.on_report(fail(Reason.SERVER_ERROR), 0, policy, jitter=u)
        ends.append(c.cooldown_s)
    assert ends == pytest.approx([27, 30, 33])
    h = Health()
    [c] = h.on_report(fail(Reason.SERVER_ERROR, retry_after_s=60), 0, policy, jitter=-1.0)
    assert c.cooldown_s == 60


def test_the_registry_draws_jitter_from_what_it_is_handed(clock) -> None:
    text = CONFIG.replace("jitter: 0", "jitter: 0.1")
    reg = Registry(load_config(text), clock, jitter=lambda: 0.5)
    [c] = reg.record_report("gpt-a", fail(Reason.SERVER_ERROR))
    assert c.cooldown_s == pytest.approx(31.5)


def test_scopes_escalate_apart(reg: Registry, clock) -> None:
    [m1] = reg.record_report("llama3", fail(Reason.MODEL_NOT_FOUND))
    clock.advance(31)
    reg.expire()
    [m2] = reg.record_report("llama3", fail(Reason.MODEL_NOT_FOUND))
    [s1] = reg.record_report("qwen", fail(Reason.SERVER_ERROR))
    assert (m1.cooldown_s, m2.cooldown_s, s1.cooldown_s) == (30, 60, 30)


def test_n_decays_by_one_per_base_after_a_cooldown(reg: Registry, clock) -> None:
    for _ in range(3):
        [c] = reg.record_report("gpt-a", fail(Reason.UPSTREAM_RATE_LIMIT))
        clock.advance(c.cooldown_s)
        reg.expire()
    clock.advance(2 * 30 + 1)  # two base periods without a failure: n 3 -> 1
    [c] = reg.record_report("gpt-a", fail(Reason.UPSTREAM_RATE_LIMIT))
    assert c.cooldown_s == 60


def test_the_end_of_a_server_cooldown_is_told_with_its_scope(reg: Registry, clock) -> None:
    reg.record_report("qwen", fail(Reason.SERVER_ERROR))
    clock.advance(30)
    reg.expire()
    [end] = [e for e in reg.events.since(0) if e["event"] == "cooldown_end"]
    assert end["scope"] == "server" and end["held"] == ["qwen", "llama3", "or-a", "or-b"]


def test_usable_by_url_and_model_finds_the_backend_configured_with_both(reg: Registry) -> None:
    assert (
        reg.directory.resolve(base_url="http://localhost:11434/v1", model="llama3:8b") == "llama3"
    )
    assert reg.directory.resolve(base_url="http://localhost:11434/v1", model="nope") == "qwen"
    reg.record_report("gpt-a", fail(Reason.UPSTREAM_RATE_LIMIT, model="gpt-x"))
    assert reg.verdict("gpt-a", model="gpt-x").usable is False
    assert reg.verdict("gpt-a").usable is True


def test_while_probes_hold_the_server_down_the_outage_is_one_incident(reg: Registry, clock) -> None:
    # Hermes retries 503s seconds apart: the second attempt may come after the first cooldown
    # ran out, while the probes still see the server down. That is the same outage.
    reg.record_probe("qwen", ProbeOutcome(Reason.OVERLOADED, detail="GET /api/version: 503"))
    [first] = reg.record_report("qwen", fail(Reason.OVERLOADED))
    clock.advance(31)
    reg.expire()
    [again] = reg.record_report("qwen", fail(Reason.OVERLOADED))
    assert (first.cooldown_s, again.cooldown_s) == (30, 30)
    reg.record_probe("qwen", ProbeOutcome(detail="ok"))  # recovered
    clock.advance(31)
    reg.expire()
    [next_incident] = reg.record_report("qwen", fail(Reason.OVERLOADED))
    assert next_incident.cooldown_s == 60


def test_invented_models_and_keys_cannot_grow_a_record_without_bound(reg: Registry) -> None:
    for i in range(MAX_SCOPES + 50):
        reg.record_report("gpt-a", fail(Reason.UPSTREAM_RATE_LIMIT, model=f"m{i}"))
        reg.record_report("gpt-a", fail(Reason.AUTH, credential=f"k{i}"))
    health = reg.health("gpt-a")
    assert len(health.models) == MAX_SCOPES and len(health.keys) == MAX_SCOPES
    # The newest always counts (its reporter reads it back); the oldest made room.
    last = MAX_SCOPES + 49
    assert reg.verdict("gpt-a", model=f"m{last}").usable is False
    assert reg.verdict("gpt-a", credential=f"k{last}").usable is False
    assert reg.verdict("gpt-a", model="m0").usable is True

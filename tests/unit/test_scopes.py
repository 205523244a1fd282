"""Health has three scopes — server, model, key — and each incident cools its scope once.

Pure: the registry on a fake clock, reports and probe outcomes as values.
"""

from __future__ import annotations

import pytest

from hroute.config.model import load_config
from hroute.core.health import ProbeOutcome, Report
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
    assert reg.models_at("qwen") == ("llama3:8b", "qwen3.6:9b")
    assert reg.models_at("gpt-b") == ("gpt-a", "gpt-b")


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
    [event] = [e for e in reg.events_since(0) if e["event"] == "cooldown"]
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

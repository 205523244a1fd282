"""The Hermes plugin's pure parts: report bodies, the report queue, and the gate's decisions
on a small stand-in for Hermes' AIAgent (no Hermes, no sockets)."""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from hroute.client import Usable
from hroute.core.credentials import fingerprint
from hroute.core.redact import redact as core_redact
from hroute_hermes import HermesPlugin
from hroute_hermes.gate import Gate, HealthView, entry_credential
from hroute_hermes.reports import (
    Reporter,
    credential_fingerprint,
    failure_report,
    normalized_url,
    redact,
    reset_delay_s,
    success_report,
    usage_report,
)
from hroute_hermes.status import Status
from hroute_hermes.surface import LINE_19, LINE_22, Function, Group, groups_for
from hroute_hermes.wiring import Wiring

PRIMARY = "http://127.0.0.1:8080/v1"
FB1 = "http://127.0.0.1:9001/v1"
FB2 = "http://127.0.0.1:9002/v1"


# --- report bodies ---------------------------------------------------------------------


def test_fingerprint_is_short_stable_and_never_the_key() -> None:
    key = "sk-live-0123456789abcdef"
    fp = credential_fingerprint(key)
    assert fp == credential_fingerprint(f"  {key}\n")
    assert fp is not None and fp.startswith("sha256:") and len(fp) == len("sha256:") + 16
    assert key not in fp and "0123456789" not in fp
    assert credential_fingerprint("sk-other") != fp
    for nothing in (None, "", "   ", 42, lambda: "token"):
        assert credential_fingerprint(nothing) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/v1",
        "http://127.0.0.1:8080/v1/",
        "http://localhost:8080",
        "HTTP://127.0.0.1:8080/",
    ],
)
def test_urls_are_normalised_the_way_hroute_does(url: str) -> None:
    assert normalized_url(url) == "http://127.0.0.1:8080"


def test_no_url_no_report() -> None:
    assert normalized_url("") is None and normalized_url(None) is None
    assert failure_report({"reason": "overloaded"}) is None
    assert success_report({"base_url": ""}) is None


def hermes_error_hook(**over: Any) -> dict[str, Any]:
    """The keyword arguments Hermes 0.19 passes to `api_request_error`."""
    hook = {
        "task_id": "t",
        "turn_id": "u",
        "api_request_id": "r",
        "session_id": "s",
        "platform": "cli",
        "model": "gemma",
        "provider": "custom",
        "base_url": PRIMARY + "/",
        "api_mode": "chat_completions",
        "api_call_count": 1,
        "api_duration": 0.2,
        "started_at": 1.0,
        "ended_at": 1.2,
        "status_code": 503,
        "retry_count": 0,
        "max_retries": 2,
        "retryable": True,
        "reason": "overloaded",
        "error": {"type": "InternalServerError", "message": "Error code: 503"},
        "request": {"model": "gemma"},
        "telemetry_schema_version": 1,
    }
    return {**hook, **over}


def test_failure_report_carries_hermes_own_reason_and_context() -> None:
    body = failure_report(hermes_error_hook(), credential="sha256:abcd")
    assert body == {
        "base_url": "http://127.0.0.1:8080",
        "outcome": "failure",
        "reason": "overloaded",
        "status_code": 503,
        "provider": "custom",
        "model": "gemma",
        "credential": "sha256:abcd",
        "detail": "InternalServerError: Error code: 503",
    }


def test_failure_report_drops_what_hroute_would_refuse() -> None:
    body = failure_report(hermes_error_hook(status_code=None, reason=None, provider=""))
    assert body is not None
    assert not {"status_code", "reason", "provider", "credential"} & body.keys()
    assert "status_code" not in failure_report(hermes_error_hook(status_code=True))
    assert "status_code" not in failure_report(hermes_error_hook(status_code=700))
    assert failure_report(hermes_error_hook(reason="Rate_Limit"))["reason"] == "rate_limit"


def test_keys_never_leave_in_the_detail() -> None:
    key = "my-very-secret-key-value"
    message = f"Incorrect API key provided: {key}; also sk-proj-ABCDEF123456 and Bearer abc.def"
    body = failure_report(
        hermes_error_hook(error={"type": "AuthError", "message": message}), api_key=key
    )
    assert key not in body["detail"] and "sk-proj-ABCDEF123456" not in body["detail"]
    assert "abc.def" not in body["detail"] and body["detail"].startswith("AuthError: Incorrect")
    assert len(redact("x" * 5000)) == 300


@pytest.mark.parametrize(
    "key", ["sk-live-0123456789abcdef", "  sk-padded-key\n", "\tkey with space "]
)
def test_the_plugin_fingerprints_keys_as_hroute_does(key: str) -> None:
    """A key Hermes holds with surrounding whitespace must name the same cooldown in hroute."""
    assert credential_fingerprint(key) == fingerprint(key)


@pytest.mark.parametrize(
    "secret",
    ["api_key=abcd1234efgh", "token=abcd1234efgh", "Basic dXNlcjpwYXNzd29yZA==", "sk-abcd"],
)
def test_the_plugin_redacts_every_secret_hroute_redacts(secret: str) -> None:
    detail = failure_report(
        hermes_error_hook(error={"type": "AuthError", "message": f"refused {secret} here"})
    )["detail"]
    assert core_redact(secret) == "[redacted]"
    assert secret not in detail and detail == "AuthError: refused [redacted] here"


def test_keys_of_the_key_dash_form_stay_redacted() -> None:
    assert "key-0123456789abcdef" not in redact("bad key key-0123456789abcdef")


def test_success_and_usage_reports() -> None:
    hook = {
        "base_url": PRIMARY,
        "provider": "custom",
        "model": "gemma",
        "usage": {"input_tokens": 10, "output_tokens": 3, "prompt_tokens": 12},
    }
    assert success_report(hook, "sha256:ff") == {
        "base_url": "http://127.0.0.1:8080",
        "outcome": "success",
        "provider": "custom",
        "model": "gemma",
        "credential": "sha256:ff",
    }
    assert usage_report(hook) == {
        "base_url": "http://127.0.0.1:8080",
        "input_tokens": 12,
        "output_tokens": 3,
    }
    assert usage_report({**hook, "usage": None}) is None
    assert usage_report({**hook, "usage": {"prompt_tokens": 0, "output_tokens": 0}}) is None


def test_entry_credential_reads_the_key_or_its_variable() -> None:
    assert entry_credential({"api_key": "k1"}) == credential_fingerprint("k1")
    env = {"FB_KEY": "k2"}
    assert entry_credential({"key_env": "FB_KEY"}, env) == credential_fingerprint("k2")
    assert entry_credential({"key_env": "MISSING"}, env) is None


# --- the report queue ------------------------------------------------------------------


class BlockingSender:
    """Records what it sends; holds the worker inside the first send until released."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, path: str, body: dict[str, Any]) -> None:
        self.entered.set()
        assert self.release.wait(10)
        if body.get("boom"):
            raise OSError("hroute went away")
        self.sent.append((path, body))


def test_reporter_drops_when_full_and_never_blocks() -> None:
    sender = BlockingSender()
    reporter = Reporter(sender, maxsize=3)
    assert reporter.submit("/v1/reports", {"n": 0})
    assert sender.entered.wait(5)  # the worker holds report 0; the queue is empty
    assert all(reporter.submit("/v1/reports", {"n": n}) for n in (1, 2, 3))
    assert not reporter.submit("/v1/reports", {"n": 4})
    assert not reporter.submit("/v1/reports", {"n": 5})
    assert reporter.dropped == 2 and reporter.pending() == 4
    assert not reporter.flush(0.01)
    sender.release.set()
    assert reporter.flush(5)
    assert [b["n"] for _, b in sender.sent] == [0, 1, 2, 3]


def test_reporter_survives_a_failing_send() -> None:
    sender = BlockingSender()
    sender.release.set()
    reporter = Reporter(sender, maxsize=8)
    reporter.submit("/v1/reports", {"boom": True})
    reporter.submit("/v1/reports", {"n": 1})
    assert reporter.flush(5)
    assert reporter.failed == 1 and sender.sent == [("/v1/reports", {"n": 1})]


# --- hroute's view, failing open ------------------------------------------------------------


class FakeHroute:
    """Answers like `Client.usable`: listed URLs are down, anything else usable."""

    def __init__(self, down: dict[str, str] | None = None, reachable: bool = True) -> None:
        # "URL" is down whatever the model; "URL model" only for that model
        self.down = {_down_key(u): why for u, why in (down or {}).items()}
        self.reachable = reachable
        self.asked: list[tuple[str, str | None]] = []
        self.models: list[str | None] = []

    def usable(
        self,
        backend: str | None = None,
        *,
        base_url: str,
        credential: str | None = None,
        model: str | None = None,
    ) -> Usable:
        self.asked.append((base_url, credential))
        self.models.append(model)
        if not self.reachable:
            return Usable(True, None, "unknown", "hroute_unavailable", None, "fail-open")
        url = normalized_url(base_url)
        why = self.down.get(url) or self.down.get(f"{url} {model}")
        return Usable(why is None, "b", "unhealthy" if why else "healthy", why)


def _down_key(spec: str) -> str:
    url, _, model = spec.partition(" ")
    return f"{normalized_url(url)} {model}" if model else str(normalized_url(url))


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_view_says_why_a_backend_is_down() -> None:
    view = HealthView(FakeHroute({PRIMARY: "overloaded"}).usable)
    assert view.down(PRIMARY + "/") == "overloaded"
    assert view.down(FB1) is None
    assert view.down(None) is None


def test_view_stops_asking_an_unreachable_hroute_for_a_while() -> None:
    hroute, clock = FakeHroute(reachable=False), Clock()
    view = HealthView(hroute.usable, clock=clock, quiet_s=5.0)
    assert [view.down(PRIMARY) for _ in range(10)] == [None] * 10
    assert len(hroute.asked) == 1
    clock.t += 5.1
    view.down(PRIMARY)
    assert len(hroute.asked) == 2


# --- the gate on a stand-in AIAgent ---------------------------------------------------------


def entry_key(fb: Mapping[str, Any]) -> tuple[str, str, str]:
    """Hermes' `_fallback_entry_key`."""
    return (
        str(fb.get("provider") or "").lower(),
        str(fb.get("model") or ""),
        str(fb.get("base_url") or "").rstrip("/"),
    )


def hermes_restore(agent: Agent) -> bool:
    """Hermes' restore_primary_runtime, reduced to the state the gate depends on."""
    if not agent._fallback_activated:
        agent._fallback_index = 0
        return False
    agent.restores += 1
    agent.base_url, agent.model = (
        agent._primary_runtime["base_url"],
        agent._primary_runtime["model"],
    )
    agent._fallback_activated, agent._fallback_index = False, 0
    return True


def hermes_activate(agent: Agent, reason: Any = None) -> bool:
    """Hermes' try_activate_fallback: walk the chain, skipping `_unavailable_fallback_keys`."""
    if agent._fallback_index >= len(agent._fallback_chain):
        return False
    fb = agent._fallback_chain[agent._fallback_index]
    agent._fallback_index += 1
    if entry_key(fb) in agent._unavailable_fallback_keys:
        return agent._try_activate_fallback(reason)
    agent.base_url, agent.model, agent._fallback_activated = fb["base_url"] + "/", fb["model"], True
    return True


class Agent:
    """The attributes of run_agent.AIAgent that the gate reads and Hermes' helpers mutate."""

    def __init__(self, gate: Gate, chain: list[dict[str, str]]) -> None:
        self.gate = gate
        self.model, self.base_url, self.api_key = "gemma", PRIMARY, "primary-key"
        self._primary_runtime = {"model": "gemma", "base_url": PRIMARY, "api_key": "primary-key"}
        self._fallback_chain = chain
        self._fallback_index = 0
        self._fallback_activated = False
        self._unavailable_fallback_keys: set[tuple[str, str, str]] = set()
        self.restores = 0

    def _try_activate_fallback(self, reason: Any = None) -> bool:
        return self.gate.activate_fallback(
            self, lambda: hermes_activate(self, reason), entry_key, reason=reason
        )

    def _restore_primary_runtime(self) -> bool:
        return self.gate.restore_primary(self, lambda: hermes_restore(self))


CHAIN = [
    {"provider": "custom", "model": "fb1", "base_url": FB1, "api_key": "k1"},
    {"provider": "custom", "model": "fb2", "base_url": FB2, "api_key": "k2"},
]


def make_agent(down: dict[str, str], reachable: bool = True) -> tuple[Agent, FakeHroute]:
    hroute = FakeHroute(down, reachable)
    return Agent(Gate(HealthView(hroute.usable)), [dict(e) for e in CHAIN]), hroute


def test_on_a_fallback_the_agent_stays_while_the_primary_is_down() -> None:
    agent, hroute = make_agent({PRIMARY: "overloaded"})
    assert agent._try_activate_fallback()
    assert agent._restore_primary_runtime() is False
    assert agent.model == "fb1" and agent._fallback_activated and agent.restores == 0
    assert hroute.asked[-1] == (normalized_url(PRIMARY), credential_fingerprint("primary-key"))


def test_on_a_fallback_the_primary_is_restored_once_usable() -> None:
    agent, hroute = make_agent({})
    agent._try_activate_fallback()
    assert agent._restore_primary_runtime() is True
    assert agent.model == "gemma" and not agent._fallback_activated


def test_a_known_down_primary_is_left_before_the_first_request() -> None:
    agent, _ = make_agent({PRIMARY: "connection"})
    agent._restore_primary_runtime()
    assert agent._fallback_activated and agent.model == "fb1"


def test_fallbacks_hroute_says_are_down_are_skipped_for_that_activation_only() -> None:
    agent, hroute = make_agent({PRIMARY: "connection", FB1: "overloaded"})
    agent._restore_primary_runtime()
    assert agent.model == "fb2"
    assert agent._unavailable_fallback_keys == set()  # Hermes' session-long list is untouched
    assert (normalized_url(FB1), credential_fingerprint("k1")) in hroute.asked


def test_keys_hermes_itself_marked_stay_marked() -> None:
    agent, _ = make_agent({FB1: "overloaded"})
    mine = entry_key(CHAIN[1])
    agent._unavailable_fallback_keys.add(mine)
    agent._fallback_chain.append(
        {"provider": "custom", "model": "fb3", "base_url": "http://127.0.0.1:9003"}
    )
    assert agent._try_activate_fallback()
    assert agent.model == "fb3" and agent._unavailable_fallback_keys == {mine}


def test_nothing_is_skipped_when_every_fallback_is_down() -> None:
    agent, _ = make_agent({FB1: "overloaded", FB2: "overloaded"})
    assert agent._try_activate_fallback() and agent.model == "fb1"
    agent, _ = make_agent({PRIMARY: "connection", FB1: "overloaded", FB2: "timeout"})
    agent._restore_primary_runtime()
    assert not agent._fallback_activated and agent.model == "gemma"  # Hermes decides, as without us


def test_without_hroute_the_agent_behaves_as_hermes_alone() -> None:
    agent, _ = make_agent({PRIMARY: "connection"}, reachable=False)
    agent._restore_primary_runtime()
    assert not agent._fallback_activated
    agent._try_activate_fallback()
    assert agent._restore_primary_runtime() is True and agent.model == "gemma"


class FakeClient(FakeHroute):
    """`hroute.client.Client`'s two methods the plugin uses; records what it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def request(
        self, method: str, path: str, body: Any = None, budget_s: float | None = None
    ) -> tuple[int, Any]:
        self.sent.append((path, body))
        return 202, {}


def test_hooks_fingerprint_the_key_of_the_agent_on_this_thread() -> None:
    client = FakeClient()
    plugin = HermesPlugin(client)  # type: ignore[arg-type]
    agent = Agent(plugin.gate, [])
    plugin.gate.restore_primary(agent, lambda: hermes_restore(agent))  # each turn starts here
    plugin.on_api_request_error(**hermes_error_hook())
    plugin.on_api_request_error(**hermes_error_hook(base_url=FB1))  # not the agent's URL
    plugin.on_post_api_request(
        base_url=PRIMARY,
        provider="custom",
        model="gemma",
        usage={"prompt_tokens": 5, "output_tokens": 2},
    )
    other = threading.Thread(target=lambda: plugin.on_api_request_error(**hermes_error_hook()))
    other.start()
    other.join()
    assert plugin.reporter.flush(5)
    paths = [path for path, _ in client.sent]
    bodies = [body for _, body in client.sent]
    assert paths == ["/v1/reports"] * 3 + ["/v1/usage", "/v1/reports"]
    assert bodies[0]["credential"] == credential_fingerprint("primary-key")
    assert "credential" not in bodies[1] and "credential" not in bodies[4]
    assert bodies[2]["outcome"] == "success" and bodies[2]["credential"] == bodies[0]["credential"]
    assert "primary-key" not in repr(client.sent)


# --- auxiliary calls -------------------------------------------------------------------------


def normalize_label(provider: str) -> str:
    return {"custom": "local/custom"}.get(provider, provider)


def test_auxiliary_main_runtime_down_hides_its_labels_during_resolution() -> None:
    gate = Gate(HealthView(FakeHroute({PRIMARY: "overloaded"}).usable))
    unhealthy = lambda label: label == "nous"  # noqa: E731 - Hermes' own 402 cache
    seen = {}

    def resolve() -> str:
        seen.update(
            {
                lbl: gate.provider_unhealthy(lbl, None, lambda lbl=lbl: unhealthy(lbl))
                for lbl in ("local/custom", "openrouter", "nous")
            }
        )
        return "client"

    runtime = {"provider": "custom", "base_url": PRIMARY, "api_key": "k"}
    assert gate.resolve_auxiliary(runtime, resolve, dict, normalize_label) == "client"
    assert seen == {"local/custom": True, "openrouter": False, "nous": True}
    # only while resolving
    assert gate.provider_unhealthy("local/custom", None, lambda: False) is False
    runtime = {"provider": "openrouter", "base_url": FB1}
    gate.resolve_auxiliary(runtime, resolve, dict, normalize_label)
    assert seen["local/custom"] is False


def test_auxiliary_fallback_entries_that_are_down_resolve_to_nothing() -> None:
    gate = Gate(HealthView(FakeHroute({FB1: "timeout"}).usable))
    resolve = lambda entry: ("client", entry["model"])  # noqa: E731
    assert gate.resolve_fallback_entry(CHAIN[0], lambda: resolve(CHAIN[0])) == (None, None)
    assert gate.resolve_fallback_entry(CHAIN[1], lambda: resolve(CHAIN[1])) == ("client", "fb2")


# --- wiring --------------------------------------------------------------------------------


@pytest.fixture
def fake_helpers() -> Iterator[types.ModuleType]:
    mod = types.ModuleType("fake_hermes_helpers")

    def restore_primary_runtime(agent: Any) -> bool:
        return hermes_restore(agent)

    mod.restore_primary_runtime = restore_primary_runtime
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


def test_wiring_wraps_checks_and_unwraps(
    fake_helpers: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    original = fake_helpers.restore_primary_runtime
    hroute = FakeHroute({PRIMARY: "overloaded"})
    wiring = Wiring(Gate(HealthView(hroute.usable)))
    groups = (
        Group("restore", "fake_hermes_helpers", (Function("restore_primary_runtime", ("agent",)),)),
        Group(
            "fallback",
            "fake_hermes_helpers",
            (Function("try_activate_fallback", ("agent",)),),
            ("_fallback_entry_key",),
        ),
        Group("auxiliary", "no_such_hermes_module", (Function("_resolve_auto", ()),)),
    )
    with caplog.at_level(logging.WARNING, logger="hroute_hermes"):
        assert wiring.install(groups) == ["restore"]
    assert (
        "the fallback guard is off: fake_hermes_helpers has no try_activate_fallback, "
        "_fallback_entry_key" in caplog.text
    )
    assert "the auxiliary guard is off: cannot import no_such_hermes_module" in caplog.text
    assert wiring.status.guards == {"restore": "on", "fallback": "off", "auxiliary": "off"}

    agent, _ = make_agent({})
    agent._fallback_activated = True
    assert fake_helpers.restore_primary_runtime is not original
    assert fake_helpers.restore_primary_runtime(agent) is False  # the primary is down
    assert hroute.asked

    Wiring(Gate(HealthView(FakeHroute().usable))).install(
        groups[:1]
    )  # a second plugin: no double wrap
    assert fake_helpers.restore_primary_runtime.__hroute_original__ is original
    wiring.uninstall()
    assert fake_helpers.restore_primary_runtime is original


def test_the_plugin_imports_only_the_standard_library_and_hroute_client() -> None:
    code = (
        "import sys; before = set(sys.modules); import hroute_hermes\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(*sorted(new - set(sys.stdlib_module_names)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["hroute", "hroute_hermes"]


# --- every stand-in takes what Hermes passes and never breaks a turn ------------------------


class Recorder:
    """A Hermes function: records each call's exact arguments and returns `result`.

    Its signature is `params` (each defaulting to None), then whatever a later Hermes adds.
    """

    def __init__(self, name: str, result: Any, params: tuple[str, ...] = ()) -> None:
        self.__name__ = name
        self.result = result
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.__signature__ = inspect.Signature(
            [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
             for p in params]
            + [inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
               inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
        )  # fmt: skip

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.result


HELPERS = {
    # 0.22's signatures; each stand-in must also take anything a later Hermes adds.
    "restore_primary_runtime": (False, ("agent",)),
    "try_activate_fallback": (True, ("agent", "reason", "reset_at")),
    "_fallback_entry_key": (("custom", "fb1", FB1), ("fb",)),
    "_resolve_auto_route": (("client", "model", "custom"), ("main_runtime", "task")),
    "_resolve_auto": (("client", "model"), ("main_runtime", "task")),
    "_is_provider_unhealthy": (False, ("label", "base_url")),
    "_resolve_fallback_entry": (("client", "fb1"), ("entry",)),
    "_normalize_main_runtime": ({}, ("main_runtime",)),
    "_normalize_chain_label": ("local/custom", ("provider",)),
}


@pytest.fixture
def hermes_module() -> Iterator[types.ModuleType]:
    """A module holding every function the plugin may wrap, as recorders."""
    mod = types.ModuleType("fake_hermes_everything")
    for name, (result, params) in HELPERS.items():
        setattr(mod, name, Recorder(name, result, params))
    sys.modules[mod.__name__] = mod
    yield mod
    del sys.modules[mod.__name__]


def plugin_group(name: str, mod: types.ModuleType) -> tuple[Group, ...]:
    """The plugin's own group that wraps `name`, pointed at the fake module (whose agents are
    placeholders: the agent's attributes are tested on their own)."""
    return tuple(
        replace(g, module=mod.__name__, agent=(), mentions=())
        for g in groups_for(None, escalation=True)
        if name in (f.name for f in g.wrapped)
    )[:1]


CALLS = {
    # name -> (args, kwargs) as Hermes 0.22 (or a later one) might pass them
    "restore_primary_runtime": ((), {"agent": "AGENT", "new_kwarg": 1}),
    "try_activate_fallback": (("AGENT",), {"reason": "overloaded", "reset_at": 1.7e9, "later": 2}),
    "_resolve_auto_route": ((), {"main_runtime": {"provider": "custom"}, "task": "title", "x": 3}),
    "_resolve_auto": (({"provider": "custom"}, "title", "extra positional"), {}),
    "_is_provider_unhealthy": (("local/custom", PRIMARY, "extra"), {"more": True}),
    "_resolve_fallback_entry": (({"provider": "custom"}, "extra"), {"y": 4}),
}


def install_for(name: str, gate: Gate, mod: types.ModuleType) -> Wiring:
    wiring = Wiring(gate)
    assert wiring.install(plugin_group(name, mod))
    return wiring


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_stand_in_hands_unknown_arguments_on_unchanged(
    hermes_module: types.ModuleType, name: str
) -> None:
    original = getattr(hermes_module, name)
    wiring = install_for(name, Gate(HealthView(FakeHroute().usable)), hermes_module)
    try:
        stand_in = getattr(hermes_module, name)
        assert stand_in is not original, f"{name} was not wrapped"
        args, kwargs = CALLS[name]
        assert stand_in(*args, **kwargs) == original.result
        assert original.calls == [(args, kwargs)]
    finally:
        wiring.uninstall()


class BrokenView(HealthView):
    """hroute's own logic failing in the worst way: raising from inside the decision."""

    def __init__(self) -> None:
        super().__init__(FakeHroute().usable)

    def down(
        self, base_url: object, credential: str | None = None, model: object = None
    ) -> str | None:
        raise RuntimeError("a bug in hroute")


class BrokenAgent:
    """An agent whose attributes hroute reads all raise (another Hermes' layout)."""

    def __getattr__(self, name: str) -> Any:
        raise KeyError(name)


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("broken", ["view", "agent"])
def test_when_hroute_logic_raises_hermes_own_function_runs_with_what_it_was_given(
    hermes_module: types.ModuleType, name: str, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    original = getattr(hermes_module, name)
    view = BrokenView() if broken == "view" else HealthView(FakeHroute().usable)
    wiring = install_for(name, Gate(view), hermes_module)
    args, kwargs = CALLS[name]
    if broken == "agent":
        args = tuple(BrokenAgent() if a == "AGENT" else a for a in args)
        kwargs = {k: BrokenAgent() if v == "AGENT" else v for k, v in kwargs.items()}
    try:
        with caplog.at_level(logging.WARNING, logger="hroute_hermes"):
            for _ in range(3):
                assert getattr(hermes_module, name)(*args, **kwargs) == original.result
        assert original.calls == [(args, kwargs)] * 3
    finally:
        wiring.uninstall()


def test_hermes_own_exceptions_pass_through_and_the_original_runs_once(
    hermes_module: types.ModuleType,
) -> None:
    calls = []

    def restore_primary_runtime(agent: Any) -> bool:
        calls.append(agent)
        raise ValueError("Hermes' own failure")

    hermes_module.restore_primary_runtime = restore_primary_runtime
    wiring = install_for(
        "restore_primary_runtime", Gate(HealthView(FakeHroute().usable)), hermes_module
    )
    agent, _ = make_agent({})
    try:
        with pytest.raises(ValueError, match="Hermes' own failure"):
            hermes_module.restore_primary_runtime(agent)
        assert calls == [agent]
    finally:
        wiring.uninstall()


def test_a_failing_guard_says_so_once_and_the_turn_goes_on(
    hermes_module: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    wiring = install_for("restore_primary_runtime", Gate(BrokenView()), hermes_module)
    agent, _ = make_agent({})
    agent._fallback_activated = True
    try:
        with caplog.at_level(logging.WARNING, logger="hroute_hermes"):
            for _ in range(3):
                assert hermes_module.restore_primary_runtime(agent) is False
    finally:
        wiring.uninstall()
    lines = [r.getMessage() for r in caplog.records if "restore" in r.getMessage()]
    assert len(lines) == 1 and "RuntimeError: a bug in hroute" in lines[0], lines


# --- 0.22: the provider's reset time becomes the cooldown end --------------------------------


@pytest.mark.parametrize(
    ("reset_at", "delay"),
    [
        (1_700_000_090.0, 90.0),
        (1_700_000_090_000, 90.0),  # milliseconds
        ("1700000090", 90.0),
        ("2023-11-14T22:14:50+00:00", 90.0),
        ("2023-11-14T22:14:50Z", 90.0),
        (1_699_999_000.0, None),  # already past
        ("soon", None),
        (None, None),
        (True, None),
        (1e300, 86400.0),  # capped to what hroute accepts
    ],
)
def test_reset_delay_reads_what_hermes_passes(reset_at: object, delay: float | None) -> None:
    assert reset_delay_s(reset_at, 1_700_000_000.0) == delay


def test_a_fallback_with_a_reset_time_reports_it_as_the_cooldown_end() -> None:
    sent: list[dict[str, Any]] = []
    gate = Gate(HealthView(FakeHroute().usable), report=sent.append, wall_clock=lambda: 1_000.0)
    agent = Agent(gate, [dict(e) for e in CHAIN])
    reason = types.SimpleNamespace(value="rate_limit")  # Hermes passes a FailoverReason enum
    assert gate.activate_fallback(
        agent, lambda: hermes_activate(agent), entry_key, reason=reason, reset_at=1_300.0
    )
    assert sent == [
        {
            "base_url": "http://127.0.0.1:8080",
            "outcome": "failure",
            "reason": "rate_limit",
            "retry_after_s": 300.0,
            "credential": credential_fingerprint("primary-key"),
        }
    ]
    assert agent.model == "fb1"
    gate.activate_fallback(agent, lambda: hermes_activate(agent), entry_key, reset_at=None)
    assert len(sent) == 1  # no reset time, nothing beyond the hook's own report


# --- what is off, said once where people look -------------------------------------------------


def test_in_the_plugin_host_nothing_is_wrapped_and_the_status_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HERMES_PLUGIN_HOST_PROCESS", "1")
    client = FakeClient()
    plugin = HermesPlugin(client)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="hroute_hermes"):
        assert plugin.install() == []
        plugin.install()
        assert plugin.wiring.installed == {}
        # The host starts before Hermes' agent.log exists: said at the first hook call.
        assert "plugins.isolation is 'host'" not in caplog.text
        plugin.on_api_request_error(**hermes_error_hook())
        plugin.on_api_request_error(**hermes_error_hook())
    assert caplog.text.count("plugins.isolation is 'host'") == 1
    assert plugin.reporter.flush(5)
    first, second = (body for _, body in client.sent)
    assert first["client"]["isolation"] == "host"
    assert first["client"]["guards"] == {"restore": "off", "fallback": "off", "auxiliary": "off"}
    assert "client" not in second  # said again only when it changes, or a minute later


def test_notices_wait_for_hermes_log_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as while Hermes loads plugins
    records: list[logging.LogRecord] = []
    status = Status()
    status.guard_off("auxiliary", "agent.auxiliary_client has no _resolve_auto_route")
    status.guard_off("auxiliary", "again")  # said once
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    monkeypatch.setattr(root, "handlers", [handler])  # agent.log now exists
    status.flush()
    status.flush()
    assert [r.getMessage() for r in records] == [
        "hroute: the auxiliary guard is off: agent.auxiliary_client has no _resolve_auto_route"
    ]


def test_status_goes_to_the_daemon_when_it_changes_or_every_minute() -> None:
    clock = Clock()
    status = Status(clock=clock)
    status.guard_on("restore")
    first = status.client()
    assert first is not None and first["guards"]["restore"] == "on"
    assert first["guards"]["fallback"] == "off" and first["isolation"] == "in_process"
    assert status.client() is None
    status.guard_failed("restore", RuntimeError("bug"))
    assert status.client()["guards"]["restore"] == "failing"
    clock.t += 61
    assert status.client() is not None


def test_the_restore_check_names_the_model_hermes_would_use() -> None:
    """Two models on one server: hroute's verdict for the primary's own model decides."""
    agent, hroute = make_agent({f"{PRIMARY} gemma": "model_not_found"})
    agent._restore_primary_runtime()
    assert hroute.models[0] == "gemma"
    assert agent._fallback_activated and agent.model == "fb1"  # gemma is the one missing
    agent2, hroute2 = make_agent({f"{PRIMARY} another-model": "model_not_found"})
    agent2._restore_primary_runtime()
    assert not agent2._fallback_activated and agent2.model == "gemma"
    assert hroute2.models[0] == "gemma"


# --- the Hermes surface: every element checked before a guard says "on" ---------------------


def restore_group(mod: types.ModuleType) -> Group:
    """The restore guard of the 0.18/0.19 line (agent attributes included), on `mod`."""
    group = next(g for g in LINE_19.groups if g.name == "restore")
    return replace(group, module=mod.__name__, mentions=())


def test_an_agent_lacking_an_attribute_leaves_its_guard_off_and_hermes_alone(
    fake_helpers: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    hroute = FakeHroute({PRIMARY: "overloaded"})
    wiring = Wiring(Gate(HealthView(hroute.usable)))
    assert wiring.install((restore_group(fake_helpers),)) == ["restore"]
    assert wiring.status.guards["restore"] == "off"  # not "on" before an agent was checked
    agent, _ = make_agent({})
    agent._fallback_activated = True
    del agent._primary_runtime  # a Hermes that renamed it
    try:
        with caplog.at_level(logging.WARNING, logger="hroute_hermes"):
            for _ in range(2):
                with pytest.raises(AttributeError):  # Hermes' own function ran, unguarded
                    fake_helpers.restore_primary_runtime(agent)
    finally:
        wiring.uninstall()
    assert wiring.status.guards["restore"] == "off"
    assert not hroute.asked
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "the restore guard is off" in lines[0]
    assert "has no _primary_runtime" in lines[0], lines


def test_an_agent_with_every_attribute_turns_its_guard_on(fake_helpers: types.ModuleType) -> None:
    hroute = FakeHroute({PRIMARY: "overloaded"})
    wiring = Wiring(Gate(HealthView(hroute.usable)))
    wiring.install((restore_group(fake_helpers),))
    agent, _ = make_agent({})
    agent._fallback_activated = True
    try:
        assert fake_helpers.restore_primary_runtime(agent) is False  # the guard decided
    finally:
        wiring.uninstall()
    assert wiring.status.guards["restore"] == "on" and hroute.asked


class RecordingGate(Gate):
    def activate_fallback(self, agent: Any, activate: Any, entry_key: Any, **named: Any) -> Any:
        self.named = named
        return activate()


def test_arguments_are_read_by_name_when_hermes_reorders_them() -> None:
    mod = types.ModuleType("fake_reordered_helpers")

    def try_activate_fallback(agent: Any, reset_at: Any = None, reason: Any = None) -> bool:
        return True

    mod.try_activate_fallback = try_activate_fallback  # type: ignore[attr-defined]
    mod._fallback_entry_key = entry_key  # type: ignore[attr-defined]
    group = next(g for g in LINE_22.groups if g.name == "fallback")
    gate = RecordingGate(HealthView(FakeHroute().usable))
    wiring = Wiring(gate)
    sys.modules[mod.__name__] = mod
    try:
        assert wiring.install((replace(group, module=mod.__name__, mentions=()),))
        agent, _ = make_agent({})
        assert mod.try_activate_fallback(agent, 1.7e9, "rate_limit") is True
    finally:
        wiring.uninstall()
        del sys.modules[mod.__name__]
    assert gate.named == {"reason": "rate_limit", "reset_at": 1.7e9}


def test_a_renamed_parameter_or_a_vanished_mention_leaves_the_guard_off() -> None:
    mod = types.ModuleType("fake_renamed_helpers")

    def try_activate_fallback(agent: Any, why: Any = None, reset_at: Any = None) -> bool:
        return True

    mod.try_activate_fallback = try_activate_fallback  # type: ignore[attr-defined]
    mod._fallback_entry_key = entry_key  # type: ignore[attr-defined]
    group = replace(next(g for g in LINE_22.groups if g.name == "fallback"), module=mod.__name__)
    wiring = Wiring(Gate(HealthView(FakeHroute().usable)))
    sys.modules[mod.__name__] = mod
    try:
        assert wiring.install((group,)) == []
    finally:
        del sys.modules[mod.__name__]
    why = wiring.status.why["fallback"]
    assert "try_activate_fallback(reason=)" in why and "'_unavailable_fallback_keys'" in why
    assert mod.try_activate_fallback is try_activate_fallback


def test_each_line_declares_its_own_signatures_and_comes_first_for_its_releases() -> None:
    def fallback_params(version: str | None) -> tuple[str, ...]:
        group = next(g for g in groups_for(version) if g.name == "fallback")
        return group.wrapped[0].params

    assert fallback_params("0.22.2.post1") == ("agent", "reason", "reset_at")
    assert fallback_params("0.19.0") == ("agent", "reason")
    assert fallback_params("0.23.0") == ("agent", "reason", "reset_at")  # newest first
    assert not any(g.name == "escalation" for g in groups_for("0.19.0"))


@pytest.mark.parametrize(("version", "said"), [("0.19.0", False), ("0.23.1", True)])
def test_an_untested_hermes_is_said_once_in_its_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, version: str, said: bool
) -> None:
    plugin = HermesPlugin(client=FakeClient())  # type: ignore[arg-type]
    plugin.status.version = version
    monkeypatch.setattr(plugin.wiring, "install", lambda groups: [])
    with caplog.at_level(logging.WARNING, logger="hroute_hermes"):
        for _ in range(3):
            plugin.install()
            plugin.status.flush(hook=True)
    lines = [r.getMessage() for r in caplog.records if "not a release" in r.getMessage()]
    assert len(lines) == (1 if said else 0), lines
    if said:
        assert f"Hermes {version} is not a release this plugin was tested with" in lines[0]
        assert "0.22.2.post1" in lines[0]

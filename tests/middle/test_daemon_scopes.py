"""Scopes and incidents through the whole daemon in process, probing fake backends served on
loopback: a key's 429 is that key's, a model's is that model's, a missing Ollama model holds
only that model, and a burst of reports of one outage is one incident. Probe intervals and
cooldowns run on the manual clock."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.support.fakebackend import Behavior, FakeBackend
from tests.support.inprocess import InProcessDaemon

pytestmark = pytest.mark.anyio

KEY_1, KEY_2 = "sha256:0000000000000001", "sha256:0000000000000002"


def config(backends: dict[str, str], *, interval: float = 5, base_s: float = 30) -> str:
    lines = [
        "defaults:",
        f"  probe: {{interval_s: {interval}, timeout_s: 2, fall: 1, rise: 1, jitter: 0}}",
        f"  cooldown: {{base_s: {base_s}, max_s: 300, jitter: 0}}",
        "backends:",
    ]
    lines += [f"  {name}: {spec}" for name, spec in backends.items()]
    return "\n".join(lines) + "\n"


async def healthy(d: InProcessDaemon, name: str) -> None:
    async def seen() -> bool:
        return (await d.backend(name))["state"] == "healthy"

    await d.until(seen, advance_s=1.0, what=f"{name} to be probed healthy")


@pytest.fixture
def cloud():
    with FakeBackend(kind="openai", models=["gpt-a", "gpt-b"]) as api:
        yield api


@pytest.fixture
async def two_models(tmp_path: Path, cloud: FakeBackend, monkeypatch):
    monkeypatch.setenv("K", "sk-test-key")
    url = cloud.url("/v1")
    text = config(
        {
            "gpt-a": f"{{kind: openai, base_url: '{url}', model: gpt-a, key_env: K}}",
            "gpt-b": f"{{kind: openai, base_url: '{url}', model: gpt-b, key_env: K}}",
        }
    )
    async with InProcessDaemon(tmp_path, text) as d:
        await healthy(d, "gpt-a")
        yield d, url


async def test_a_429_for_one_model_of_a_key_leaves_its_other_model_and_other_keys(two_models):
    d, url = two_models
    status, _ = await d.report(
        base_url=url,
        reason="rate_limit",
        status_code=429,
        model="gpt-a",
        credential=KEY_1,
        retry_after_s=60,
    )
    assert status == 202
    a = await d.usable(base_url=url, model="gpt-a", credential=KEY_1)
    assert (a["usable"], a["reason"], a["backend"], a["scope"]) == (
        False,
        "rate_limit",
        "gpt-a",
        "key",
    )
    assert (await d.usable(base_url=url, model="gpt-b", credential=KEY_1))["usable"] is True
    assert (await d.usable(base_url=url, model="gpt-a", credential=KEY_2))["usable"] is True
    assert (await d.usable("gpt-a"))["usable"] is True  # callers that name no key
    await d.clock.advance(61)
    assert (await d.usable(base_url=url, model="gpt-a", credential=KEY_1))["usable"] is True


async def test_an_upstream_rate_limit_is_the_models_for_every_key(two_models) -> None:
    d, url = two_models
    await d.report(base_url=url, reason="upstream_rate_limit", model="gpt-b")
    assert (await d.usable(base_url=url, model="gpt-b"))["usable"] is False
    assert (await d.usable(base_url=url, model="gpt-b", credential=KEY_2))["usable"] is False
    assert (await d.usable(base_url=url, model="gpt-a"))["usable"] is True
    [cooldown] = await d.events("cooldown")
    assert (cooldown["scope"], cooldown.get("model")) == ("model", "gpt-b")


@pytest.mark.parametrize(
    ("reason", "status_code"),
    [("overloaded", 503), ("server_error", 500), ("timeout", None)],
)
async def test_a_server_failure_holds_both_models_of_the_server(two_models, reason, status_code):
    d, url = two_models
    fields = {"status_code": status_code} if status_code else {}
    await d.report(base_url=url, reason=reason, model="gpt-a", **fields)
    for model in ("gpt-a", "gpt-b"):
        assert (await d.usable(base_url=url, model=model))["usable"] is False, model
    [cooldown] = await d.events("cooldown")
    assert cooldown["scope"] == "server"


async def test_an_agents_auth_failure_is_its_keys_and_without_a_key_nobodys(two_models) -> None:
    d, _ = two_models
    status, _ = await d.report("gpt-a", reason="auth", status_code=401)
    assert status == 202
    assert (await d.usable("gpt-a"))["usable"] is True  # whose key? nobody's to hold
    await d.report("gpt-a", reason="auth", status_code=401, credential=KEY_1)
    assert (await d.usable("gpt-a", credential=KEY_1))["usable"] is False
    assert (await d.usable("gpt-a", credential=KEY_2))["usable"] is True
    assert (await d.usable("gpt-b", credential=KEY_1))["usable"] is False  # the key's, every model


@pytest.fixture
def ollama():
    with FakeBackend(kind="ollama", models=["qwen3.6:9b", "gemma3:4b"]) as fb:
        yield fb


async def test_an_ollama_model_that_is_not_installed_is_held_alone(tmp_path, ollama) -> None:
    url = ollama.base_url
    text = config(
        {
            "qwen": f"{{kind: ollama, base_url: '{url}', model: 'qwen3.6:9b'}}",
            "gemma": f"{{kind: ollama, base_url: '{url}', model: 'gemma3:4b'}}",
            "llama3": f"{{kind: ollama, base_url: '{url}', model: 'llama3:8b'}}",
            "or-a": f"{{kind: openai, base_url: '{url}/v1', model: 'qwen3.6:9b'}}",
        }
    )
    async with InProcessDaemon(tmp_path, text) as d:

        async def held() -> dict | None:
            b = await d.backend("llama3")
            return b if b["reason"] == "model_not_found" else None

        missing = await d.until(held, advance_s=1.0, what="llama3 to be held for its model")
        assert missing["state"] == "healthy" and missing["usable"] is False
        assert missing["blocked_by"]["scope"] == "model"
        assert "installed: gemma3:4b, qwen3.6:9b" in missing["blocked_by"]["detail"]
        for name in ("qwen", "gemma", "or-a"):
            await healthy(d, name)
            assert (await d.backend(name))["usable"] is True, name
        asked = await d.usable(base_url=url + "/v1", model="llama3:8b")
        assert (asked["usable"], asked["backend"], asked["reason"]) == (
            False,
            "llama3",
            "model_not_found",
        )
        line = await d.wait_for_log("ollama model llama3:8b (llama3): cooling down until a probe")
        assert "installed: gemma3:4b, qwen3.6:9b" in line
        # A report that llama3 is missing is llama3's: the rest of the server stays usable.
        await d.report(base_url=url, reason="model_not_found", model="llama3:8b")
        assert (await d.usable(base_url=url, model="qwen3.6:9b"))["usable"] is True
        assert (await d.usable("or-a"))["usable"] is True
        # Installed later: the next probe lifts it.
        ollama.models.append("llama3:8b")

        async def lifted() -> bool:
            return (await d.backend("llama3"))["usable"]

        await d.until(lifted, advance_s=1.0, what="llama3 to be usable")
        await d.wait_for_log("ollama model llama3:8b (llama3): cooldown over")


async def test_twenty_reports_of_one_outage_are_one_incident(tmp_path: Path) -> None:
    with FakeBackend(kind="openai", models=["m"]) as fb:
        text = config(
            {"o": f"{{kind: openai, base_url: '{fb.url('/v1')}', model: m}}"},
            interval=60,  # the first probe only: pokes never come closer than the interval
            base_s=2,
        )
        async with InProcessDaemon(tmp_path, text) as d:
            await healthy(d, "o")
            probes_at_start = fb.count("GET", "/v1/models")
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(lambda: d.report("o", reason="overloaded", status_code=503))
            [first] = await d.events("cooldown")
            assert first["cooldown_s"] == 2 and first["scope"] == "server"

            await d.clock.advance(2.01)
            assert (await d.usable("o"))["usable"] is True
            await d.wait_for_log("o: cooldown over (overloaded)")
            # Twenty reports and the cooldown's end poked the prober: none of it brought a
            # probe closer than the 60 s interval to the first (the prober's floor).
            assert fb.count("GET", "/v1/models") == probes_at_start

            await d.report("o", reason="overloaded", status_code=503)
            second = (await d.events("cooldown"))[1]
            assert second["cooldown_s"] == 4  # the second incident: the cooldown grows


@pytest.mark.parametrize(
    ("status", "reason"),
    [(429, "rate_limit"), (503, "overloaded"), (500, "server_error")],
)
async def test_a_probes_failure_holds_the_whole_server(two_models, cloud, status, reason) -> None:
    """A probe names no key and no model a request used: what it sees is the server's."""
    d, url = two_models
    cloud.set_behavior("/v1/models", Behavior(status=status, headers={"Retry-After": "30"}))

    async def held() -> bool:
        return not (await d.usable(base_url=url, model="gpt-b"))["usable"]

    await d.until(held, advance_s=1.0, what=f"a probe's {status} to hold the server")
    assert (await d.usable(base_url=url, model="gpt-a", credential=KEY_2))["usable"] is False
    assert (await d.backend("gpt-a"))["reason"] == reason


async def test_a_probes_401_blocks_until_a_probe_succeeds(two_models, cloud) -> None:
    d, _ = two_models
    cloud.set_behavior("/v1/models", Behavior(status=401))

    async def blocked() -> bool:
        return (await d.backend("gpt-a"))["reason"] == "auth"

    await d.until(blocked, advance_s=1.0, what="the probe's 401 to block")
    await d.clock.advance(301)  # past the longest cooldown: only a probe that gets in ends it
    assert (await d.usable("gpt-a"))["usable"] is False
    cloud.clear_behaviors()

    async def lifted() -> bool:
        return (await d.usable("gpt-a"))["usable"]

    await d.until(lifted, advance_s=1.0, what="a good probe to lift the block")


STREAM = """
defaults: {cooldown: {base_s: 5, jitter: 0}}
backends:
  a: {kind: openai, base_url: "http://127.0.0.1:9/v1", model: m, probe: {enabled: false}}
  b: {kind: openai, base_url: "https://api.example.com/v1", model: m, probe: {enabled: false}}
"""


async def test_a_stream_of_changes_neither_walks_the_records_each_nor_puts_an_end_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-sync or a storm changes the registry thousands of times: each change must not
    walk every record to find the next deadline, and the changes must not keep postponing
    the end of a cooldown that is due."""
    from hroute.core.credentials import fingerprint
    from hroute.core.registry import Registry

    walks: list[float] = []
    real = Registry.expire
    monkeypatch.setattr(Registry, "expire", lambda self: walks.append(1) or real(self))
    async with InProcessDaemon(tmp_path, STREAM) as d:
        assert (await d.report("a", reason="server_error"))[0] == 202  # ends in 5 s
        walks.clear()
        for i in range(100):  # ten seconds of a change every 100 ms, on b
            fp = fingerprint(f"key-{i}")
            await d.report("b", reason="rate_limit", credential=fp, retry_after_s=600)
            await d.clock.advance(0.1)
        assert [e["backend"] for e in await d.events("cooldown_end")] == ["a"]
        assert len(walks) <= 10  # at the deadline and a few ticks, not once a change

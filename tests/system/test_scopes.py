"""Scopes and incidents with `hroute run` as users run it: a fake Ollama that serves two of
three configured models, a fake cloud API with two models and one key, and a burst of reports
of one outage."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.fakebackend import FakeBackend

pytestmark = pytest.mark.system


def config(backends: dict[str, str], *, interval: float = 0.2, base_s: float = 30) -> str:
    lines = [
        "defaults:",
        f"  probe: {{interval_s: {interval}, timeout_s: 0.5, fall: 1, rise: 1, jitter: 0}}",
        f"  cooldown: {{base_s: {base_s}, max_s: 300, jitter: 0.1}}",
        "backends:",
    ]
    lines += [f"  {name}: {spec}" for name, spec in backends.items()]
    return "\n".join(lines) + "\n"


def cooldowns(d: Daemon) -> list[dict]:
    return [e for e in d.get("/v1/events")[1]["events"] if e["event"] == "cooldown"]


def test_ollama_with_two_of_three_models_holds_only_the_missing_one(tmp_path: Path) -> None:
    with FakeBackend(kind="ollama", models=["qwen3.6:9b", "gemma3:4b"]) as ollama:
        url = ollama.base_url
        cfg = config(
            {
                "qwen": f"{{kind: ollama, base_url: '{url}', model: 'qwen3.6:9b'}}",
                "gemma": f"{{kind: ollama, base_url: '{url}', model: 'gemma3:4b'}}",
                "llama3": f"{{kind: ollama, base_url: '{url}', model: 'llama3:8b'}}",
                "or-a": f"{{kind: openai, base_url: '{url}/v1', model: 'qwen3.6:9b'}}",
            }
        )
        with Daemon(tmp_path, cfg) as d:
            missing = wait_until(
                lambda: (b := d.backend("llama3"))["reason"] == "model_not_found" and b,
                what="llama3 to be held for its model",
            )
            assert missing["state"] == "healthy" and missing["usable"] is False
            assert missing["blocked_by"]["scope"] == "model"
            assert "installed: gemma3:4b, qwen3.6:9b" in missing["blocked_by"]["detail"]
            for name in ("qwen", "gemma", "or-a"):
                assert d.backend(name)["usable"] is True, name
            client = d.client()
            assert client.usable(base_url=url + "/v1", model="qwen3.6:9b").usable is True
            llama3 = client.usable(base_url=url + "/v1", model="llama3:8b")
            assert (llama3.usable, llama3.backend, llama3.reason) == (
                False,
                "llama3",
                "model_not_found",
            )
            line = d.wait_for_log("ollama model llama3:8b (llama3): cooling down until a probe")
            assert "installed: gemma3:4b, qwen3.6:9b" in line
            # One listing per server, every model checked against it: no probe per model.
            ollama.clear_requests()
            ollama.wait_for_requests(3, "/api/tags", timeout_s=5)
            assert ollama.count("GET", "/api/tags") <= ollama.count("GET", "/api/version") + 1

            # A report that llama3 is missing is llama3's: the rest of the server stays usable.
            client.report(base_url=url, reason="model_not_found", model="llama3:8b")
            assert client.usable(base_url=url, model="qwen3.6:9b").usable is True
            assert client.usable("or-a").usable is True

            # Installed later: the next probe lifts it.
            ollama.models.append("llama3:8b")
            wait_until(lambda: d.backend("llama3")["usable"], what="llama3 to be usable")
            d.wait_for_log("ollama model llama3:8b (llama3): cooldown over")


def test_cloud_429_for_one_model_of_a_key_leaves_its_other_model(tmp_path: Path) -> None:
    with FakeBackend(kind="openai", models=["gpt-a", "gpt-b"]) as api:
        url = api.url("/v1")
        cfg = config(
            {
                "gpt-a": f"{{kind: openai, base_url: '{url}', model: gpt-a, key_env: K}}",
                "gpt-b": f"{{kind: openai, base_url: '{url}', model: gpt-b, key_env: K}}",
            }
        )
        with Daemon(tmp_path, cfg, env={"K": "sk-test-key"}) as d:
            d.wait_state("gpt-a", "healthy")
            client = d.client()
            assert client.report(
                base_url=url,
                reason="rate_limit",
                status_code=429,
                model="gpt-a",
                credential="sha256:0000000000000001",
                retry_after_s=60,
            )
            a = client.usable(base_url=url, model="gpt-a", credential="sha256:0000000000000001")
            assert (a.usable, a.reason, a.backend) == (False, "rate_limit", "gpt-a")
            assert (
                client.usable(
                    base_url=url, model="gpt-b", credential="sha256:0000000000000001"
                ).usable
                is True
            )
            assert (
                client.usable(
                    base_url=url, model="gpt-a", credential="sha256:0000000000000002"
                ).usable
                is True
            )
            assert client.usable("gpt-a").usable is True  # callers that name no key
            status, body = d.get("/v1/usable?backend=gpt-a&credential=sha256:0000000000000001")
            assert status == 200 and body["scope"] == "key" and body["usable"] is False
            status, body = d.get(
                f"/v1/usable?base_url={url}&model=gpt-b&credential=sha256:0000000000000001"
            )
            assert body["backend"] == "gpt-b" and body["usable"] is True

            # OpenRouter-style upstream_rate_limit is the model's, for every key.
            client.report(base_url=url, reason="upstream_rate_limit", model="gpt-b")
            assert client.usable(base_url=url, model="gpt-b").usable is False
            assert client.usable(base_url=url, model="gpt-a").usable is True
            assert [(c["scope"], c.get("model")) for c in cooldowns(d)] == [
                ("key", "gpt-a"),
                ("model", "gpt-b"),
            ]


def test_twenty_reports_of_one_outage_are_one_incident(tmp_path: Path) -> None:
    with FakeBackend(kind="openai", models=["m"]) as fb:
        cfg = config(
            {"o": f"{{kind: openai, base_url: '{fb.url('/v1')}', model: m}}"},
            interval=60,  # the first probe only: pokes never come closer than the interval
            base_s=2,
        )
        with Daemon(tmp_path, cfg) as d:
            d.wait_state("o", "healthy")
            probes_at_start = fb.count("GET", "/v1/models")
            start = threading.Barrier(20)

            def report() -> None:
                start.wait(5)
                assert d.client().report("o", reason="overloaded", status_code=503)

            threads = [threading.Thread(target=report) for _ in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            [first] = cooldowns(d)
            assert 2 * 0.9 <= first["cooldown_s"] <= 2 * 1.1, first  # one base, +/- jitter
            assert first["scope"] == "server"

            wait_until(lambda: d.client().usable("o").usable, 5, what="the cooldown to end")
            assert d.wait_for_log("o: cooldown over (overloaded)")
            # Twenty reports and the cooldown's end poked the prober; none of it brought a
            # probe closer than the 60 s interval to the first (the prober's floor).
            assert fb.count("GET", "/v1/models") == probes_at_start

            d.client().report("o", reason="overloaded", status_code=503)
            second = wait_until(lambda: cooldowns(d)[1:], what="a second cooldown")[0]
            assert 4 * 0.9 <= second["cooldown_s"] <= 4 * 1.1, second  # the second incident

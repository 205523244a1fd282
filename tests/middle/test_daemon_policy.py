"""Routing policies through the whole daemon in process: tasks and escalation, usage and
budgets, needs, per-key routing. (`tests/system/test_policy_api.py` keeps the CLI's part.)"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.support.inprocess import InProcessDaemon

pytestmark = pytest.mark.anyio

CONFIG = """
backends:
  llama: {kind: llama-server, base_url: "http://127.0.0.1:9", probe: {enabled: false}}
  router: {kind: openrouter, base_url: "https://openrouter.ai/api/v1", probe: {enabled: false},
           vision: true, price: {input_per_mtok: 3, output_per_mtok: 15}}
profiles:
  coding: {chain: [llama, router], escalation: {max_local_attempts: 2}}
budgets: {per_backend_daily_usd: {router: 1}}
"""


async def test_a_task_that_fails_twice_skips_the_local_tier(tmp_path: Path) -> None:
    async with InProcessDaemon(tmp_path, CONFIG) as d:
        assert (await d.route("coding"))[1]["backend"] == "llama"
        status, body = await d.post("/v1/tasks/t-42/failures", {"reason": "no_progress"})
        assert status == 202 and body["escalated"] == {"coding": False}
        status, body = await d.post("/v1/tasks/t-42/failures", {"reason": "invalid_output"})
        assert status == 202 and body["escalated"] == {"coding": True}
        status, body = await d.route("coding", task="t-42")
        assert status == 200 and body["backend"] == "router"
        assert body["chain"][0]["reason"].startswith("escalated: 2 local failures")
        await d.wait_for_log(
            "task t-42 (profile coding): skipping the local tier, routed to router"
        )
        assert (await d.route("coding", task="t-43"))[1]["backend"] == "llama"  # only that task


async def test_an_escalated_task_is_forgotten_after_its_ttl(tmp_path: Path) -> None:
    text = CONFIG.replace("max_local_attempts: 2}", "max_local_attempts: 1, task_ttl_s: 600}")
    async with InProcessDaemon(tmp_path, text) as d:
        assert (await d.post("/v1/tasks/t/failures", {"reason": "no_progress"}))[0] == 202
        assert (await d.route("coding", task="t"))[1]["backend"] == "router"
        await d.clock.advance(601)
        assert (await d.route("coding", task="t"))[1]["backend"] == "llama"


@pytest.mark.parametrize(
    ("needs", "backend", "reason"),
    [("vision", "router", "needs vision"), ("tools", "llama", None)],
)
async def test_needs_skip_backends_without_them(tmp_path, needs, backend, reason) -> None:
    async with InProcessDaemon(tmp_path, CONFIG) as d:
        status, body = await d.route("coding", needs=needs)
        assert status == 200 and body["backend"] == backend
        if reason:
            assert body["chain"][0]["reason"] == reason


@pytest.mark.parametrize("needs", ["gpu", "context:", "context:lots", "vision,gpu"])
async def test_unknown_needs_are_refused_with_the_valid_ones(tmp_path, needs) -> None:
    async with InProcessDaemon(tmp_path, CONFIG) as d:
        status, body = await d.route("coding", needs=needs)
        assert status == 400 and "valid: vision, tools, context:TOKENS" in body["error"]["message"]


async def test_spend_past_the_budget_holds_the_paid_backend_until_confirmed(tmp_path) -> None:
    async with InProcessDaemon(tmp_path, CONFIG) as d:
        usage = {"backend": "router", "input_tokens": 200_000, "output_tokens": 50_000}
        status, body = await d.post("/v1/usage", usage)
        assert status == 202 and body["cost_usd"] == pytest.approx(1.35)
        assert body["budget"].startswith("budget_exhausted")
        status, body = await d.route("coding", needs="vision")
        assert status == 503 and body["chain"][1]["reason"].startswith("budget_exhausted")
        status, body = await d.route("coding", needs="vision", confirm=1)
        assert status == 200 and body["backend"] == "router"
        metrics = await d.get_text("/metrics")
        assert 'hroute_backend_spent_today_usd{backend="router"} 1.35' in metrics


@pytest.mark.parametrize(
    "body",
    [
        {"reason": "whatever"},
        {"reason": "no_progress", "extra": 1},
        {},
        {"reason": 7},
        {"reason": "no_progress", "detail": 5},
    ],
    ids=["free-text", "extra-field", "empty", "number", "detail-not-text"],
)
async def test_bad_task_failures_are_refused(tmp_path, body) -> None:
    async with InProcessDaemon(tmp_path, CONFIG) as d:
        status, answer = await d.post("/v1/tasks/t/failures", body)
        assert status == 400 and answer["error"]["code"] == "bad_request", answer
        assert await d.events("task_failure") == []


@pytest.mark.parametrize(
    "body",
    [
        {"backend": "router", "input_tokens": -1},
        {"backend": "router", "input_tokens": 1.5},
        {"backend": "router", "input_tokens": "10"},
        {"backend": "router", "output_tokens": True},
        {"backend": "nope", "input_tokens": 1},
    ],
    ids=["negative", "fraction", "string", "bool", "unknown-backend"],
)
async def test_bad_usage_is_refused_and_spends_nothing(tmp_path, body) -> None:
    async with InProcessDaemon(tmp_path, CONFIG) as d:
        status, answer = await d.post("/v1/usage", body)
        assert status in (400, 404), answer
        spent = [
            line
            for line in (await d.get_text("/metrics")).splitlines()
            if line.startswith('hroute_backend_spent_today_usd{backend="router"}')
        ]
        assert spent in ([], ['hroute_backend_spent_today_usd{backend="router"} 0.0']), spent


async def test_the_client_speaks_the_whole_routing_api(tmp_path: Path) -> None:
    async with InProcessDaemon(tmp_path, CONFIG) as d:

        def session() -> None:
            c = d.client()
            first = c.task_failure("t-7", "no_progress", detail="same tool call 5 times")
            assert first["failures"] == 1
            assert c.task_failure("t-7", "invalid_output")["escalated"] == {"coding": True}
            assert c.route("coding", task="t-7")["backend"] == "router"
            assert c.route("coding", task="t-8")["backend"] == "llama"
            assert c.route("coding", task="t-7", needs="vision")["backend"] == "router"
            spent = c.usage("router", input_tokens=400_000)
            assert spent["spent_today_usd"] == pytest.approx(1.2) and spent["budget"]
            blocked = c.route("coding", task="t-7")
            assert blocked["backend"] is None and blocked["retry_after_s"] > 0
            assert any("confirm=1" in h for h in blocked["help"])
            assert c.route("coding", task="t-7", allow_paid=True)["backend"] == "router"
            for _ in range(2):
                c.report("llama", reason="rate_limit", credential=KEY_A, retry_after_s=30)
            cooled = c.route("coding", credential=KEY_A)
            assert cooled["chain"][0]["reason"] == "rate_limit"
            assert c.route("coding", credential=KEY_B)["backend"] == "llama"

        await anyio.to_thread.run_sync(session)
        [failure] = [e for e in await d.events("task_failure") if e.get("detail")]
        assert failure["detail"] == "same tool call 5 times" and failure["task"] == "t-7"


KEY_A, KEY_B = "sha256:00000000000000aa", "sha256:00000000000000bb"


async def test_a_cooled_key_routes_to_the_next_backend_until_its_cooldown_ends(tmp_path) -> None:
    async with InProcessDaemon(tmp_path, CONFIG) as d:
        await d.report("llama", reason="rate_limit", credential=KEY_A, retry_after_s=30)
        status, body = await d.route("coding", credential=KEY_A)
        assert (status, body["backend"]) == (200, "router")
        await d.clock.advance(31)
        assert (await d.route("coding", credential=KEY_A))[1]["backend"] == "llama"


async def test_a_profile_with_every_backend_down_says_when_to_retry(tmp_path: Path) -> None:
    async with InProcessDaemon(tmp_path, CONFIG) as d:
        await d.report("llama", reason="server_error")
        await d.report("router", reason="overloaded", retry_after_s=120)
        status, body = await d.route("coding")
        assert status == 503 and body["backend"] is None and body["retry_after_s"] > 0
        await d.until(lambda: _routes_to(d, "llama"), advance_s=30, what="llama's cooldown to end")


async def _routes_to(d: InProcessDaemon, backend: str) -> bool:
    return (await d.route("coding"))[1]["backend"] == backend


async def test_routing_for_an_unknown_profile_is_404(tmp_path: Path) -> None:
    async with InProcessDaemon(tmp_path, CONFIG) as d:
        status, body = await d.route("nope")
        assert status == 404 and "nope" in body["error"]["message"]

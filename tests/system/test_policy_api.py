"""Routing policies over the socket: tasks, usage and budgets, needs; and the CLI for them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import Daemon

pytestmark = pytest.mark.system

CONFIG = """
backends:
  llama: {kind: llama-server, base_url: "http://127.0.0.1:9", probe: {enabled: false}}
  router: {kind: openrouter, base_url: "https://openrouter.ai/api/v1", probe: {enabled: false},
           vision: true, price: {input_per_mtok: 3, output_per_mtok: 15}}
profiles:
  coding: {chain: [llama, router], escalation: {max_local_attempts: 2}}
budgets: {per_backend_daily_usd: {router: 1}}
"""


def test_tasks_usage_needs_over_the_socket(tmp_path: Path) -> None:
    with Daemon(tmp_path, CONFIG) as d:
        c = d.client()
        assert (
            c.route(
                "coding",
            )["backend"]
            == "llama"
        )
        status, body = c.request("POST", "/v1/tasks/t-42/failures", {"reason": "no_progress"})
        assert status == 202 and body["escalated"] == {"coding": False}
        cli = [sys.executable, "-m", "hroute.cli", "--socket", str(d.socket)]
        out = subprocess.run(
            cli + ["task-failure", "t-42", "invalid_output"],
            capture_output=True,
            text=True,
            timeout=20,
            env=d.env,
        )
        assert out.returncode == 0 and "escalated past the local tier for: coding" in out.stdout
        status, body = c.request("GET", "/v1/route?profile=coding&task=t-42")
        assert status == 200 and body["backend"] == "router"
        assert body["chain"][0]["reason"].startswith("escalated: 2 local failures")
        d.wait_for_log("task t-42 (profile coding): skipping the local tier, routed to router")

        status, body = c.request("GET", "/v1/route?profile=coding&needs=vision")
        assert body["backend"] == "router" and body["chain"][0]["reason"] == "needs vision"
        status, body = c.request("GET", "/v1/route?profile=coding&needs=gpu")
        assert status == 400 and "valid: vision, tools, context:TOKENS" in body["error"]["message"]

        status, body = c.request(
            "POST",
            "/v1/usage",
            {"backend": "router", "input_tokens": 200_000, "output_tokens": 50_000},
        )
        assert status == 202 and body["cost_usd"] == pytest.approx(1.35)
        assert body["budget"].startswith("budget_exhausted")
        status, body = c.request("GET", "/v1/route?profile=coding&needs=vision")
        assert status == 503 and body["chain"][1]["reason"].startswith("budget_exhausted")
        status, body = c.request("GET", "/v1/route?profile=coding&needs=vision&confirm=1")
        assert status == 200 and body["backend"] == "router"

        out = subprocess.run(
            cli + ["status"], capture_output=True, text=True, timeout=20, env=d.env
        )
        assert "spent today: router $1.35" in out.stdout
        assert 'hroute_backend_spent_today_usd{backend="router"} 1.35' in d.get_text("/metrics")
        for bad in ({"reason": "whatever"}, {"reason": "no_progress", "extra": 1}):
            status, body = c.request("POST", "/v1/tasks/t/failures", bad)
            assert status == 400 and body["error"]["code"] == "bad_request"
        status, body = c.request("POST", "/v1/usage", {"backend": "router", "input_tokens": -1})
        assert status == 400


def test_the_client_speaks_the_whole_routing_api(tmp_path: Path) -> None:
    with Daemon(tmp_path, CONFIG) as d:
        c = d.client()
        assert (
            c.task_failure("t-7", "no_progress", detail="same tool call 5 times")["failures"] == 1
        )
        answer = c.task_failure("t-7", "invalid_output")
        assert answer["escalated"] == {"coding": True}
        assert c.route("coding", task="t-7")["backend"] == "router"
        assert c.route("coding", task="t-8")["backend"] == "llama"  # only that task
        assert c.route("coding", task="t-7", needs="vision")["backend"] == "router"
        spent = c.usage("router", input_tokens=400_000)
        assert spent["spent_today_usd"] == pytest.approx(1.2) and spent["budget"]
        blocked = c.route("coding", task="t-7")
        assert blocked["backend"] is None and blocked["retry_after_s"] > 0
        assert any("confirm=1" in h for h in blocked["help"])
        assert c.route("coding", task="t-7", allow_paid=True)["backend"] == "router"
        for _ in range(2):
            c.report(
                "llama", reason="rate_limit", credential="sha256:00000000000000aa", retry_after_s=30
            )
        assert (
            c.route("coding", credential="sha256:00000000000000aa")["chain"][0]["reason"]
            == "rate_limit"
        )
        assert c.route("coding", credential="sha256:00000000000000bb")["backend"] == "llama"
        events = c.request("GET", "/v1/events")[1]["events"]
        [failure] = [e for e in events if e["event"] == "task_failure" and e.get("detail")]
        assert failure["detail"] == "same tool call 5 times" and failure["task"] == "t-7"


def test_the_client_fails_open_with_no_daemon(tmp_path: Path) -> None:
    from hroute.client import Client

    c = Client(socket_path=tmp_path / "nobody.sock", budget_s=0.2)
    assert c.route("coding", task="t") is None
    assert c.task_failure("t", "no_progress") is None
    assert c.usage("router", input_tokens=1) is None

"""The edges, each built in-process around a real registry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from hroute.client import Client
from hroute.config.model import load_config
from hroute.core.health import ProbeOutcome, Report
from hroute.core.reasons import Reason
from hroute.core.registry import Registry
from hroute.edges.api import Deps, make_app
from hroute.edges.clock import RealClock
from hroute.edges.metrics import Metrics
from hroute.edges.prober import Prober
from hroute.edges.reloader import Reloader
from hroute.edges.snapshot import SnapshotPublisher
from hroute.edges.state_file import StateSaver, load_state

pytestmark = pytest.mark.anyio

CONFIG = """
backends:
  local: {kind: openai, base_url: "http://127.0.0.1:PORT/v1", model: m, tier: local}
  cloud: {kind: openai, base_url: "https://api.example.com/v1", model: m, probe: {enabled: false}}
profiles:
  coding: {chain: [local, cloud]}
"""


def registry(port: int = 9) -> Registry:
    return Registry(load_config(CONFIG.replace("PORT", str(port))), RealClock())


async def api_client(reg: Registry) -> TestClient:
    prometheus = CollectorRegistry()
    deps = Deps(registry=reg, metrics=Metrics(prometheus, lambda: reg), prometheus=prometheus)
    client = TestClient(TestServer(make_app(deps)))
    await client.start_server()
    return client


async def test_api_answers_from_the_registry_and_reports_change_it() -> None:
    reg = registry()
    client = await api_client(reg)
    try:
        r = await client.get("/v1/usable", params={"backend": "local"})
        assert (r.status, (await r.json())["usable"]) == (200, True)
        r = await client.post(
            "/v1/reports",
            json={"backend": "local", "outcome": "failure", "reason": "server_error"},
        )
        assert r.status == 202
        r = await client.get("/v1/route", params={"profile": "coding"})
        body = await r.json()
        assert body["backend"] == "cloud" and body["chain"][0]["reason"] == "server_error"
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/reports", b"{not json"),
        ("POST", "/v1/reports", b'{"backend": "local"}'),
        ("POST", "/v1/reports", b'{"backend": "nope", "outcome": "failure"}'),
        ("GET", "/v1/route?profile=nope", b""),
        ("GET", "/v1/usable", b""),
    ],
)
async def test_api_bad_requests_get_a_4xx_json_error_and_change_nothing(method, path, body) -> None:
    reg = registry()
    version = reg.version
    client = await api_client(reg)
    try:
        r = await client.request(
            method, path, data=body, headers={"Content-Type": "application/json"}
        )
        assert 400 <= r.status < 500
        assert "error" in await r.json()
        assert reg.version == version
        assert (await client.get("/v1/version")).status == 200  # still serving
    finally:
        await client.close()


async def _fake_backend(models_status: int) -> tuple[web.AppRunner, int]:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]}, status=models_status)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.mark.parametrize(("status", "state"), [(200, "healthy"), (503, "unhealthy")])
async def test_prober_probes_a_real_server_and_records_what_it_saw(status, state) -> None:
    runner, port = await _fake_backend(status)
    reg = registry(port)
    seen = []
    try:
        async with aiohttp.ClientSession() as session:
            prober = Prober(reg, session, reg.clock, on_outcome=lambda n, o: seen.append((n, o)))
            await prober.probe_once("local")
    finally:
        await runner.cleanup()
    assert reg.view("local")["state"] == state
    assert [n for n, _ in seen] == ["local"]


async def test_snapshot_file_is_what_the_client_reads(tmp_path: Path) -> None:
    reg = registry()
    path = tmp_path / "hroute.snapshot"
    SnapshotPublisher(reg, reg.clock, path).flush(force=True)
    client = Client(socket_path=tmp_path / "hroute.sock")
    assert client.usable("local").usable is True
    reg.record_report("local", Report(False, Reason.RATE_LIMIT, retry_after_s=60))
    # written on the change itself: the reporter reads its report back at once
    answer = client.usable("local")
    assert (answer.usable, answer.reason, answer.source) == (False, "rate_limit", "snapshot")
    assert 59 < answer.retry_after_s <= 60


async def test_state_file_round_trip_keeps_cooldowns(tmp_path: Path) -> None:
    reg = registry()
    reg.record_probe("local", ProbeOutcome())
    reg.record_report("local", Report(False, Reason.RATE_LIMIT, retry_after_s=600))
    path = tmp_path / "state.json"
    assert await StateSaver(reg, reg.clock, path).save_if_changed()
    assert json.loads(path.read_text())["format"].startswith("hroute-state/")
    fresh = registry()
    fresh.restore(load_state(path, fresh.clock).records)
    verdict = fresh.verdict("local")
    assert verdict.usable is False and 590 < verdict.retry_after_s <= 600


async def test_reload_applies_a_good_file_and_keeps_the_old_one_on_a_bad_one(tmp_path) -> None:
    path = tmp_path / "hroute.yaml"
    path.write_text(CONFIG.replace("PORT", "9"))
    reg = registry()
    reloader = Reloader(path, reg.config)
    reloader.apply.append(lambda old, new, diff: reg.apply_config(new))
    reg.record_report("local", Report(False, Reason.SERVER_ERROR, retry_after_s=600))
    reg.record_report("local", Report(False, Reason.UPSTREAM_RATE_LIMIT, retry_after_s=900))
    path.write_text(CONFIG.replace("PORT", "9").replace("model: m, tier", "model: m2, tier"))
    result = await reloader.reload("test")
    assert result.ok and reg.config.backends["local"].model == "m2"
    assert reg.verdict("local").usable is False  # same identity: the cooldown is kept
    assert reg.health("local").cooldown_remaining(reg.clock.now(), "m") == pytest.approx(900, abs=1)
    path.write_text("backends: [this is not a mapping")
    result = await reloader.reload("test")
    assert not result.ok and "line" in result.error
    assert reg.config.backends["local"].model == "m2"


def test_real_clock_is_monotonic() -> None:
    clock = RealClock()
    assert abs(clock.now() - time.monotonic()) < 1.0

"""The edges, each built in-process around a real registry."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from aiohttp import web

from hroute.client import Client
from hroute.config.model import load_config
from hroute.core.health import ProbeOutcome, Report
from hroute.core.reasons import Reason
from hroute.core.registry import Registry
from hroute.edges.api import Deps, make_api
from hroute.edges.clock import RealClock
from hroute.edges.metrics import Metrics
from hroute.edges.prober import Prober
from hroute.edges.reloader import Reloader
from hroute.edges.snapshot import SnapshotPublisher
from hroute.edges.sockets import bind_unix_socket
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


class Api:
    """The socket API served in this process on a real Unix socket; asked with the client."""

    def __init__(self, reg: Registry, path: Path) -> None:
        deps = Deps(registry=reg, metrics=Metrics(lambda: reg))
        self.server, self.path = make_api(deps), path

    async def __aenter__(self) -> Api:
        await self.server.serve(bind_unix_socket(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.aclose()

    async def request(self, method: str, path: str, body: object = None) -> tuple[int, dict]:
        client = Client(socket_path=self.path, budget_s=5.0)
        return await anyio.to_thread.run_sync(client.request, method, path, body)

    async def raw(self, data: bytes) -> bytes:
        def exchange() -> bytes:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(self.path))
                s.sendall(data)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        return await anyio.to_thread.run_sync(exchange)


async def test_api_answers_from_the_registry_and_reports_change_it(tmp_path: Path) -> None:
    reg = registry()
    async with Api(reg, tmp_path / "s.sock") as api:
        status, body = await api.request("GET", "/v1/usable?backend=local")
        assert (status, body["usable"]) == (200, True)
        report = {"backend": "local", "outcome": "failure", "reason": "server_error"}
        status, _ = await api.request("POST", "/v1/reports", report)
        assert status == 202
        status, body = await api.request("GET", "/v1/route?profile=coding")
        assert body["backend"] == "cloud" and body["chain"][0]["reason"] == "server_error"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/reports", b"{not json", 400),
        ("POST", "/v1/reports", b'{"backend": "local"}', 400),
        ("POST", "/v1/reports", b'{"backend": "nope", "outcome": "failure"}', 404),
        ("GET", "/v1/route?profile=nope", b"", 404),
        ("GET", "/v1/usable", b"", 400),
        ("GET", "/v1/nothing", b"", 404),
        ("DELETE", "/v1/reports", b"", 405),
        ("POST", "/v1/tasks//failures", b"{}", 404),
    ],
)
async def test_api_bad_requests_get_a_4xx_json_error_and_change_nothing(
    tmp_path: Path, method, path, body, status
) -> None:
    reg = registry()
    version = reg.version
    async with Api(reg, tmp_path / "s.sock") as api:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        raw = await api.raw(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert raw.startswith(f"HTTP/1.1 {status} ".encode())
        assert "error" in json.loads(raw.split(b"\r\n\r\n", 1)[1])
        assert reg.version == version
        assert (await api.request("GET", "/v1/version"))[0] == 200  # still serving


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/version HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST /v1/reports HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET /v1/version HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n", 431),
    ],
)
async def test_broken_http_is_answered_and_closed(tmp_path: Path, data, status) -> None:
    async with Api(registry(), tmp_path / "s.sock") as api:
        raw = await api.raw(data)
        assert raw.startswith(f"HTTP/1.1 {status} ".encode()) and b"Connection: close" in raw
        assert (await api.request("GET", "/v1/version"))[0] == 200


async def test_keep_alive_answers_pipelined_requests_in_order(tmp_path: Path) -> None:
    async with Api(registry(), tmp_path / "s.sock") as api:
        one = b"GET /v1/usable?backend=local HTTP/1.1\r\nHost: x\r\n\r\n"
        last = b"GET /v1/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        raw = await api.raw(one * 3 + last)
        assert raw.count(b"HTTP/1.1 200 OK") == 4
        assert raw.rindex(b'"version"') > raw.rindex(b'"backend":"local"')


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
        prober = Prober(reg, reg.clock, on_outcome=lambda n, o: seen.append((n, o)))
        await prober.probe_once("local")
    finally:
        await runner.cleanup()
    assert reg.view("local")["state"] == state
    assert [n for n, _ in seen] == ["local"]


class SteppedClock(RealClock):
    """Monotonic time that moves only when the test says (the client reads the real one,
    so it starts at the real monotonic time)."""

    def __init__(self) -> None:
        self.t = time.monotonic() - 5.0  # the last write was a while ago

    def now(self) -> float:
        return self.t


async def test_snapshot_file_is_what_the_client_reads(tmp_path: Path) -> None:
    clock = SteppedClock()
    clock.t = time.monotonic()  # written now: fresh for the client
    reg = Registry(load_config(CONFIG.replace("PORT", "9")), clock)
    path = tmp_path / "hroute.snapshot"
    publisher = SnapshotPublisher(reg, clock, path)
    publisher.flush(force=True)
    client = Client(socket_path=tmp_path / "hroute.sock")
    assert (client.usable("local").usable, client.usable("local").source) == (True, "snapshot")
    reg.record_report("local", Report(False, Reason.RATE_LIMIT, retry_after_s=60))
    assert client.usable("local").usable is True  # not written yet: the publisher's loop does
    publisher.flush()
    answer = client.usable("local")
    assert (answer.usable, answer.reason, answer.source) == (False, "rate_limit", "snapshot")
    assert 58 < answer.retry_after_s <= 60
    reg.record_report("cloud", Report(False, Reason.RATE_LIMIT, retry_after_s=60))
    publisher.flush()
    assert client.usable("cloud").usable is False


async def test_a_write_rebuilds_only_the_sections_whose_record_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hroute.edges.snapshot as snapshot

    clock = SteppedClock()
    clock.t = time.monotonic()  # written now: fresh for the client
    reg = Registry(load_config(CONFIG.replace("PORT", "9")), clock)
    publisher = SnapshotPublisher(reg, clock, tmp_path / "hroute.snapshot")
    publisher.flush(force=True)
    built: list[dict] = []
    real_section = snapshot.section
    monkeypatch.setattr(snapshot, "section", lambda v: built.append(v) or real_section(v))
    reg.record_report("cloud", Report(False, Reason.RATE_LIMIT, retry_after_s=60))
    publisher.flush()
    assert [list(e["models"]) for e in built] == [["m"]]  # cloud's (its model held) alone
    built.clear()
    publisher.flush(force=True)  # nothing changed: the kept sections are written again
    assert built == []
    client = Client(socket_path=tmp_path / "hroute.sock")
    assert (client.usable("cloud").usable, client.usable("local").usable) == (False, True)


async def test_a_write_of_many_changed_sections_yields_to_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fleet re-sync changes every backend at once: the write rebuilds them in slices and
    the loop answers agents between the slices."""
    import hroute.edges.snapshot as snapshot

    clock = SteppedClock()
    clock.t = time.monotonic()  # written now: fresh for the client
    reg = Registry(load_config(CONFIG.replace("PORT", "9")), clock)
    publisher = SnapshotPublisher(reg, clock, tmp_path / "hroute.snapshot")
    publisher.flush(force=True)
    monkeypatch.setattr(snapshot, "SLICE_S", 0.0)  # every section is a slice
    for name in ("local", "cloud"):
        reg.record_report(name, Report(False, Reason.RATE_LIMIT, retry_after_s=60))
    turns = []

    async def other_work() -> None:
        for _ in range(3):
            turns.append("other")
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_work)
        await anyio.lowlevel.checkpoint()
        turns.append("write starts")
        await publisher._write_sliced()
        turns.append("write done")
    assert turns.index("other", turns.index("write starts")) < turns.index("write done")
    client = Client(socket_path=tmp_path / "hroute.sock")
    assert (client.usable("cloud").usable, client.usable("local").usable) == (False, False)


async def test_a_write_slowed_by_other_load_does_not_delay_the_next_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gap between writes follows what a write costs this process (CPU), not how long the
    machine took to run it: a write preempted for 200 ms must not hold the next change 2 s."""
    import hroute.edges.snapshot as snapshot

    clock = SteppedClock()
    reg = Registry(load_config(CONFIG.replace("PORT", "9")), clock)
    publisher = SnapshotPublisher(reg, clock, tmp_path / "hroute.snapshot")
    real_write = snapshot.write_atomically

    def preempted(path: Path, data: bytes) -> None:
        time.sleep(0.2)  # stands for the scheduler running other processes: no CPU of ours
        real_write(path, data)

    monkeypatch.setattr(snapshot, "write_atomically", preempted)
    publisher.flush(force=True)
    assert publisher._gap_s == snapshot.MIN_GAP_S


async def test_a_reporter_reads_its_own_report_while_the_snapshot_lags(tmp_path: Path) -> None:
    clock = SteppedClock()
    clock.t = time.monotonic()  # the report comes right after the first write: a burst
    reg = Registry(load_config(CONFIG.replace("PORT", "9")), clock)
    sock = tmp_path / "hroute.sock"
    publisher = SnapshotPublisher(reg, clock, tmp_path / "hroute.snapshot")
    prometheus_free = Deps(registry=reg, metrics=Metrics(lambda: reg))
    server = make_api(prometheus_free)
    await server.serve(bind_unix_socket(sock))
    try:
        publisher.flush(force=True)
        reporter, other = Client(socket_path=sock, budget_s=5.0), Client(socket_path=sock)

        def report_then_ask() -> tuple:
            reporter.report("local", reason="rate_limit", retry_after_s=60)
            return reporter.usable("local"), other.usable("local")

        mine, theirs = await anyio.to_thread.run_sync(report_then_ask)
        assert (mine.usable, mine.source) == (False, "socket")  # the snapshot lags: ask
        assert (theirs.usable, theirs.source) == (False, "socket")  # same process, same rule
        publisher.flush()
        again = await anyio.to_thread.run_sync(reporter.usable, "local")
        assert (again.usable, again.source) == (False, "snapshot")  # caught up
    finally:
        await server.aclose()


async def test_a_save_re_encodes_only_the_records_that_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hroute.edges.state_file as state_file

    reg = registry()
    saver = StateSaver(reg, reg.clock, tmp_path / "state.json")
    reg.record_report("local", Report(False, Reason.SERVER_ERROR))
    assert await saver.save_if_changed()  # the first save encodes every record
    encoded = []
    real = state_file.encode_record
    monkeypatch.setattr(
        state_file, "encode_record", lambda i, h, o: encoded.append(i.base_url) or real(i, h, o)
    )
    reg.record_report("cloud", Report(False, Reason.RATE_LIMIT, retry_after_s=600))
    assert await saver.save_if_changed()
    assert encoded == ["https://api.example.com"]  # cloud's record alone
    fresh = registry()
    assert fresh.restore(load_state(tmp_path / "state.json", fresh.clock).records) == 2
    assert not fresh.usable("local")["usable"] and not fresh.usable("cloud")["usable"]


async def test_state_file_round_trip_keeps_cooldowns(tmp_path: Path) -> None:
    reg = registry()
    path = tmp_path / "state.json"
    saver = StateSaver(reg, reg.clock, path)  # built at start: what it sees is on disk
    assert not await saver.save_if_changed()
    reg.record_probe("local", ProbeOutcome())
    reg.record_report("local", Report(False, Reason.RATE_LIMIT, retry_after_s=600))
    assert await saver.save_if_changed()
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


def test_metrics_render_counts_and_histograms_in_the_exposition_format() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    reg = registry()
    metrics = Metrics(lambda: reg)
    metrics.reports.inc("local", "failure", "server_error")
    metrics.reports.inc("local", "failure", "server_error")
    metrics.on_probe("local", ProbeOutcome(latency_ms=3.0))
    metrics.on_probe("local", ProbeOutcome(Reason.TIMEOUT, latency_ms=2000.0))
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    key = (("backend", "local"), ("outcome", "failure"), ("reason", "server_error"))
    assert samples[("hroute_reports_total", key)] == 2
    assert samples[("hroute_probes_total", (("backend", "local"), ("result", "fail")))] == 1
    le = "hroute_probe_duration_seconds_bucket"
    assert samples[(le, (("backend", "local"), ("le", "0.005")))] == 1
    assert samples[(le, (("backend", "local"), ("le", "2.5")))] == 2
    assert samples[("hroute_probe_duration_seconds_count", (("backend", "local"),))] == 2
    assert samples[("hroute_backend_usable", (("backend", "local"),))] == 1

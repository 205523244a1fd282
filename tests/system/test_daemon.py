"""`hroute run` as a subprocess on a temp config, against scripted fake backends on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hroute.client import Client
from tests.support.daemon import Daemon, wait_until
from tests.support.fakebackend import Behavior, FakeBackend
from tests.support.procs import free_port

pytestmark = pytest.mark.system


def config(backends: dict[str, str], profiles: str = "", interval: float = 0.1) -> str:
    lines = [
        "defaults:",
        f"  probe: {{interval_s: {interval}, timeout_s: 0.5, fall: 2, rise: 1, jitter: 0}}",
        "  cooldown: {base_s: 30, max_s: 300, jitter: 0}",
        "backends:",
    ]
    lines += [f"  {name}: {spec}" for name, spec in backends.items()]
    return "\n".join(lines) + "\n" + profiles


UNPROBED = "{kind: openai, base_url: 'http://127.0.0.1:9', probe: {enabled: false}}"


@pytest.fixture
def llama():
    with FakeBackend(kind="llama-server", models=["tiny"]) as fb:
        yield fb


def test_fresh_machine_daemon_runs_and_says_why_backends_are_unreachable(tmp_path: Path) -> None:
    port = free_port()
    cfg = config({"llama-local": f"{{kind: llama-server, base_url: 'http://127.0.0.1:{port}'}}"})
    with Daemon(tmp_path, cfg) as d:
        line = d.wait_for_log("llama-local: unknown -> unhealthy")
        assert f"cannot connect to 127.0.0.1:{port}: connection refused" in line
        b = d.wait_state("llama-local", "unhealthy")
        assert b["usable"] is False and b["reason"] == "connection"


def test_shipped_default_config_runs(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "etc/hroute/hroute.yaml").read_text()
    env = {"OPENROUTER_API_KEY": "", "ANTHROPIC_API_KEY": ""}
    with Daemon(tmp_path, text, env=env) as d:
        d.wait_for_log("openrouter: key_env OPENROUTER_API_KEY is not set")
        status, body = d.get("/v1/backends")
        assert status == 200
        assert {b["name"] for b in body["backends"]} == {
            "llama-local",
            "ollama",
            "openrouter",
            "claude",
        }


def test_backend_goes_down_and_recovers(tmp_path: Path, llama: FakeBackend) -> None:
    cfg = config({"llama-local": f"{{kind: llama-server, base_url: '{llama.base_url}'}}"})
    with Daemon(tmp_path, cfg) as d:
        assert d.wait_state("llama-local", "healthy")["usable"] is True
        llama.stop()
        down = d.wait_state("llama-local", "unhealthy")
        assert down["reason"] == "connection" and down["usable"] is False
        assert d.client().usable(base_url=llama.base_url + "/v1/").usable is False
        llama.start()
        assert d.wait_state("llama-local", "healthy")["usable"] is True
        kinds = [e["event"] for e in d.get("/v1/events")[1]["events"]]
        assert kinds == ["backend_up", "backend_down", "backend_up"]


def test_hang_is_noticed_although_health_stays_green(tmp_path: Path, llama: FakeBackend) -> None:
    cfg = config({"llama-local": f"{{kind: llama-server, base_url: '{llama.base_url}'}}"})
    with Daemon(tmp_path, cfg) as d:
        d.wait_state("llama-local", "healthy")
        llama.set_behavior("/slots", Behavior(hang=True))
        down = d.wait_state("llama-local", "unhealthy")
        assert down["reason"] == "timeout" and "/slots" in down["detail"]


def test_loading_model_is_starting_then_healthy(tmp_path: Path) -> None:
    with FakeBackend(kind="llama-server", loading_s=3600) as fb:
        cfg = config({"l": f"{{kind: llama-server, base_url: '{fb.base_url}'}}"})
        with Daemon(tmp_path, cfg) as d:
            starting = d.wait_state("l", "starting")
            assert starting["usable"] is False and starting["reason"] == "starting"
            fb.loading_s = 0  # the model finished loading
            d.wait_state("l", "healthy")


def test_probe_429_retry_after_7_cools_down_about_7s(tmp_path: Path) -> None:
    with FakeBackend(kind="openai", models=["m"]) as fb:
        cfg = config({"o": f"{{kind: openai, base_url: '{fb.base_url}/v1', model: m}}"})
        with Daemon(tmp_path, cfg) as d:
            d.wait_state("o", "healthy")
            fb.set_behavior(
                "/v1/models", Behavior(status=429, headers={"Retry-After": "7"}, times=1)
            )
            [answer] = wait_until(
                lambda: (u := d.client().usable("o")).retry_after_s and [u], what="a cooldown"
            )
            assert answer.usable is False and answer.reason == "rate_limit"
            assert 7 - 0.5 <= answer.retry_after_s <= 7  # granularity: one probe interval
            line = d.wait_for_log("o: cooling down for 7s (rate_limit")
            assert "rate_limit" in line


def test_report_route_and_client_reads_its_own_write(tmp_path: Path, llama: FakeBackend) -> None:
    with FakeBackend(kind="ollama", models=["q"]) as ollama:
        cfg = config(
            {
                "llama-local": f"{{kind: llama-server, base_url: '{llama.base_url}'}}",
                "ollama": f"{{kind: ollama, base_url: '{ollama.base_url}', model: q}}",
            },
            "profiles:\n  coding: {chain: [llama-local, ollama]}\n",
        )
        with Daemon(tmp_path, cfg) as d:
            d.wait_state("llama-local", "healthy")
            d.wait_state("ollama", "healthy")
            client = d.client()
            assert client.route("coding")["backend"] == "llama-local"
            assert (
                client.report(
                    base_url=llama.base_url + "/v1",
                    outcome="failure",
                    reason="server_error",
                    status_code=500,
                )
                is True
            )
            after = client.usable(base_url=llama.base_url)
            # Its own report, at once: from the snapshot, or from the socket while the
            # snapshot's coalesced write is still to come.
            assert (after.usable, after.reason) == (False, "server_error")
            assert after.source in ("snapshot", "socket")
            assert 29 < after.retry_after_s <= 30
            route = client.route("coding")
            assert route["backend"] == "ollama"
            assert route["chain"][0] == {
                "backend": "llama-local",
                "usable": False,
                "reason": "server_error",
                "base_url": llama.base_url,
            }
            d.wait_for_log("profile coding: llama-local -> ollama")
            assert client.route("coding", exclude=["ollama"])["backend"] is None


def test_route_503_with_retry_after_when_nothing_usable(tmp_path: Path) -> None:
    with FakeBackend(kind="openai") as fb:
        cfg = config(
            {"o": f"{{kind: openai, base_url: '{fb.base_url}'}}"}, "profiles:\n  p: {chain: [o]}\n"
        )
        with Daemon(tmp_path, cfg) as d:
            d.wait_state("o", "healthy")
            d.client().report("o", outcome="failure", reason="rate_limit", retry_after_s=42)
            raw = _raw(
                d.socket,
                b"GET /v1/route?profile=p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            assert raw.startswith(b"HTTP/1.1 503")
            assert b"\r\nRetry-After: 42\r\n" in raw
            body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
            assert body["backend"] is None and 41 < body["retry_after_s"] <= 42
            assert body["error"]["code"] == "no_usable_backend"


def _raw(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_bad_requests_get_json_errors_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    cfg = config({"o": "{kind: openai, base_url: 'http://127.0.0.1:9', probe: {enabled: false}}"})
    with Daemon(tmp_path, cfg) as d:
        c = d.client()
        cases = [
            ("POST", "/v1/reports", b"{not json", 400, "bad_request"),
            (
                "POST",
                "/v1/reports",
                json.dumps({"backend": "o", "outcome": "failure", "bogus": 1}).encode(),
                400,
                "bad_request",
            ),
            (
                "POST",
                "/v1/reports",
                json.dumps({"backend": "o", "outcome": "maybe"}).encode(),
                400,
                "bad_request",
            ),
            (
                "POST",
                "/v1/reports",
                json.dumps({"backend": "zz", "outcome": "failure"}).encode(),
                404,
                "unknown_backend",
            ),
            ("POST", "/v1/reports", b"x" * (65 * 1024), 413, "payload_too_large"),
            ("GET", "/v1/usable", b"", 400, "bad_request"),
            ("GET", "/v1/usable?backend=zz", b"", 404, "unknown_backend"),
            ("GET", "/v1/route?profile=zz", b"", 404, "unknown_profile"),
            ("GET", "/v1/events?since=x", b"", 400, "bad_request"),
            ("GET", "/nope", b"", 404, "not_found"),
            ("DELETE", "/v1/backends", b"", 405, "method_not_allowed"),
        ]
        for method, path, body, status, code in cases:
            req = (
                f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            raw = _raw(d.socket, req)
            got = int(raw.split(b" ", 2)[1])
            payload = json.loads(raw.split(b"\r\n\r\n", 1)[1])
            assert (got, payload["error"]["code"]) == (status, code), (path, raw[:300])
            assert payload["error"]["message"]
        # garbage that is not HTTP at all
        _raw(d.socket, b"\x00\xff garbage\r\n\r\n")
        assert c.request("GET", "/v1/version")[0] == 200
        assert c.usable("o").usable is True


def test_socket_mode_stale_socket_replaced_live_socket_refused(tmp_path: Path) -> None:
    cfg = config({"x": UNPROBED})
    sock_path = tmp_path / "run" / "hroute.sock"
    sock_path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_path))
    stale.close()  # a socket file nobody listens on: what a SIGKILLed daemon leaves
    with Daemon(tmp_path, cfg) as d:
        assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o660
        second = subprocess.run(
            [sys.executable, "-m", "hroute.cli", "run", "--config", str(d.config_path)],
            env=d.env,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert second.returncode == 1
        assert "another hroute daemon is already serving this socket" in second.stderr
        assert d.get("/v1/version")[0] == 200


def test_client_fails_open_without_a_daemon_and_after_sigkill(tmp_path: Path) -> None:
    nowhere = Client(tmp_path / "none.sock", budget_s=0.1)
    answer = nowhere.usable("llama-local")
    assert answer.usable is True and answer.source == "fail-open"
    assert nowhere.route("coding") is None and nowhere.report("x") is False

    port = free_port()
    cfg = config({"l": f"{{kind: llama-server, base_url: 'http://127.0.0.1:{port}'}}"})
    d = Daemon(tmp_path, cfg).start()
    try:
        d.wait_state("l", "unhealthy")
        client = d.client(budget_s=0.1)
        assert client.usable("l").usable is False
        d.stop(signal.SIGKILL)
        # The snapshot it left behind expires; then the client fails open.
        [answer] = wait_until(
            lambda: (u := client.usable("l")).usable and [u], 10, what="fail-open"
        )
        assert answer.source == "fail-open"
    finally:
        d.stop()


def test_secrets_never_leak(tmp_path: Path) -> None:
    secret = "sk-test-SECRET-value-1234567890"
    with FakeBackend(kind="openai", models=["m"]) as fb:
        fb.set_behavior(
            "/v1/models",
            Behavior(
                status=401,
                body={
                    "error": {
                        "message": f"Incorrect API key provided: {secret}",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            ),
        )
        cfg = config({"o": f"{{kind: openai, base_url: '{fb.base_url}', key_env: TEST_KEY}}"})
        with Daemon(tmp_path, cfg, env={"TEST_KEY": secret}) as d:
            blocked = wait_until(
                lambda: (b := d.backend("o"))["reason"] in ("auth", "auth_permanent") and b,
                what="auth block",
            )
            assert blocked["usable"] is False
            req = fb.requests[-1]
            assert req.headers.get("Authorization") == f"Bearer {secret}"  # the key was used...
            seen = [
                json.dumps(d.get(p)[1])
                for p in ("/v1/backends", "/v1/events", "/v1/usable?backend=o")
            ]
            seen.append(d.client().request("GET", "/v1/backends/o")[1].__repr__())
            seen.append(
                _raw(
                    d.socket, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                ).decode()
            )
            seen.append((d.socket.with_suffix(".snapshot")).read_text())
        seen.append(d.log)
        for text in seen:  # ...and appears nowhere hroute speaks
            assert secret not in text
            assert "SECRET-value" not in text


def test_metrics_on_the_socket_and_on_tcp(tmp_path: Path, llama: FakeBackend) -> None:
    port = free_port()
    cfg = config({"l": f"{{kind: llama-server, base_url: '{llama.base_url}'}}"})
    cfg = f"daemon: {{metrics_listen: '127.0.0.1:{port}'}}\n" + cfg
    with Daemon(tmp_path, cfg) as d:
        d.wait_state("l", "healthy")
        text = _raw(
            d.socket, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ).decode()
        assert 'hroute_backend_state{backend="l",state="healthy"} 1.0' in text
        assert 'hroute_backend_usable{backend="l"} 1.0' in text
        assert 'hroute_probes_total{backend="l",result="ok"}' in text
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            tcp = b"".join(iter(lambda: s.recv(65536), b"")).decode()
        assert 'hroute_backend_usable{backend="l"} 1.0' in tcp


def test_sigterm_stops_cleanly_and_removes_socket(tmp_path: Path) -> None:
    d = Daemon(tmp_path, config({"x": UNPROBED})).start()
    assert d.stop() == 0
    assert not d.socket.exists()
    assert not d.socket.with_suffix(".snapshot").exists()
    assert "hroute stopped" in d.log


def test_plugin_state_from_reports_in_clients_metrics_and_status(tmp_path: Path) -> None:
    cfg = config({"o": "{kind: openai, base_url: 'http://127.0.0.1:9', probe: {enabled: false}}"})
    with Daemon(tmp_path, cfg) as d:
        c = d.client()
        client = {
            "kind": "hermes",
            "pid": 4242,
            "isolation": "host",
            "guards": {"restore": "off", "fallback": "off", "auxiliary": "off"},
            "version": "0.22.2.post1",
        }
        report = {"backend": "o", "outcome": "success", "client": client}
        assert c.request("POST", "/v1/reports", report)[0] == 202
        status, body = c.request("GET", "/v1/clients")
        assert status == 200 and len(body["clients"]) == 1, body
        seen = body["clients"][0]
        assert (seen["pid"], seen["isolation"], seen["version"]) == (4242, "host", "0.22.2.post1")
        assert seen["off"] == ["restore", "fallback", "auxiliary"]
        metrics = d.get_text("/metrics")
        assert 'hroute_clients{isolation="host"} 1.0' in metrics
        assert 'hroute_client_guards{guard="restore",state="off"} 1.0' in metrics
        out = subprocess.run(
            [sys.executable, "-m", "hroute.cli", "--socket", str(d.socket), "status"],
            capture_output=True, text=True, timeout=20, env=d.env,
        )  # fmt: skip
        assert "hermes 0.22.2.post1 (pid 4242" in out.stdout, out
        assert "isolation host; restore off, fallback off, auxiliary off" in out.stdout
        # A label value never comes from client text: anything outside the vocabulary is refused.
        for bad in ({"isolation": "sideways"}, {"guards": {"restore": "maybe"}}, {"pid": 0}):
            status, _ = c.request("POST", "/v1/reports", {**report, "client": {**client, **bad}})
            assert status == 400, bad

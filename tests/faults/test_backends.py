"""Backends that answer badly: huge bodies, hostile error text, IPv6 addresses."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.fakebackend import Behavior, FakeBackend
from tests.support.faults import config, files_text, hroute_cli, still_answers

pytestmark = [pytest.mark.faults, pytest.mark.system]


def probed(url: str, kind: str = "openai", model: str | None = None, timeout_s: float = 0.5) -> str:
    extra = f", model: {model}" if model else ""
    probe = f"{{interval_s: 0.2, timeout_s: {timeout_s}}}"
    return f"{{kind: {kind}, base_url: '{url}', probe: {probe}{extra}}}"


def test_ipv6_loopback_backend_is_probed_on_ipv6(tmp_path: Path) -> None:
    with (
        FakeBackend(kind="openai", host="::1") as fb,
        Daemon(tmp_path, config({"v6": probed(fb.base_url + "/v1")})) as d,
    ):
        assert fb.base_url.startswith("http://[::1]:")
        assert d.wait_state("v6", "healthy")["usable"] is True
        assert fb.count("GET", "/v1/models") >= 1
        still_answers(d)


def test_ipv6_literal_keeps_its_brackets(tmp_path: Path) -> None:
    text = config({"far": "{kind: openai, base_url: 'http://[2001:db8::7]:8080/v1'}"})
    with Daemon(tmp_path, text) as d:
        status, body = d.get("/v1/usable?base_url=http://[2001:db8::7]:8080/v1/")
        assert status == 200 and body["backend"] == "far"
        detail = d.wait_state("far", "unhealthy")["detail"]
        assert "invalid url" not in detail.lower(), detail
        still_answers(d)


def test_hostile_error_body_cannot_forge_log_lines(tmp_path: Path) -> None:
    with FakeBackend(kind="openai") as fb:
        body = {"error": {"message": "nope\nCRITICAL hroute: forged\x1b[31m red", "code": 500}}
        fb.set_behavior("/v1/models", Behavior(status=500, body=body))
        with Daemon(tmp_path, config({"x": probed(fb.base_url)})) as d:
            d.wait_state("x", "unhealthy")
            assert not any(ln.startswith("CRITICAL") for ln in d.lines)
            assert "\x1b" not in d.log
            assert "\x1b" not in d.backend("x")["detail"]
            still_answers(d)


def test_a_15_mb_model_listing_neither_blocks_nor_bloats(tmp_path: Path) -> None:
    big = {
        "object": "list",
        "data": [{"id": f"model-{i:07d}", "object": "model"} for i in range(300_000)],
    }
    with FakeBackend(kind="openai") as fb:
        # Encoded once: the fake shares the machine with the daemon under test.
        fb.set_behavior("/v1/models", Behavior(body=json.dumps(big).encode()))
        # A slow machine must not turn this into a timeout case: it is about size.
        spec = probed(fb.base_url, model="model-0000001", timeout_s=10)
        with Daemon(tmp_path, config({"big": spec})) as d:
            fb.wait_for_requests(3, "/v1/models", timeout_s=20)
            assert d.backend("big")["usable"] is True
            # Socket requests between probes are answered (how fast: bench/bench_hostile.py).
            done = len(fb.requests)

            def answered_while_probed() -> bool:
                still_answers(d)
                return len(fb.requests) >= done + 3  # three more probes, each a 15 MB listing

            wait_until(answered_while_probed, 30, interval_s=0.01, what="three more probes")
            rss_kb = int(
                next(
                    ln.split()[1]
                    for ln in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines()
                    if ln.startswith("VmRSS")
                )
            )
            assert rss_kb < 150_000, f"RSS {rss_kb} kB"
            wait_until(lambda: d.proc.poll() is None, 1)


class RawServer:
    """A loopback TCP port that answers every connection with the same bytes, HTTP or not."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.served = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(self.answer)
                    self.served += 1
                except OSError:
                    pass

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self._thread.join(5)


NOT_HTTP = {
    "ssh": b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
    "badchunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "cutchunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    b'Content-Type: application/json\r\n\r\n40\r\n{"data": [',
    "headers": b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-Filler-%d: v\r\n" % i for i in range(10_000))
    + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
}


def test_an_answer_that_is_not_http_is_a_probe_failure(tmp_path: Path) -> None:
    # A wrong port (SSH), broken chunking or 10,000 headers: the backend is down, not unknown.
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(RawServer(a)) for name, a in NOT_HTTP.items()}
        backends = {
            name: probed(f"http://127.0.0.1:{s.port}/v1", timeout_s=2)
            for name, s in servers.items()
        }
        with Daemon(tmp_path, config(backends)) as d:
            for name in NOT_HTTP:
                b = d.wait_state(name, "unhealthy")
                assert b["usable"] is False, b
                assert b["reason"] in ("invalid_response", "connection"), b
                assert "\n" not in b["detail"] and "\x1b" not in b["detail"], b
            still_answers(d)


def test_credentials_in_base_url_are_basic_auth_and_never_shown(tmp_path: Path) -> None:
    # A LiteLLM or vLLM proxy behind basic auth: `https://user:pw@host/v1`.
    password = "pw-Zq81-secret"
    with (
        FakeBackend(kind="openai", basic_auth=("alice", password)) as fb,
        FakeBackend(kind="openai", basic_auth=("alice", "another")) as wrong,
    ):
        good = fb.base_url.replace("http://", f"http://alice:{password}@") + "/v1"
        bad = wrong.base_url.replace("http://", f"http://alice:{password}@") + "/v1"
        text = config({"proxy": probed(good), "denied": probed(bad)})
        with Daemon(tmp_path, text) as d:
            assert d.wait_state("proxy", "healthy")["usable"] is True
            wait_until(lambda: d.backend("denied")["reason"] == "auth", 10, what="a 401")
            assert d.backend("denied")["usable"] is False
            headers = [r.headers.get("Authorization", "") for r in fb.requests]
            assert headers and all(h.startswith("Basic ") for h in headers), headers
            # Agents name it with the credentials or without: the same record.
            assert d.client().usable(base_url=good).backend == "proxy"
            assert d.client().usable(base_url=fb.base_url + "/v1").backend == "proxy"
            shown = [
                str(d.get("/v1/backends")[1]),
                str(d.get("/v1/backends/proxy")[1]),
                str(d.get("/v1/events")[1]),
                str(d.get(f"/v1/usable?base_url={good}")[1]),
                d.get_text("/metrics"),
                hroute_cli(d, "status"),
                hroute_cli(d, "status", "--json"),
                files_text(d),
            ]
            d.stop()
            shown.append(d.log)
            for text in shown:
                assert password not in text, text[:2000]

"""The fakes in tests/support do what they claim (loopback only, each test in about a second)."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.fakebackend import Behavior, FakeBackend, sse_body  # noqa: E402
from tests.support.procs import free_port  # noqa: E402

SUPPORT = ROOT / "tests" / "support"


def request(
    port: int, path: str, method: str = "GET", body: object = None, timeout_s: float = 2.0
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on a fresh loopback connection: status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def poll(predicate, timeout_s: float, interval_s: float = 0.02):
    """Call ``predicate`` until it returns a truthy value or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval_s)


def health_status(port: int, timeout_s: float = 0.5) -> int | None:
    """GET /health's status, or None if the connection fails or times out."""
    try:
        return request(port, "/health", timeout_s=timeout_s)[0]
    except OSError:
        return None


# ------------------------------------------------------------------------------ FakeBackend

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
NORMAL = {
    "llama-server": [
        ("GET", "/health", None, {"status": "ok"}),
        ("GET", "/slots", None, [{"id": 0, "is_processing": False}]),
        ("GET", "/v1/models", None, None),
        ("GET", "/props", None, None),
    ],
    "ollama": [
        ("GET", "/api/version", None, {"version": "0.12.0"}),
        ("GET", "/api/tags", None, None),
        ("POST", "/api/show", {"model": "m1"}, None),
    ],
    "openai": [
        ("GET", "/v1/models", None, {"object": "list", "data": [{"id": "m1", "object": "model"}]}),
        ("GET", "/v1/models/m1", None, None),
        ("POST", "/v1/chat/completions", CHAT, None),
    ],
    "anthropic": [
        ("GET", "/v1/models", None, None),
        ("POST", "/v1/messages", CHAT, None),
    ],
    "openrouter": [
        ("GET", "/api/v1/models", None, None),
        ("GET", "/api/v1/key", None, {"data": {"label": "x", "limit": None, "usage": 0}}),
        ("POST", "/api/v1/chat/completions", CHAT, None),
    ],
}


def is_subset(expected: object, actual: object) -> bool:
    """Every key/item of ``expected`` appears in ``actual`` (dicts may carry more keys)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and is_subset(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(is_subset(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return expected == actual


@pytest.mark.parametrize("kind", sorted(NORMAL))
def test_normal_answers_per_kind(kind: str) -> None:
    with FakeBackend(kind, ["m1"]) as fb:
        for method, path, body, expected in NORMAL[kind]:
            status, headers, data = request(fb.port, path, method, body)
            assert status == 200, (method, path, data)
            answer = json.loads(data)
            assert expected is None or is_subset(expected, answer), (path, answer)
        assert request(fb.port, "/no/such/path")[0] == 404
        assert fb.count() == len(NORMAL[kind]) + 1
        assert fb.requests[0][:2] == (NORMAL[kind][0][0], NORMAL[kind][0][1])


def test_ollama_root_and_openai_stream() -> None:
    with FakeBackend("ollama", ["m1"]) as ollama:
        assert request(ollama.port, "/")[2] == b"Ollama is running"
    with FakeBackend("openai", ["m1"]) as fb:
        status, headers, data = request(
            fb.port, "/v1/chat/completions", "POST", {**CHAT, "stream": True}
        )
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
        assert text == fb.reply


def test_llama_server_loading_then_ready() -> None:
    with FakeBackend("llama-server", ["m1"], loading_s=0.3) as fb:
        status, _, data = request(fb.port, "/health")
        assert status == 503 and json.loads(data)["error"]["message"] == "Loading model"
        assert poll(lambda: health_status(fb.port) == 200, timeout_s=3)


def test_scripted_429_with_retry_after_then_normal_again() -> None:
    with FakeBackend("openai", ["m1"]) as fb:
        fb.set_behavior("/v1/chat", Behavior(status=429, headers={"Retry-After": "7"}, times=1))
        status, headers, data = request(fb.port, "/v1/chat/completions", "POST", CHAT)
        assert status == 429 and headers["Retry-After"] == "7"
        assert json.loads(data)["error"]["type"] == "rate_limit_error"
        assert request(fb.port, "/v1/chat/completions", "POST", CHAT)[0] == 200


def test_queue_gives_one_behavior_per_request() -> None:
    with FakeBackend("openrouter", ["m1"]) as fb:
        error_in_stream = sse_body({"error": {"code": 502, "message": "provider down"}})
        fb.queue("/api/v1/chat", Behavior(status=503), Behavior(body=error_in_stream))
        path = "/api/v1/chat/completions"
        assert request(fb.port, path, "POST", CHAT)[0] == 503
        status, _, data = request(fb.port, path, "POST", CHAT)
        assert status == 200 and b"provider down" in data
        assert request(fb.port, path, "POST", CHAT)[0] == 200
        assert len(fb.wait_for_requests(3, "/api/v1/chat", timeout_s=1, method="POST")) == 3


def test_hang_times_out_a_client_and_stop_is_quick() -> None:
    with FakeBackend("llama-server") as fb:
        fb.set_behavior("/slots", Behavior(hang=True))
        with pytest.raises(TimeoutError):
            request(fb.port, "/slots", timeout_s=0.3)
        assert request(fb.port, "/health")[0] == 200  # only /slots is wedged
        thread = fb._thread
        assert thread is not None
    # stop() ended the hanging handler: the server's thread is gone, not left waiting.
    assert not thread.is_alive()


def test_reset_and_trickle() -> None:
    with FakeBackend("openai") as fb:
        fb.set_behavior(None, Behavior(reset=True, times=1))
        with pytest.raises(ConnectionError):
            request(fb.port, "/v1/models")
        fb.set_behavior(
            None, Behavior(trickle=True, trickle_interval_s=0.02, trickle_chunk_bytes=8)
        )
        started = time.monotonic()
        status, _, data = request(fb.port, "/v1/models")
        assert status == 200 and json.loads(data)["data"][0]["id"] == "fake-model"
        assert time.monotonic() - started >= 0.02 * (len(data) // 8 - 1)


def test_stop_refuses_connections_and_start_rebinds_same_port() -> None:
    fb = FakeBackend("ollama", ["m1"]).start()
    try:
        port = fb.port
        assert request(port, "/api/version")[0] == 200
        fb.stop()
        with pytest.raises(ConnectionRefusedError):
            request(port, "/api/version")
        fb.start()
        assert fb.port == port and fb.base_url == f"http://127.0.0.1:{port}"
        assert request(port, "/api/version")[0] == 200
        assert fb.count("GET", "/api/version") == 2
    finally:
        fb.stop()


def test_wait_for_requests_raises_after_its_deadline() -> None:
    with FakeBackend("anthropic") as fb, pytest.raises(TimeoutError, match="received"):
        fb.wait_for_requests(1, "/v1/messages", timeout_s=0.1)


def read_line(stream, timeout_s: float) -> str:
    """One line from a subprocess pipe, or '' if none comes within ``timeout_s``."""
    ready, _, _ = select.select([stream], [], [], timeout_s)
    return stream.readline() if ready else ""


def test_fakebackend_as_subprocess() -> None:
    cmd = [sys.executable, str(SUPPORT / "fakebackend.py"), "--kind", "llama-server"]
    cmd += ["--port", "0", "--model", "m1"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            line = read_line(proc.stdout, timeout_s=10)
            assert line.startswith("READY "), line
            port = int(line.split()[1])
            status, _, data = request(port, "/v1/models")
            assert status == 200 and json.loads(data)["data"][0]["id"] == "m1"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
        finally:
            proc.kill()


# ------------------------------------------------------------------------------ fake_llama


@contextlib.contextmanager
def fake_llama(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """Run fake_llama.py on a free port with its output in tmp_path; always reaped."""
    port = free_port()
    cmd = [sys.executable, str(SUPPORT / "fake_llama.py"), "--port", str(port), *args]
    with (
        open(tmp_path / "stdout", "w") as out,
        open(tmp_path / "stderr", "w") as err,
        subprocess.Popen(cmd, stdout=out, stderr=err) as proc,
    ):
        try:
            yield proc, port
        finally:
            proc.kill()


def test_fake_llama_loading_then_ready(tmp_path: Path) -> None:
    with fake_llama(tmp_path, "--ready-after-ms", "700", "--print-lines", "3") as (_proc, port):
        assert poll(lambda: health_status(port) == 503, timeout_s=5)
        assert request(port, "/v1/models")[0] == 200
        assert poll(lambda: health_status(port) == 200, timeout_s=3)
        assert request(port, "/slots")[0] == 200
    assert (tmp_path / "stdout").read_text().count("stdout line") == 3
    stderr = (tmp_path / "stderr").read_text()
    assert "pid=" in stderr and stderr.count("stderr line") == 3


def test_fake_llama_exit_codes(tmp_path: Path) -> None:
    with fake_llama(tmp_path, "--exit-after-s", "0.2", "--exit-code", "3") as (proc, _port):
        assert proc.wait(timeout=5) == 3
    with fake_llama(tmp_path, "--crash-on-start", "4") as (proc, _port):
        assert proc.wait(timeout=5) == 4
    with fake_llama(tmp_path) as (proc, port):
        assert poll(lambda: health_status(port) == 200, timeout_s=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_fake_llama_port_taken(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        cmd = [sys.executable, str(SUPPORT / "fake_llama.py"), "--port", str(sock.getsockname()[1])]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    assert done.returncode == 1 and "address already in use" in done.stderr


def test_fake_llama_hangs_but_stays_alive(tmp_path: Path) -> None:
    args = ("--hang-after-s", "1.2", "--ignore-sigterm")
    with fake_llama(tmp_path, *args) as (proc, port):
        assert poll(lambda: health_status(port) == 200, timeout_s=5)
        assert poll(lambda: health_status(port, timeout_s=0.2) is None, timeout_s=3)
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.3)
        assert proc.poll() is None

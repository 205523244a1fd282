"""Simulated backends for `hroute demo`: real HTTP servers on 127.0.0.1, standard library only.

`llama` is run by hroute's supervisor as a child process (``python -m hroute.tools.simulate
llama --port P ...``) and answers /health, /slots and /v1/models like llama-server. Run k
(counted in `--runs-file`) crashes after the k-th `--crash-after-s`, if there is one; the
first run wedges after `--hang-after-s` (accepts and never answers, as a stuck GPU does).
Every run after the first loads its model for `--load-s`.

`CloudServer` is an OpenAI-compatible API in a thread of the demo itself that answers 429 with
Retry-After to its first chat requests, then serves them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answer: Any  # set per server: (method, path) -> (status, headers, body)

    def do_GET(self) -> None:  # http.server's naming
        self._reply(*self.server.answer("GET", self.path.split("?", 1)[0]))  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._reply(*self.server.answer("POST", self.path.split("?", 1)[0]))  # type: ignore[attr-defined]

    def _reply(self, status: int, headers: dict[str, str], body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _models(name: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "demo"}]}


class _LlamaBehaviour:
    def __init__(self, args: argparse.Namespace, first_run: bool, started: float) -> None:
        self.model = args.model
        self.ready_at = started + (0 if first_run else args.load_s)
        self.hang_at = started + args.hang_after_s if first_run and args.hang_after_s else None
        self.never = threading.Event()

    def __call__(self, method: str, path: str) -> tuple[int, dict[str, str], Any]:
        now = time.monotonic()
        if self.hang_at is not None and now >= self.hang_at:
            self.never.wait()  # accepted, never answered: what a wedged GPU looks like
        if path in ("/v1/models", "/models"):
            return 200, {}, _models(self.model)
        if now < self.ready_at:
            return 503, {}, LOADING
        if path == "/health":
            return 200, {}, {"status": "ok"}
        if path == "/slots":
            return 200, {}, [{"id": 0, "is_processing": False}]
        return 404, {}, {"error": {"code": 404, "message": "File Not Found"}}


def run_llama(argv: list[str]) -> int:
    """The supervised local server: crashes or hangs on its first run, recovers after."""
    p = argparse.ArgumentParser(prog="simulate llama")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="demo-model")
    p.add_argument("--runs-file", type=Path, required=True)
    p.add_argument("--crash-after-s", type=float, action="append", default=[])
    p.add_argument("--hang-after-s", type=float)
    p.add_argument("--load-s", type=float, default=0.0, help="loading time of later runs")
    args = p.parse_args(argv)
    started = time.monotonic()
    runs = int(args.runs_file.read_text()) if args.runs_file.exists() else 0
    args.runs_file.write_text(str(runs + 1))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
    server.daemon_threads = True
    server.answer = _LlamaBehaviour(args, runs == 0, started)  # type: ignore[attr-defined]
    print(f"simulated llama-server on 127.0.0.1:{args.port}, run {runs + 1}", file=sys.stderr)
    if runs < len(args.crash_after_s):

        def crash() -> None:
            print("simulated llama-server: CUDA error: an illegal memory access", file=sys.stderr)
            os._exit(134)

        timer = threading.Timer(args.crash_after_s[runs], crash)
        timer.daemon = True
        timer.start()
    server.serve_forever(poll_interval=0.1)
    return 0


class CloudServer:
    """An OpenAI-compatible API that rate-limits its first `limited` chat requests."""

    def __init__(self, model: str, limited: int, retry_after_s: float) -> None:
        self.model, self.limited, self.retry_after_s = model, limited, retry_after_s
        self._lock = threading.Lock()
        self.chats = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.answer = self._answer  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> CloudServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _answer(self, method: str, path: str) -> tuple[int, dict[str, str], Any]:
        if method == "GET" and path in ("/v1/models", "/models"):
            return 200, {}, _models(self.model)
        if method == "POST" and path.endswith("/chat/completions"):
            with self._lock:
                self.chats += 1
                limited = self.chats <= self.limited
            if limited:
                body = {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}
                return 429, {"Retry-After": f"{self.retry_after_s:.0f}"}, body
            message = {"role": "assistant", "content": "Hello from the cloud."}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return 200, {}, {"object": "chat.completion", "model": self.model, "choices": [choice]}
        return 404, {}, {"error": {"message": "not found"}}


if __name__ == "__main__":
    if sys.argv[1:2] == ["llama"]:
        sys.exit(run_llama(sys.argv[2:]))
    print(
        "usage: python -m hroute.tools.simulate llama --port P --runs-file F ...", file=sys.stderr
    )
    sys.exit(2)

"""A stand-in for a supervised llama-server process (stdlib only), for process-supervision tests.

It binds 127.0.0.1:PORT at once and serves GET /health, /slots and /v1/models like llama-server,
and can be told to load slowly, exit, crash before binding, ignore SIGTERM, wedge (accept but never
answer) or print lines for log-forwarding tests::

    python tests/support/fake_llama.py --port 8081 --ready-after-ms 500 --exit-after-s 3 \\
        --exit-code 2

At start it writes ``fake_llama: pid=<pid> args=[...]`` to stderr; once bound,
``main: server is listening on http://127.0.0.1:PORT``; once ready, ``main: model loaded``.
SIGTERM makes it exit 0 (like llama-server) unless ``--ignore-sigterm``. Unknown llama-server
options (``-m``, ``-c`` ...) are accepted and ignored, so it can replace the real command line.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parse the switches; return them and the ignored extra arguments."""
    p = argparse.ArgumentParser(description="fake llama-server for supervision tests")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("-m", "--model", default="fake-model.gguf", help="name shown in /v1/models")
    p.add_argument("--ready-after-ms", type=int, default=0, help="/health 503 until then")
    p.add_argument("--exit-after-s", type=float, default=None, help="exit after T seconds")
    p.add_argument("--exit-code", type=int, default=0, help="code for --exit-after-s")
    p.add_argument("--crash-on-start", type=int, default=None, metavar="K", help="exit K at once")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--hang-after-s", type=float, default=None, help="then never answer")
    p.add_argument("--print-lines", type=int, default=0, help="lines to stdout and stderr")
    p.add_argument("--bind-after-ms", type=int, default=0, help="connections refused until then")
    p.add_argument("--log-health", action="store_true", help="a line per GET /health answered")
    p.add_argument("--say", action="append", default=[], help="a line to stderr at start")
    return p.parse_known_args(argv)


def log(message: str) -> None:
    """One line to stderr, where llama-server logs, flushed for the supervisor's reader.

    One write of line and newline: print() writes them apart, and a signal handler that logs
    in between would glue two lines together."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def exit_now(code: int, reason: str) -> None:
    """Exit at once with ``code`` (other threads may be blocked on wedged requests)."""
    log(f"fake_llama: {reason}, exiting with {code}")
    sys.stdout.flush()
    os._exit(code)


class State:
    """What the request handlers need to know; times are monotonic."""

    def __init__(self, args: argparse.Namespace, started_at: float) -> None:
        self.model = os.path.basename(args.model)
        self.ready_at = started_at + args.ready_after_ms / 1000
        self.hang_at = None if args.hang_after_s is None else started_at + args.hang_after_s
        self.never = threading.Event()  # wedged requests wait on this forever
        self.log_health = args.log_health
        self.health_asked = 0
        self.lock = threading.Lock()

    def loading(self) -> bool:
        return time.monotonic() < self.ready_at

    def hanging(self) -> bool:
        return self.hang_at is not None and time.monotonic() >= self.hang_at


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``state``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # http.server's naming
            if state.hanging():
                state.never.wait()
            path = self.path.split("?", 1)[0]
            models = {
                "object": "list",
                "data": [{"id": state.model, "object": "model", "owned_by": "llamacpp"}],
            }
            if path in ("/v1/models", "/models"):
                self.send_json(200, models)  # llama-server lists models while loading
            elif state.loading():
                self.send_json(503, LOADING)
            elif path == "/health":
                self.send_json(200, {"status": "ok"})
                if state.log_health:
                    with state.lock:
                        state.health_asked += 1
                        log(f"fake_llama: GET /health #{state.health_asked} -> 200")
            elif path == "/slots":
                self.send_json(200, [{"id": 0, "is_processing": False}])
            else:
                err = {"code": 404, "message": "File Not Found", "type": "not_found_error"}
                self.send_json(404, {"error": err})

        def send_json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep stderr for the lines tests look for

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Run the fake; returns only on a bind failure (other exits go through ``exit_now``)."""
    args, extra = parse_args(argv)
    started_at = time.monotonic()
    log(f"fake_llama: pid={os.getpid()} args={sys.argv[1:] if argv is None else argv}")
    if extra:
        log(f"fake_llama: ignoring options {extra}")
    for line in args.say:
        log(line)
    if args.crash_on_start is not None:
        exit_now(args.crash_on_start, "--crash-on-start")
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: log("fake_llama: ignoring SIGTERM"))
    else:
        signal.signal(signal.SIGTERM, lambda *_: exit_now(0, "received SIGTERM"))
    for i in range(args.print_lines):
        print(f"fake_llama stdout line {i}", flush=True)
        log(f"fake_llama stderr line {i}")

    if args.bind_after_ms:
        time.sleep(args.bind_after_ms / 1000)  # a big model loading before the port is bound
    state = State(args, started_at)
    ThreadingHTTPServer.daemon_threads = True
    try:
        server = ThreadingHTTPServer((args.host, args.port), make_handler(state))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            log(f"fake_llama: cannot bind {args.host}:{args.port}: address already in use")
        else:
            log(f"fake_llama: cannot bind {args.host}:{args.port}: {exc}")
        return 1
    log(f"main: server is listening on http://{args.host}:{server.server_address[1]}")
    if args.log_health:
        log(f"fake_llama: bound at wall {time.time():.6f}")

    timers = [threading.Timer(state.ready_at - time.monotonic(), log, ("main: model loaded",))]
    if args.exit_after_s is not None:
        reason = f"--exit-after-s {args.exit_after_s}"
        exit_in_s = started_at + args.exit_after_s - time.monotonic()
        timers.append(threading.Timer(exit_in_s, exit_now, (args.exit_code, reason)))
    for timer in timers:
        timer.daemon = True
        timer.start()
    server.serve_forever(poll_interval=0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

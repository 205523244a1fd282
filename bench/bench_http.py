"""The socket's HTTP in process: µs per request through the protocol object, no kernel.

Feeds the exact bytes hroute's `Client` sends (a `GET /v1/usable`, a `POST /v1/reports`
with its JSON body, and 16 `GET /v1/usable` pipelined in one read) to `HttpProtocol` over a
fake transport, with a handler that answers a fixed response, so that what is timed is the
server's own work per request: parsing, dispatch, encoding the answer, the timers. The
round trip through the kernel and the client is measured by bench_usable.

Times are CPU seconds of this process (the machine's other load does not count), the best
of a few rounds. `--baseline FILE` times another version of edges/http.py (e.g. one taken
with `git show REV:src/hroute/edges/http.py`) in the same run, round for round.

Usage (from the repository root):
    .venv/bin/python -m bench.bench_http [--n 200000] [--baseline old_http.py]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import platform
import sys
import time
from types import ModuleType

import hroute.edges.http

GET = b"GET /v1/usable?backend=local HTTP/1.1\r\nHost: hroute\r\nContent-Length: 0\r\n\r\n"
BODY = b'{"backend": "local", "outcome": "failure", "reason": "rate_limit", "status_code": 429}'
POST = (
    b"POST /v1/reports HTTP/1.1\r\nHost: hroute\r\n"
    + f"Content-Length: {len(BODY)}\r\n".encode()
    + b"Content-Type: application/json\r\n\r\n"
    + BODY
)
ANSWER_BODY = b'{"backend":"local","usable":true,"state":"healthy"}'


class Transport(asyncio.Transport):
    """Takes what is written and forgets it; never pauses anybody."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def per_request_us(http: ModuleType, data: bytes, requests_per_feed: int, n: int) -> float:
    async def run() -> float:
        answer = http.Response(200, ANSWER_BODY)
        server = http.HttpServer(routes=lambda request: lambda r: answer)
        conn = http.HttpProtocol(server)
        transport = Transport()
        conn.connection_made(transport)
        feeds = max(1, n // requests_per_feed)
        start = time.process_time()
        for _ in range(feeds):
            conn.data_received(data)
        took = time.process_time() - start
        assert transport.written > 0
        conn.connection_lost(None)
        return took / (feeds * requests_per_feed) * 1e6

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="requests per case and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", metavar="FILE", help="another edges/http.py to time too")
    args = parser.parse_args()
    versions = {"this tree": hroute.edges.http}
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_http", args.baseline)
        assert spec is not None and spec.loader is not None
        versions["baseline"] = sys.modules["baseline_http"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(versions["baseline"])
    cases = {
        "GET /v1/usable": (GET, 1),
        "POST /v1/reports (87-byte body)": (POST, 1),
        "GET /v1/usable, 16 pipelined": (GET * 16, 16),
    }
    print(f"Python {platform.python_version()}, CPU µs per request, best of {args.rounds}")
    print("| request | " + " | ".join(versions) + " |\n|---|" + "---:|" * len(versions))
    for name, (data, per_feed) in cases.items():
        best = dict.fromkeys(versions, float("inf"))
        for _ in range(args.rounds):
            for label, http in versions.items():
                took = per_request_us(http, data, per_feed, args.n)
                best[label] = min(best[label], took)
        print(f"| {name} | " + " | ".join(f"{best[v]:.2f}" for v in versions) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

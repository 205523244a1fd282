"""The socket's HTTP in process: µs per request through the protocol object, no kernel.

Feeds the exact bytes hroute's `Client` sends (a `GET /v1/usable`, a `POST /v1/reports`
with its JSON body, and 16 `GET /v1/usable` pipelined in one read) to `HttpProtocol` over a
fake transport, with a handler that answers a fixed response, so that what is timed is the
server's own work per request: parsing, dispatch, encoding the answer, the timers. The
round trip through the kernel and the client is measured by bench_usable.

Usage (from the repository root): .venv/bin/python -m bench.bench_http [--n 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time

from hroute.edges.http import HttpProtocol, HttpServer, Response

GET = b"GET /v1/usable?backend=local HTTP/1.1\r\nHost: hroute\r\nContent-Length: 0\r\n\r\n"
BODY = b'{"backend": "local", "outcome": "failure", "reason": "rate_limit", "status_code": 429}'
POST = (
    b"POST /v1/reports HTTP/1.1\r\nHost: hroute\r\n"
    + f"Content-Length: {len(BODY)}\r\n".encode()
    + b"Content-Type: application/json\r\n\r\n"
    + BODY
)
ANSWER = Response(200, b'{"backend":"local","usable":true,"state":"healthy"}')


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


def per_request_us(data: bytes, requests_per_feed: int, n: int) -> float:
    async def run() -> float:
        server = HttpServer(routes=lambda request: lambda r: ANSWER)
        conn = HttpProtocol(server)
        transport = Transport()
        conn.connection_made(transport)
        feeds = max(1, n // requests_per_feed)
        start = time.perf_counter()
        for _ in range(feeds):
            conn.data_received(data)
        took = time.perf_counter() - start
        assert transport.written > 0
        conn.connection_lost(None)
        return took / (feeds * requests_per_feed) * 1e6

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="requests per case and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cases = {
        "GET /v1/usable": (GET, 1),
        "POST /v1/reports (87-byte body)": (POST, 1),
        "GET /v1/usable, 16 pipelined": (GET * 16, 16),
    }
    print(f"Python {platform.python_version()} on {platform.machine()}, median of {args.rounds}")
    print("| request | µs per request |\n|---|---:|")
    for name, (data, per_feed) in cases.items():
        figures = [per_request_us(data, per_feed, args.n) for _ in range(args.rounds)]
        print(f"| {name} | {statistics.median(figures):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The socket's flow control in process: what a connection may queue, counted in bytes."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import anyio
import pytest

from hroute.edges.http import HttpServer, Response
from hroute.edges.limits import WRITE_HIGH_WATER_BYTES
from hroute.edges.sockets import bind_unix_socket

pytestmark = pytest.mark.anyio

ANSWER = Response(200, b"m" * 20_000, "text/plain")  # about the size of /metrics


async def _poll(predicate, what: str, timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.01)


async def test_a_client_that_never_reads_is_paused_then_aborted(tmp_path: Path) -> None:
    server = HttpServer(routes=lambda r: lambda r: ANSWER, idle_timeout_s=0.5)
    path = tmp_path / "s.sock"
    await server.serve(bind_unix_socket(path))
    answered = 0
    real_dispatch = server.dispatch

    def counting(request):
        nonlocal answered
        answered += 1
        return real_dispatch(request)

    server.dispatch = counting  # type: ignore[method-assign]
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(str(path))
            s.setblocking(False)
            data = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 5000
            sent = 0
            with contextlib.suppress(BlockingIOError):  # the server stops reading
                while sent < len(data):
                    sent += s.send(data[sent:])
                    await anyio.sleep(0)
            await _poll(lambda: server.connections == 1, "the connection")
            conn = next(iter(server._connections))
            transport = conn._transport
            await _poll(lambda: conn._write_paused, "writing to pause")
            queued = transport.get_write_buffer_size() + conn._parser.buffered
            # One high-water mark of answers plus one whole request unparsed, at most
            # (a read is up to 256 KiB); 5,000 answers would be 100 MB.
            assert (
                queued <= WRITE_HIGH_WATER_BYTES + len(ANSWER.body) + 256 * 1024 + server.read_bound
            )
            assert answered < 100
            assert conn._read_paused
            await _poll(lambda: server.connections == 0, "the connection to be aborted")
            assert server.aborted == 1
    finally:
        await server.aclose()


async def test_a_trickled_head_gets_408_at_its_deadline(tmp_path: Path) -> None:
    server = HttpServer(routes=lambda r: lambda r: ANSWER, request_timeout_s=0.3)
    path = tmp_path / "s.sock"
    await server.serve(bind_unix_socket(path))
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.setblocking(False)
            head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
            sent = 0
            got = b""
            while not got and sent < len(head):  # a byte every 50 ms, until answered
                s.send(head[sent : sent + 1])
                sent += 1
                await anyio.sleep(0.05)
                with contextlib.suppress(BlockingIOError):
                    got = s.recv(65536)
            assert got.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in got
            assert sent < 100  # cut at the deadline, not at the 10 s idle timeout
            assert server.timed_out == 1
    finally:
        await server.aclose()

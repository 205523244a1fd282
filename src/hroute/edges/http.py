"""A small HTTP/1.1 server for the socket API: keep-alive, bounded, and a few µs per request.

Agents ask hroute on every turn, so the cost of one exchange is the product. A general web
framework spends most of a request in machinery this API does not use (middleware chains,
multidict headers, streaming bodies, per-request task objects); this server hands the bytes
to a sans-I/O parser (http_parse.py: request / need more / error), calls a handler that
answers synchronously (the registry never awaits), and writes one response with
`Content-Length`. A handler that must wait (reload, restart) returns an awaitable; the
connection answers it before parsing its next request, so responses keep their order and
each request gets its own.

It is still HTTP/1.1, so `curl --unix-socket` and any HTTP client work. Limits: the head
is at most 16 KiB (431), the body `max_body` bytes (413), chunked request bodies are refused
(411), a request must be complete `request_timeout_s` after its first byte (408), an idle
connection is closed after `idle_timeout_s` (aborted if its answers wait unread), a
connection is not read while its answers wait unread or a whole request waits unparsed,
and past `max_connections` a new connection takes the place of the oldest one not running a
handler (idle, partial or stalled), so file descriptors stay for probes and files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hroute.edges.http_parse import (
    CONTINUE,
    MAX_HEAD_BYTES,
    NEED_DATA,
    ParseError,
    Request,
    RequestParser,
)
from hroute.edges.limits import (
    BACKLOG,
    IDLE_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT_S,
    WRITE_HIGH_WATER_BYTES,
)

log = logging.getLogger("hroute.http")

ACCEPT_BATCH = 16  # connections accepted per wake-up; well under the fds kept in reserve
REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    417: "Expectation Failed",
    422: "Unprocessable Content",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
CONTINUE_LINE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = _JSON.encode(data).encode()
    return Response(status, body, "application/json", headers or {})


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status)


Handler = Callable[[Request], Response | Awaitable[Response]]


_BUSY_BODY = b'{"error":{"code":"busy","message":"too many client connections"}}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode()
    + _BUSY_BODY
)


def _encode(response: Response, keep_alive: bool, http10: bool = False) -> bytes:
    head = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
    ]
    if not keep_alive:
        head.append("Connection: close")
    elif http10:
        head.append("Connection: keep-alive")  # else an HTTP/1.0 client takes it as closing
    head += [f"{k}: {v}" for k, v in response.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body


class HttpProtocol(asyncio.Protocol):
    """One client connection: read, parse (http_parse.py), dispatch, answer, keep alive.

    Flow control, after uvicorn's `FlowControl`: the transport calls `pause_writing` when
    the answers it holds pass its high-water mark (a client that does not read); then no
    request is parsed and the connection is not read until `resume_writing`, so neither the
    answers nor the requests behind them pile up in the daemon. Reading also stops while
    more than one whole request waits unparsed behind a handler that is still running.

    One deadline per connection, checked lazily (a timer per request would cost more than
    the parsing): an idle connection is closed `idle_timeout_s` after its last answer; a
    request must be complete (head and body) `request_timeout_s` after its first byte, else
    it gets 408 (a trickle of header bytes no longer holds a descriptor for ever); one whose
    answers wait unread at the deadline is aborted, not closed (closing waits to flush).
    """

    # fmt: off
    __slots__ = ("_server", "_loop", "_parser", "_transport", "_busy", "_closing", "_lost",
                 "_write_paused", "_read_paused", "_deadline", "_timer", "_request_timed")
    # fmt: on

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = RequestParser(server.max_body)
        self._transport: asyncio.Transport | None = None
        self._busy = False  # a handler is awaiting: later requests wait in the parser
        self._closing = False
        self._lost = False
        self._write_paused = False
        self._read_paused = False
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._request_timed = False  # the deadline now is the request's, not the idle one

    # --- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if not self._server.admit(self):
            # Over the cap and every client mid-request: fds are kept for probes and files.
            transport.write(BUSY)  # type: ignore[attr-defined]
            transport.close()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)  # type: ignore[attr-defined]
        self._touch(self._server.idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server.release(self)

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        if not self._busy and not self._write_paused:
            self._process()
        if self._parser.buffered > self._server.read_bound and not self._read_paused:
            self._pause_reading()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._touch(self._server.idle_timeout_s)
        if not self._busy:
            self._process()

    @property
    def evictable(self) -> bool:
        """No handler is running for it: a partial request or unread answers can be dropped."""
        return not self._busy

    def close(self) -> None:
        """Close after what was written is sent; at once if the client is not reading."""
        if self._transport is None:
            return
        self._closing = True
        if self._transport.get_write_buffer_size():
            self._transport.abort()
        else:
            self._transport.close()

    def abort(self) -> None:
        """Let the connection go at once (its descriptor is freed on the next loop turn)."""
        if self._transport is not None:
            self._transport.abort()

    # --- internals --------------------------------------------------------------------

    def _touch(self, timeout_s: float) -> None:
        """Move the deadline. A later one leaves the timer be (it looks again when it
        fires: no timer is made per request); an earlier one sets it anew."""
        self._deadline = self._loop.time() + timeout_s
        if self._timer is not None:
            if self._timer.when() <= self._deadline:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(self._deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        transport = self._transport
        if self._lost or transport is None:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_deadline)
            return
        if transport.get_write_buffer_size():
            self._server.aborted += 1  # answers left unread: closing would wait for ever
            transport.abort()
        elif self._busy:
            return  # the handler's answer sets the next deadline
        elif self._parser.in_request:
            self._server.timed_out += 1
            limit = self._server.request_timeout_s
            message = f"request not complete {limit:g} s after its first byte"
            self._write(error_response(408, "request_timeout", message), False)
        else:
            self._closing = True
            transport.close()

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._closing:
            self._read_paused = True
            self._transport.pause_reading()

    def _process(self) -> None:
        parser = self._parser
        while not self._busy and not self._closing and not self._write_paused:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            if event is CONTINUE:
                self._transport.write(CONTINUE_LINE)  # type: ignore[union-attr]
                continue
            if isinstance(event, ParseError):
                self._write(error_response(event.status, event.code, event.message), False)
                return
            request: Request = event  # type: ignore[assignment]
            self._request_timed = False
            result = self._server.dispatch(request)
            if isinstance(result, Response):
                self._write(result, request.keep_alive, request.http10)
            else:
                self._busy = True
                task = asyncio.ensure_future(result)
                task.add_done_callback(
                    lambda t, k=request.keep_alive, h=request.http10: self._finished(t, k, h)
                )
        if self._closing or self._busy:
            return
        if self._write_paused or not parser.in_request:
            self._touch(self._server.idle_timeout_s)
        elif not self._request_timed:
            self._request_timed = True  # from a request's first byte, not from its last
            self._touch(self._server.request_timeout_s)
        unpause = self._read_paused and not self._write_paused
        if unpause and parser.buffered <= self._server.read_bound:
            self._read_paused = False
            self._transport.resume_reading()  # type: ignore[union-attr]

    def _finished(self, task: asyncio.Future[Response], keep_alive: bool, http10: bool) -> None:
        self._busy = False
        if task.cancelled():
            return
        exc = task.exception()
        response = self._server.crash_response(exc) if exc else task.result()
        self._write(response, keep_alive, http10)
        if not self._closing:
            self._touch(self._server.idle_timeout_s)
            if not self._write_paused:
                self._process()

    def _write(self, response: Response, keep_alive: bool, http10: bool = False) -> None:
        if self._transport is None or self._closing:
            return
        self._transport.write(_encode(response, keep_alive, http10))
        if not keep_alive:
            self._closing = True
            self._transport.close()  # flushes first; the deadline aborts it if never read
            self._touch(self._server.idle_timeout_s)


@dataclass
class HttpServer:
    """Routes requests to handlers; owns the connections it serves."""

    routes: Callable[[Request], Handler | None]  # None: 404, or 405 via `allowed`
    allowed: Callable[[str], list[str]] = lambda path: []
    max_body: int = MAX_BODY_BYTES
    max_connections: int = MAX_CONNECTIONS
    idle_timeout_s: float = IDLE_TIMEOUT_S  # an idle kept connection holds a descriptor
    request_timeout_s: float = REQUEST_TIMEOUT_S  # from a request's first byte to its last
    on_crash: Callable[[BaseException], None] = lambda exc: None
    timed_out: int = 0  # requests not complete by their deadline (408)
    aborted: int = 0  # connections dropped at their deadline with answers left unread
    # In order of arrival (a dict keeps it): the oldest one makes room first.
    _connections: dict[HttpProtocol, None] = field(default_factory=dict)
    _servers: list[asyncio.AbstractServer] = field(default_factory=list)

    @property
    def read_bound(self) -> int:
        """Unparsed bytes a connection may hold: one whole request. Past it, reading stops."""
        return MAX_HEAD_BYTES + self.max_body

    def admit(self, conn: HttpProtocol) -> bool:
        """Take `conn`; at the cap, drop the oldest connection whose handler is not running
        to make room: idle, with a partial request (a slow trickle) or with answers it does
        not read. Idle ones are not sought first: that scan would cost every accept a pass
        over thousands of slow clients, and a kept client reconnects at once anyway."""
        if len(self._connections) >= self.max_connections:
            victim = next((c for c in self._connections if c.evictable), None)
            if victim is None:
                return False
            del self._connections[victim]  # now: its connection_lost comes a loop turn later
            victim.abort()
        self._connections[conn] = None
        return True

    def release(self, conn: HttpProtocol) -> None:
        self._connections.pop(conn, None)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def dispatch(self, request: Request) -> Response | Awaitable[Response]:
        handler = self.routes(request)
        if handler is None:
            methods = self.allowed(request.path)
            if methods:
                return error_response(
                    405,
                    "method_not_allowed",
                    f"{request.method} not allowed (use {', '.join(methods)})",
                )
            return error_response(404, "not_found", f"no such endpoint: {request.path}")
        try:
            return handler(request)
        except Exception as exc:  # one bad request must not stop the server
            return self.crash_response(exc)

    def crash_response(self, exc: BaseException) -> Response:
        self.on_crash(exc)
        return error_response(500, "internal_error", "internal error; see hroute's log")

    async def serve(self, sock: socket.socket) -> None:
        """Serve on a listening socket (Unix or TCP) until cancelled."""
        loop = asyncio.get_running_loop()
        # asyncio's `backlog` is both what it passes to listen() and how many connections it
        # accepts in one go, before any can be refused: keep the batch small (under the fds
        # reserved for probes and files), then ask the kernel for the real backlog.
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(
                lambda: HttpProtocol(self), sock=sock, backlog=ACCEPT_BATCH
            )
        else:
            server = await loop.create_server(
                lambda: HttpProtocol(self), sock=sock, backlog=ACCEPT_BATCH
            )
        sock.listen(BACKLOG)
        self._servers.append(server)

    async def aclose(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            conn.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

"""A small HTTP/1.1 server for the socket API: keep-alive, bounded, and a few µs per request.

Agents ask hroute on every turn, so the cost of one exchange is the product. A general web
framework spends most of a request in machinery this API does not use (middleware chains,
multidict headers, streaming bodies, per-request task objects); this server parses the
request line, the headers it needs and a `Content-Length` body, calls a handler that
answers synchronously (the registry never awaits), and writes one response with
`Content-Length`. A handler that must wait (reload, restart) returns an awaitable; the
connection answers it before reading its next request, so responses keep their order.

It is still HTTP/1.1, so `curl --unix-socket` and any HTTP client work. Limits: the head
is at most 16 KiB, the body `max_body` bytes (413), chunked request bodies are refused
(411), an idle connection is closed after `idle_timeout_s`, and past `max_connections`
new connections are closed at once, so file descriptors stay for probes and files.
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
from urllib.parse import parse_qsl, unquote

log = logging.getLogger("hroute.http")

MAX_HEAD_BYTES = 16 * 1024
ACCEPT_BATCH = 16  # connections accepted per wake-up; well under the fds kept in reserve
REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Request:
    method: str
    path: str  # decoded, without the query
    query: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names


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


def _encode(response: Response, keep_alive: bool) -> bytes:
    head = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
    ]
    if not keep_alive:
        head.append("Connection: close")
    head += [f"{k}: {v}" for k, v in response.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body


class _Bad(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse, dispatch, answer, keep alive."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False  # a handler is awaiting: later requests wait in the buffer
        self._idle: asyncio.TimerHandle | None = None
        self._closing = False

    # --- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if not self._server.admit(self):
            # Over the cap and every client mid-request: fds are kept for probes and files.
            transport.write(BUSY)  # type: ignore[attr-defined]
            transport.close()
            return
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._idle is not None:
            self._idle.cancel()
        self._server.release(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > MAX_HEAD_BYTES + self._server.max_body:
            self._fail(413, "payload_too_large", "request too large")
            return
        self._arm_idle()
        if not self._busy:
            self._process()

    @property
    def busy(self) -> bool:
        """In the middle of a request: bytes of it arrived, or its handler is running."""
        return self._busy or bool(self._buf)

    def abort(self) -> None:
        """Let the connection go at once (its descriptor is freed on the next loop turn)."""
        if self._transport is not None:
            self._transport.abort()

    # --- internals --------------------------------------------------------------------

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self._server.idle_timeout_s, self._close_idle)

    def _close_idle(self) -> None:
        if not self._busy and self._transport is not None:
            self._transport.close()

    def _process(self) -> None:
        while self._buf and not self._busy and not self._closing:
            try:
                parsed = self._parse()
            except _Bad as bad:
                self._fail(bad.status, bad.code, bad.message)
                return
            if parsed is None:
                return  # need more bytes
            request, keep_alive = parsed
            result = self._server.dispatch(request)
            if isinstance(result, Response):
                self._write(result, keep_alive)
            else:
                self._busy = True
                task = asyncio.ensure_future(result)
                task.add_done_callback(lambda t, k=keep_alive: self._finished(t, k))

    def _finished(self, task: asyncio.Future[Response], keep_alive: bool) -> None:
        self._busy = False
        if task.cancelled():
            return
        exc = task.exception()
        response = self._server.crash_response(exc) if exc else task.result()
        self._write(response, keep_alive)
        if not self._closing:
            self._process()

    def _write(self, response: Response, keep_alive: bool) -> None:
        if self._transport is None or self._closing:
            return
        self._transport.write(_encode(response, keep_alive))
        if not keep_alive:
            self._closing = True
            self._transport.close()

    def _fail(self, status: int, code: str, message: str) -> None:
        self._buf.clear()
        self._write(error_response(status, code, message), keep_alive=False)

    def _parse(self) -> tuple[Request, bool] | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise _Bad(431, "bad_request", "request head too large")
            return None
        try:
            head = bytes(self._buf[:end]).decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise _Bad(400, "bad_request", "bad request head") from None
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _Bad(400, "bad_request", "bad request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _Bad(400, "bad_request", "bad header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _Bad(411, "length_required", "send the body with Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _Bad(400, "bad_request", "bad Content-Length")
        length = int(length_text)
        if length > self._server.max_body:
            raise _Bad(413, "payload_too_large", f"body over {self._server.max_body} bytes")
        start = end + 4
        if len(self._buf) < start + length:
            return None
        body = bytes(self._buf[start : start + length])
        del self._buf[: start + length]
        path, _, query_text = target.partition("?")
        try:
            query = dict(parse_qsl(query_text, keep_blank_values=True))
        except ValueError:
            raise _Bad(400, "bad_request", "bad query string") from None
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        return Request(method, unquote(path), query, body, headers), keep_alive


@dataclass
class HttpServer:
    """Routes requests to handlers; owns the connections it serves."""

    routes: Callable[[Request], Handler | None]  # None: 404, or 405 via `allowed`
    allowed: Callable[[str], list[str]] = lambda path: []
    max_body: int = 64 * 1024
    max_connections: int = 512
    idle_timeout_s: float = 10.0  # an idle kept connection holds a descriptor
    backlog: int = 4096
    on_crash: Callable[[BaseException], None] = lambda exc: None
    evicted: int = 0  # idle clients closed to make room
    # In order of arrival (a dict keeps it): the oldest idle one makes room first.
    _connections: dict[HttpProtocol, None] = field(default_factory=dict)
    _servers: list[asyncio.AbstractServer] = field(default_factory=list)

    def admit(self, conn: HttpProtocol) -> bool:
        """Take `conn`; at the cap, close the oldest idle connection to make room."""
        if len(self._connections) >= self.max_connections:
            idle = next((c for c in self._connections if not c.busy), None)
            if idle is None:
                return False
            del self._connections[idle]  # now: its connection_lost comes a loop turn later
            idle.abort()
            self.evicted += 1
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
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
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
        sock.listen(self.backlog)
        self._servers.append(server)

    async def aclose(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self._connections):
            if conn._transport is not None:
                conn._transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

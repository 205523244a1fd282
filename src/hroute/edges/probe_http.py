"""The probes' HTTP client: GET over HTTP/1.1 (TLS for https), bounded, kept connections.

Probes are the only requests hroute makes: a GET, a few headers, an answer of a few hundred
bytes, every few seconds, for years. A general client spent ~1 ms of CPU on each at idle
(its request machinery, tracing hooks, cookie jar, multidicts): most of an idle daemon's
CPU. This one is an `asyncio.Protocol` feeding `response_parse.ResponseParser`: bytes in,
an answer out, nothing else.

- One request at a time per connection. Connections to a server are kept for the next
  probe (at most `keep_per_server`, closed after `keep_idle_s` unused or when the server
  closes them); a request on a kept connection that the server had closed meanwhile is
  sent again once on a new one (a GET, so nothing happens twice).
- At most `max_open` requests are in flight: a fleet of ten thousand backends never holds
  ten thousand sockets (file descriptors are the daemon's budget).
- TLS verifies the server against the system's CAs (`SSL_CERT_FILE` and `SSL_CERT_DIR`
  are honoured); the context is made once. No proxy from the environment, no redirect.
- Every error is one of this module's exceptions, whose class names `core.classify`
  knows, and none carries a header's value (it may be a key).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import anyio

from hroute import __version__
from hroute.edges.response_parse import NEED_DATA, Response, ResponseParser

KEEP_PER_SERVER = 32
KEEP_IDLE_S = 30.0
MAX_OPEN = 256
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")


class ConnectError(OSError):
    """The connection could not be made (refused, unreachable, no such host, TLS)."""

    def __init__(self, host: str, port: int, why: str) -> None:
        super().__init__(f"cannot connect to {host}:{port}: {why}")
        self.host, self.port = host, port


class RemoteProtocolError(Exception):
    """The server's bytes are not an HTTP answer to the request."""


class ServerDisconnectedError(ConnectionError):
    """The server closed the connection before its answer was complete."""


class RequestError(ValueError):
    """The request cannot be sent as configured (never names a header's value)."""


class _Connection(asyncio.Protocol):
    """One connection: sends a request, feeds what comes back to a parser."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.received = False  # any byte of the answer to the current request
        self._parser: ResponseParser | None = None
        self._answer: asyncio.Future[Response] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def exchange(self, request: bytes, max_body: int) -> asyncio.Future[Response]:
        assert self.transport is not None and self._answer is None
        answer = asyncio.get_running_loop().create_future()
        if self.closed or self.transport.is_closing():  # a write there would vanish unsaid
            answer.set_exception(ServerDisconnectedError("the connection was closed"))
            return answer
        self._parser, self._answer = ResponseParser(max_body=max_body), answer
        self.received = False
        self.transport.write(request)
        return answer

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            self.close()  # nothing was asked: a server that talks unasked is not reused
            return
        self.received = True
        event = self._parser.feed(data)
        if event is not NEED_DATA:
            self._settle(event)

    def eof_received(self) -> bool:
        if self._parser is not None:
            self._settle(self._parser.feed_eof())
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None:
            self._settle(self._parser.feed_eof())

    def _settle(self, event: object) -> None:
        answer, self._parser, self._answer = self._answer, None, None
        if isinstance(event, Response):
            if not event.keep_alive:
                self.close()
            if answer is not None and not answer.done():
                answer.set_result(event)
            return
        self.close()
        if answer is not None and not answer.done():
            if self.received:
                answer.set_exception(RemoteProtocolError(getattr(event, "message", "bad answer")))
            else:
                answer.set_exception(ServerDisconnectedError(getattr(event, "message", "")))

    def close(self) -> None:
        self.closed = True
        self._parser = None
        if self.transport is not None:
            self.transport.close()


class ProbeClient:
    """GET requests for the probes; `aclose()` closes the kept connections."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        keep_per_server: int = KEEP_PER_SERVER,
        keep_idle_s: float = KEEP_IDLE_S,
        max_open: int = MAX_OPEN,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ssl = ssl_context
        self._keep_per_server, self._keep_idle_s, self._now = keep_per_server, keep_idle_s, now
        self._max_open, self._open = max_open, 0
        self._turns: deque[anyio.Event] = deque()  # requests waiting for one to end
        self._kept: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._swept = now()
        self.opened = 0  # connections made, for tests and benchmarks

    async def get(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout_s: float,
        max_body: int,
        keep: bool = True,
    ) -> Response:
        """GET `url` and return the answer (any status). Raises TimeoutError past
        `timeout_s` (connecting included), or one of this module's errors."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestError(f"not an http(s) URL: {parts.scheme}://")
        https = parts.scheme == "https"
        host, port = parts.hostname, parts.port or (443 if https else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = _request_bytes(target, parts.netloc.rpartition("@")[2], headers or {}, keep)
        server = (parts.scheme, host, port)
        with anyio.fail_after(timeout_s):
            while self._open >= self._max_open:
                await self._wait_turn()
            self._open += 1
            try:
                conn = self._take(server)
                if conn is not None:
                    try:
                        return await self._exchange(server, conn, request, max_body, keep)
                    except ServerDisconnectedError:
                        pass  # closed while kept (its idle timeout): once more, on a new one
                conn = await self._connect(host, port, https)
                return await self._exchange(server, conn, request, max_body, keep)
            finally:
                self._open -= 1
                if self._turns:
                    self._turns.popleft().set()

    async def _wait_turn(self) -> None:
        # (A CapacityLimiter's checkpoints cost every probe a loop pass more: this waits
        # only when it must.) A waiter cancelled after its turn came hands the turn on.
        turn = anyio.Event()
        self._turns.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if not turn.is_set():
                self._turns.remove(turn)
            elif self._turns:
                self._turns.popleft().set()
            raise

    async def _exchange(
        self, server, conn: _Connection, request: bytes, max_body: int, keep: bool
    ) -> Response:
        try:
            answer = await conn.exchange(request, max_body)
        except BaseException:
            conn.close()  # cancelled or failed half way: the stream is not reusable
            raise
        if keep and not conn.closed:
            self._put(server, conn)
        else:
            conn.close()
        return answer

    async def _connect(self, host: str, port: int, https: bool) -> _Connection:
        loop = asyncio.get_running_loop()
        if https and self._ssl is None:  # the system's CAs: tens of ms and a few MB, once
            self._ssl = ssl.create_default_context()
        context = self._ssl if https else None
        try:
            _, conn = await loop.create_connection(
                _Connection, host, port, ssl=context, server_hostname=host if https else None
            )
        except OSError as exc:
            raise ConnectError(host, port, _why(exc)) from exc
        self.opened += 1
        return conn

    def _take(self, server: tuple[str, str, int]) -> _Connection | None:
        kept, now = self._kept.get(server), self._now()
        while kept:
            conn = kept.pop()  # the most recently used: the likeliest still open
            if not conn.closed and now - conn.idle_since < self._keep_idle_s:
                return conn
            conn.close()
        return None

    def _put(self, server: tuple[str, str, int], conn: _Connection) -> None:
        now = self._now()
        conn.idle_since = now
        kept = self._kept.setdefault(server, deque())
        if len(kept) >= self._keep_per_server:
            conn.close()
        else:
            kept.append(conn)
        if now - self._swept >= self._keep_idle_s:  # a server no longer probed: let go
            self._swept = now
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        for server, kept in list(self._kept.items()):
            fresh = deque(
                c for c in kept if not c.closed and now - c.idle_since < self._keep_idle_s
            )
            for conn in kept:
                if conn not in fresh:
                    conn.close()
            if fresh:
                self._kept[server] = fresh
            else:
                del self._kept[server]

    @property
    def kept(self) -> int:
        """Open connections waiting for their next request."""
        return sum(1 for kept in self._kept.values() for c in kept if not c.closed)

    async def aclose(self) -> None:
        for kept in self._kept.values():
            for conn in kept:
                conn.close()
        self._kept.clear()


def _request_bytes(target: str, host: str, headers: Mapping[str, str], keep: bool) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", f"User-Agent: hroute/{__version__}"]
    lines.append("Accept: application/json")
    for name, value in headers.items():
        if any(c in name or c in value for c in _FORBIDDEN_IN_HEADERS) or ":" in name:
            raise RequestError(f"header {name!r}: a line break or NUL in its name or value")
        lines.append(f"{name}: {value}")
    if not keep:
        lines.append("Connection: close")
    try:
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise RequestError("a header holds a character HTTP cannot carry") from None


def _why(exc: OSError) -> str:
    """What went wrong in words (`connection refused`), never a header value."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc.strerror})"
    if isinstance(exc.errno, int) and exc.errno > 0:  # asyncio's own text names the address
        return os.strerror(exc.errno).lower()
    if exc.strerror:  # getaddrinfo's (negative errno): "name or service not known"
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__

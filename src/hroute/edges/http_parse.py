"""HTTP/1.1 requests from bytes: the socket's parser, sans I/O (RFC 9112).

`RequestParser` is fed the bytes a connection received and hands back, one at a time, what
they hold: a whole `Request`, `NEED_DATA` (the next request is not complete yet),
`CONTINUE` (the client waits for `100 Continue` before it sends the body) or a
`ParseError` (answer it, then close: the stream cannot be trusted past it). It does no
I/O, keeps no clock and never raises on what a client sends, so every case of RFC 9112 it
decides is a row of a table in tests/unit/test_http_parse.py.

It is the part of HTTP/1.1 the socket API needs, strictly: a request is framed by
`Content-Length` alone, so any doubt about where a body ends is an error, never a guess
(two different lengths, a length beside `Transfer-Encoding`, a length that is not plain
ASCII digits); a request smuggled behind another is impossible by construction. Decisions
the RFC leaves open:

- Line ends are CRLF. A bare LF or bare CR in a head is refused with 400 as soon as it
  arrives (a request ending in bare LFs would otherwise wait for a CRLF that never comes).
- Identical repeated `Content-Length` fields are taken as one; different ones are a 400.
- `Transfer-Encoding: chunked` is answered 411 (send `Content-Length`); any other transfer
  coding 501; either beside `Content-Length` 400.
- `Host` may be missing (a Unix socket has no virtual hosts); two `Host` fields are a 400.
- obs-fold (a header line starting with a space or tab) is refused with 400.
- The head (request line, fields and the empty line) is at most `max_head` bytes, however
  it arrives: one piece or a byte at a time (431 past it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

MAX_HEAD_BYTES = 16 * 1024
MAX_EMPTY_LINES = 4  # ignored before a request line (RFC 9112 §2.2); more are a bad request
MAX_LENGTH_DIGITS = 18  # a body this server takes is at most a few MB: more digits is garbage

# RFC 9110 §5.6.2 tchar: what a method and a field name are made of.
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# What a head may hold: CR and LF (checked to be pairs), HTAB, visible ASCII, space, obs-text.
_HEAD_BYTES = b"\r\n\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_TARGET_BYTES = bytes(range(0x21, 0x7F))


@dataclass(slots=True)
class Request:
    """One request, framed and checked; `path` is decoded and without its query."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    keep_alive: bool = True
    http10: bool = False  # an HTTP/1.0 client keeps the connection only if told so


@dataclass(frozen=True, slots=True)
class ParseError:
    """What to answer a request that cannot be served; the connection closes after it."""

    status: int
    code: str
    message: str


class _Signal:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Signal("NEED_DATA")
CONTINUE = _Signal("CONTINUE")

Event = Request | ParseError | _Signal


def _bad(message: str) -> ParseError:
    return ParseError(400, "bad_request", message)


class RequestParser:
    """Bytes in (`feed`), events out (`next_event`), one connection's requests in order."""

    __slots__ = (
        "max_body",
        "max_head",
        "_buf",
        "_checked",
        "_pending",
        "_continued",
        "_error",
        "_empty_lines",
    )

    def __init__(self, max_body: int, max_head: int = MAX_HEAD_BYTES) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self._buf = bytearray()
        self._checked = 0  # bytes of an unfinished head already searched and checked
        self._pending: tuple[Request, int, int, bool] | None = None  # head read, body not all
        self._continued = False
        self._error: ParseError | None = None
        self._empty_lines = 0  # before this request: a stream of them is no request

    def feed(self, data: bytes) -> None:
        """Add bytes the connection received (dropped after an error: nothing more is read)."""
        if self._error is None:
            self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed back as a request."""
        return len(self._buf)

    @property
    def in_request(self) -> bool:
        """Bytes of a request are here that were not handed back yet."""
        return bool(self._buf)

    def next_event(self) -> Event:
        """The next request, or what stands in its way. Never raises on input."""
        if self._error is not None:
            return self._error
        if self._pending is None:
            if not self._buf:
                return NEED_DATA
            head = self._read_head()
            if not isinstance(head, tuple):
                if isinstance(head, ParseError):
                    self._error = head
                    self._buf.clear()
                return head
            self._pending = head
            self._continued = False
        request, start, length, expects = self._pending
        if len(self._buf) < start + length:
            if expects and not self._continued:
                self._continued = True
                return CONTINUE
            return NEED_DATA
        if length:
            request.body = bytes(self._buf[start : start + length])
        del self._buf[: start + length]
        self._pending = None
        self._checked = self._empty_lines = 0
        return request

    # --- the head -----------------------------------------------------------------------

    def _read_head(self) -> tuple[Request, int, int, bool] | ParseError | _Signal:
        buf = self._buf
        if buf[:2] == b"\r\n":  # RFC 9112 §2.2: an empty line or two before a request
            skip = 0
            while buf.startswith(b"\r\n", skip) and self._empty_lines < MAX_EMPTY_LINES:
                skip += 2
                self._empty_lines += 1
            del buf[:skip]
            self._checked = 0
        end = buf.find(b"\r\n\r\n", max(0, self._checked - 3), self.max_head)
        if end < 0:
            return self._head_so_far()
        head = bytes(buf[:end])
        crlf = head.count(b"\r\n")
        if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
            return _bad("line ends must be CRLF (a bare LF or CR is not accepted)")
        if head.translate(None, _HEAD_BYTES):
            return _bad("control character in the request head")
        return self._parse_head(head, end + 4)

    def _head_so_far(self) -> ParseError | _Signal:
        buf = self._buf
        if len(buf) >= self.max_head:
            return ParseError(431, "bad_request", f"request head over {self.max_head} bytes")
        # Bare LFs are refused now: waiting for a CRLF that never comes would hold the
        # connection until its deadline.
        if buf.count(b"\n", self._checked) != buf.count(b"\r\n", max(0, self._checked - 1)):
            return _bad("line ends must be CRLF (a bare LF is not accepted)")
        self._checked = len(buf)
        return NEED_DATA

    def _parse_head(self, head: bytes, start: int) -> tuple[Request, int, int, bool] | ParseError:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            return _bad("the request line must be METHOD TARGET HTTP/1.1")
        method, target, version = parts
        if not method or method.translate(None, _TOKEN):
            return _bad("bad method in the request line")
        if version == b"HTTP/1.1":
            http10 = False
        elif version == b"HTTP/1.0":
            http10 = True
        elif _VERSION.fullmatch(version):
            if version[5:6] != b"1":
                return ParseError(505, "http_version", "only HTTP/1.x is served here")
            http10 = False  # a later 1.x speaks 1.1 at least
        else:
            return _bad("bad HTTP version in the request line")
        if not target or target.translate(None, _TARGET_BYTES):
            return _bad("bad request target")
        if target[:1] != b"/":
            # absolute-form (RFC 9112 §3.2.2) names the path after the authority
            scheme, sep, rest = target.partition(b"://")
            if not sep or scheme.lower() not in (b"http", b"https"):
                return _bad("the request target must be a path")
            target = b"/" + rest.partition(b"/")[2]

        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name.translate(None, _TOKEN):
                if line[:1] in (b" ", b"\t"):
                    return _bad("obs-fold (a header line starting with a space) is not accepted")
                return _bad("bad header line (want Name: value, no space before the colon)")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            if key in headers:
                if key == "content-length":
                    if headers[key] != text:
                        return _bad("two different Content-Length fields")
                    continue
                if key == "host":
                    return _bad("more than one Host field")
                text = f"{headers[key]}, {text}"
            headers[key] = text

        length = 0
        if "transfer-encoding" in headers:
            if "content-length" in headers:
                return _bad("Content-Length and Transfer-Encoding together")
            coding = headers["transfer-encoding"].rpartition(",")[2].strip().lower()
            if coding == "chunked":
                return ParseError(411, "length_required", "send the body with Content-Length")
            return ParseError(501, "not_implemented", "transfer codings are not supported")
        if "content-length" in headers:
            text = headers["content-length"]
            if not (text.isascii() and text.isdigit()):
                return _bad("Content-Length must be ASCII digits")
            if len(text) > MAX_LENGTH_DIGITS:
                return _bad(f"Content-Length over {MAX_LENGTH_DIGITS} digits")
            length = int(text)
            if length > self.max_body:
                return ParseError(413, "payload_too_large", f"body over {self.max_body} bytes")
        expects = False
        if "expect" in headers:
            if headers["expect"].lower() != "100-continue":
                return ParseError(417, "expectation_failed", "only 100-continue is understood")
            expects = not http10 and length > 0  # RFC 9110 §10.1.1: 1.0 clients never wait

        connection = headers.get("connection")
        if connection is None:
            keep_alive = not http10
        else:
            tokens = [t.strip() for t in connection.lower().split(",")]
            keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens

        path_text, _, query_text = target.decode("ascii").partition("?")
        path = unquote(path_text) if "%" in path_text else path_text
        query = _query(query_text) if query_text else {}
        request = Request(method.decode("ascii"), path, query, b"", headers, keep_alive, http10)
        return request, start, length, expects


def _query(text: str) -> dict[str, str]:
    """`a=1&b=x%20y` as a dict; the last of a repeated name wins (as dict(parse_qsl()))."""
    query = {}
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name = unquote(name.replace("+", " "))
            value = unquote(value.replace("+", " "))
        query[name] = value
    return query

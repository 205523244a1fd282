"""HTTP/1.1 answers from bytes: the probe client's parser, sans I/O (RFC 9112).

`ResponseParser` is fed what a connection received and hands back `NEED_DATA`, a whole
`Response`, or a `ProtocolError` (the connection cannot be trusted past it: close it).
`feed_eof()` says the server closed the connection. It does no I/O, keeps no clock and
never raises on what a server sends, so every case it decides is a row of a table in
tests/unit/test_response_parse.py.

A probe's answer comes from a backend hroute does not trust: a port that speaks SSH, a
15 MB model listing, ten thousand header lines, a chunk size of sixty hex digits. So the
head is at most `max_head` bytes, a body is kept up to `max_body` bytes (past that the
answer is complete, `truncated`, and the connection is not reused), and any doubt about
where a body ends is an error, never a guess. Decisions the RFC leaves to a client:

- A line end is CRLF or a bare LF (RFC 9112 §2.2 lets a recipient take LF).
- `1xx` answers before the final one are skipped; `101` is an error (nothing asked for it).
- `Transfer-Encoding` ending in `chunked` is chunked; any other transfer coding is read
  until the server closes; either beside `Content-Length` ignores the length (§6.3).
- Repeated `Content-Length` fields that agree are one; different ones are an error.
- A body without length or chunking is read until the server closes.
- Bytes after a complete answer (nothing asked for them) make the connection unusable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 1024  # a chunk-size line, extensions included
MAX_HEX_DIGITS = 16

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS_LINE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: [^\r\n]*)?")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_HEX = re.compile(rb"[0-9A-Fa-f]+")


@dataclass(slots=True)
class Response:
    """One answer, framed. `body` holds at most `max_body + 1` bytes: more than `max_body`
    means it was `truncated` there (the rest was never kept)."""

    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    keep_alive: bool
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """Why the bytes are not an answer; the connection is closed after it."""

    message: str


class _Signal:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _Signal()

Event = Response | ProtocolError | _Signal

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """Parse one answer to one request (make a new parser for the next request)."""

    def __init__(self, *, max_body: int, max_head: int = MAX_HEAD_BYTES) -> None:
        self._max_body, self._max_head = max_body, max_head
        self._buf = bytearray()
        self._state = _HEAD
        self._parts: list[bytes] = []
        self._kept = 0  # body bytes in _parts
        self._left = 0  # of the current length or chunk
        self._trailer_bytes = 0
        self._status, self._headers, self._keep_alive = 0, {}, False

    def feed(self, data: bytes) -> Event:
        """Take what arrived; the answer once it is complete."""
        if self._state == _DONE:
            return ProtocolError("data after the answer")
        self._buf += data
        try:
            return self._advance()
        except _Bad as bad:
            self._state = _DONE
            return ProtocolError(str(bad))

    def feed_eof(self) -> Response | ProtocolError:
        """The server closed the connection: the answer read until close is complete;
        any other answer not yet complete never will be."""
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE
            return self._response(keep_alive=False)
        if self._state == _HEAD and not self._buf:
            return ProtocolError("the server closed the connection without an answer")
        self._state = _DONE
        return ProtocolError("the server closed the connection before the answer was complete")

    def _advance(self) -> Event:
        while True:
            state = self._state
            if state == _HEAD:
                if not self._head():
                    return NEED_DATA
            elif state in (_LENGTH, _CHUNK_DATA):
                if not self._take_body():
                    return NEED_DATA
                if self._kept > self._max_body:
                    return self._finish(truncated=True)
                if self._state == _LENGTH:
                    return self._finish()
                self._state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                if not self._chunk_size():
                    return NEED_DATA
            elif state == _CHUNK_END:
                if not self._chunk_end():
                    return NEED_DATA
            elif state == _TRAILERS:
                if not self._trailers():
                    return NEED_DATA
                return self._finish()
            else:  # _UNTIL_CLOSE
                self._keep(bytes(self._buf))
                self._buf.clear()
                if self._kept > self._max_body:
                    return self._finish(truncated=True)
                return NEED_DATA

    def _head(self) -> bool:
        start = bytes(self._buf[:5])
        if not b"HTTP/".startswith(start):
            raise _Bad("the answer is not HTTP")
        end = _HEAD_END.search(self._buf)
        if end is None:
            if len(self._buf) > self._max_head:
                raise _Bad(f"the answer's head is over {self._max_head} bytes")
            return False
        if end.start() > self._max_head:
            raise _Bad(f"the answer's head is over {self._max_head} bytes")
        lines = bytes(self._buf[: end.start()]).split(b"\n")
        del self._buf[: end.end()]
        status_line = lines[0].rstrip(b"\r")
        m = _STATUS_LINE.fullmatch(status_line)
        if m is None:
            raise _Bad("malformed status line")
        version, status = (int(m[1]), int(m[2])), int(m[3])
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            line = raw.rstrip(b"\r")
            if line[:1] in (b" ", b"\t"):
                raise _Bad("folded header line")
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise _Bad("malformed header line")
            key = name.decode("ascii").lower()
            text = value.strip(b" \t").decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if 100 <= status < 200:
            if status == 101:
                raise _Bad("HTTP 101: the server switched protocols")
            return True  # an interim answer: the final one follows (still in _HEAD)
        self._status, self._headers = status, headers
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        self._keep_alive = version >= (1, 1) and "close" not in tokens
        self._frame(status, headers)
        return True

    def _frame(self, status: int, headers: dict[str, str]) -> None:
        if status in (204, 304):
            self._state, self._left = _LENGTH, 0
            return
        codings = [c.strip().lower() for c in headers.get("transfer-encoding", "").split(",")]
        if codings != [""]:
            self._state = _CHUNK_SIZE if codings[-1] == "chunked" else _UNTIL_CLOSE
            self._keep_alive = self._keep_alive and self._state == _CHUNK_SIZE
            return
        if "content-length" in headers:
            values = {v.strip() for v in headers["content-length"].split(",")}
            if len(values) != 1:
                raise _Bad("conflicting Content-Length fields")
            (value,) = values
            if not value.isascii() or not value.isdigit() or len(value) > MAX_HEX_DIGITS:
                raise _Bad("malformed Content-Length")
            self._state, self._left = _LENGTH, int(value)
            return
        self._state, self._keep_alive = _UNTIL_CLOSE, False

    def _take_body(self) -> bool:
        """Move body bytes of the current length or chunk out of the buffer; True once it
        is all here (or more than max_body is kept)."""
        n = min(self._left, len(self._buf))
        if n:
            self._keep(bytes(self._buf[:n]))
            del self._buf[:n]
            self._left -= n
        return self._left == 0 or self._kept > self._max_body

    def _keep(self, data: bytes) -> None:
        room = self._max_body + 1 - self._kept
        if room > 0 and data:
            piece = data[:room]
            self._parts.append(piece)
            self._kept += len(piece)
        elif data:
            self._kept += 1  # past the limit already: only "more" matters

    def _line(self, limit: int, what: str) -> bytes | None:
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > limit:
                raise _Bad(f"{what} is over {limit} bytes")
            return None
        line = bytes(self._buf[:end]).rstrip(b"\r")
        del self._buf[: end + 1]
        return line

    def _chunk_size(self) -> bool:
        line = self._line(MAX_CHUNK_LINE, "a chunk-size line")
        if line is None:
            return False
        size = line.split(b";", 1)[0].strip(b" \t")
        if not _HEX.fullmatch(size) or len(size) > MAX_HEX_DIGITS:
            raise _Bad("malformed chunk size")
        self._left = int(size, 16)
        self._state = _CHUNK_DATA if self._left else _TRAILERS
        return True

    def _chunk_end(self) -> bool:
        if self._buf[:2] == b"\r\n" or self._buf[:1] == b"\n":
            del self._buf[: 2 if self._buf[:1] == b"\r" else 1]
            self._state = _CHUNK_SIZE
            return True
        if len(self._buf) >= 2 or (self._buf and self._buf[:1] != b"\r"):
            raise _Bad("a chunk does not end where its size says")
        return False

    def _trailers(self) -> bool:
        while True:
            before = len(self._buf)
            line = self._line(self._max_head, "the trailer section")
            if line is None:
                return False
            self._trailer_bytes += before - len(self._buf)
            if self._trailer_bytes > self._max_head:
                raise _Bad(f"the trailer section is over {self._max_head} bytes")
            if not line:
                return True

    def _finish(self, *, truncated: bool = False) -> Response:
        # Bytes past the answer were never asked for: the stream is not to be trusted.
        keep_alive = self._keep_alive and not truncated and not self._buf
        self._state = _DONE
        return self._response(keep_alive=keep_alive, truncated=truncated)

    def _response(self, *, keep_alive: bool, truncated: bool = False) -> Response:
        truncated = truncated or self._kept > self._max_body
        return Response(self._status, self._headers, b"".join(self._parts), keep_alive, truncated)


class _Bad(Exception):
    pass

"""The probe client's HTTP/1.1 answer parser (`edges.response_parse`), case by case.

Each row is bytes a server might send and what the parser must make of them. Every row is
also fed one byte at a time: a server's answer arrives in whatever pieces TCP makes.
"""

from __future__ import annotations

import pytest

from hroute.edges.response_parse import NEED_DATA, ProtocolError, Response, ResponseParser

MAX_BODY = 64


def parse(data: bytes, *, eof: bool = False, pieces: int = 0, max_head: int = 4096):
    """Feed `data` whole (pieces=0) or one byte at a time; return the first final event."""
    parser = ResponseParser(max_body=MAX_BODY, max_head=max_head)
    chunks = [data] if not pieces else [data[i : i + 1] for i in range(len(data))]
    for chunk in chunks:
        event = parser.feed(chunk)
        if event is not NEED_DATA:
            return event
    return parser.feed_eof() if eof else NEED_DATA


OK = (200, b"ok", True)
# (bytes, server closes after them, expected (status, body, keep_alive) or an error's words)
ANSWERS = {
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False, OK),
    "bare LF line ends": (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", False, OK),
    "no reason phrase": (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", False, OK),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1;ext=1\r\nk\r\n0\r\n\r\n",
        False,
        OK,
    ),
    "chunked with trailers": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\nX: 1\r\n\r\n",
        False,
        OK,
    ),
    "chunked wins over a length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        False,
        OK,
    ),
    "agreeing repeated lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        False,
        OK,
    ),
    "interim 100 skipped": (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        False,
        OK,
    ),
    "204 has no body": (
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        False,
        (204, b"", True),
    ),
    "HTTP/1.0 closes": (
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        False,
        (200, b"ok", False),
    ),
    "Connection: close": (
        b"HTTP/1.1 503 Busy\r\nConnection: keep-alive, close\r\nContent-Length: 2\r\n\r\nok",
        False,
        (503, b"ok", False),
    ),
    "read until close": (b"HTTP/1.1 200 OK\r\n\r\nok", True, (200, b"ok", False)),
    "other coding until close": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        True,
        (200, b"ok", False),
    ),
    # What must never be taken for an answer.
    "SSH banner": (b"SSH-2.0-OpenSSH_9.6\r\n", False, "not HTTP"),
    "HTML without a head": (b"<html>", False, "not HTTP"),
    "status line with letters": (b"HTTP/1.1 2OO OK\r\n\r\n", False, "malformed status line"),
    "101 nobody asked for": (b"HTTP/1.1 101 Switching\r\n\r\n", False, "101"),
    "folded header": (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", False, "folded"),
    "header without colon": (b"HTTP/1.1 200 OK\r\nnonsense\r\n\r\n", False, "malformed header"),
    "space in a header name": (b"HTTP/1.1 200 OK\r\nX Y: 1\r\n\r\n", False, "malformed header"),
    "conflicting lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        False,
        "conflicting Content-Length",
    ),
    "negative length": (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", False, "Content-Length"),
    "huge length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        False,
        "Content-Length",
    ),
    "sixty hex digits": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 60 + b"\r\n",
        False,
        "chunk size",
    ),
    "chunk size not hex": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        False,
        "chunk size",
    ),
    "chunk longer than its size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nok\r\n0\r\n\r\n",
        False,
        "does not end where",
    ),
    "closed before the head": (b"", True, "without an answer"),
    "closed mid head": (b"HTTP/1.1 200 OK\r\nContent-", True, "before the answer was complete"),
    "closed mid body": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",
        True,
        "before the answer was complete",
    ),
    "closed mid chunks": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n",
        True,
        "before the answer was complete",
    ),
}


@pytest.mark.parametrize("pieces", [0, 1], ids=["whole", "byte by byte"])
@pytest.mark.parametrize("case", list(ANSWERS))
def test_answers(case: str, pieces: int) -> None:
    data, eof, want = ANSWERS[case]
    event = parse(data, eof=eof, pieces=pieces)
    if isinstance(want, str):
        assert isinstance(event, ProtocolError), event
        assert want in event.message
    else:
        assert isinstance(event, Response), event
        assert (event.status, event.body, event.keep_alive) == want
        assert not event.truncated


def test_headers_are_lower_case_and_repeats_joined() -> None:
    event = parse(
        b"HTTP/1.1 429 Too Many\r\nRetry-After:  7 \r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(event, Response)
    assert event.headers == {"retry-after": "7", "x-a": "1, 2", "content-length": "0"}


def test_not_complete_until_the_body_is() -> None:
    parser = ResponseParser(max_body=MAX_BODY)
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok") is NEED_DATA
    event = parser.feed(b"ok")
    assert isinstance(event, Response) and event.body == b"okok"


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
    ],
    ids=["length", "chunked", "until close"],
)
def test_a_long_body_is_cut_at_the_limit_and_the_connection_not_reused(head: bytes) -> None:
    # A 15 MB model listing once took the daemon's memory with it: only max_body + 1 kept.
    parser = ResponseParser(max_body=MAX_BODY)
    event = parser.feed(head)
    for _ in range(100):
        if event is not NEED_DATA:
            break
        event = parser.feed(b"x" * 10)
    assert isinstance(event, Response), event
    assert event.truncated and not event.keep_alive
    assert event.body == b"x" * (MAX_BODY + 1)


def test_a_head_that_never_ends_is_refused_at_the_limit() -> None:
    parser = ResponseParser(max_body=MAX_BODY, max_head=1024)
    assert parser.feed(b"HTTP/1.1 200 OK\r\n") is NEED_DATA
    event = NEED_DATA
    for _ in range(200):  # ten thousand header lines, slowly
        event = parser.feed(b"X-Junk: 1\r\n")
        if event is not NEED_DATA:
            break
    assert isinstance(event, ProtocolError) and "over 1024 bytes" in event.message


def test_endless_trailers_are_refused() -> None:
    parser = ResponseParser(max_body=MAX_BODY, max_head=1024)
    event = parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
    for _ in range(200):
        if event is not NEED_DATA:
            break
        event = parser.feed(b"X-Trailer: 1\r\n")
    assert isinstance(event, ProtocolError) and "trailer" in event.message


def test_bytes_after_the_answer_in_the_same_read_make_it_not_reusable() -> None:
    # (Arriving later, they reach a connection that asked nothing: it closes, probe_http.)
    event = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
    assert isinstance(event, Response)
    assert (event.status, event.body, event.keep_alive) == (200, b"ok", False)


def test_nothing_is_taken_after_an_error_or_an_answer() -> None:
    parser = ResponseParser(max_body=MAX_BODY)
    assert isinstance(parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), Response)
    assert isinstance(parser.feed(b"more"), ProtocolError)
    bad = ResponseParser(max_body=MAX_BODY)
    assert isinstance(bad.feed(b"SSH-2.0"), ProtocolError)
    assert isinstance(bad.feed(b"HTTP/1.1 200 OK\r\n\r\n"), ProtocolError)

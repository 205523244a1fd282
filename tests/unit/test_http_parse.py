"""The socket's request parser against RFC 9112, case by case: bytes in, events out."""

from __future__ import annotations

import random

import pytest

from hroute.edges.http_parse import (
    CONTINUE,
    MAX_HEAD_BYTES,
    NEED_DATA,
    ParseError,
    Request,
    RequestParser,
)

MAX_BODY = 64 * 1024


def events(data: bytes, *, pieces: int = 1) -> list[object]:
    """Every event `data` yields, fed in `pieces` parts, up to the first NEED_DATA or error."""
    parser = RequestParser(MAX_BODY)
    out: list[object] = []
    size = max(1, -(-len(data) // pieces))
    for i in range(0, len(data), size):
        parser.feed(data[i : i + size])
        while (event := parser.next_event()) is not NEED_DATA:
            out.append(event)
            if isinstance(event, ParseError):
                return out
    out.append(NEED_DATA)
    return out


def one(data: bytes) -> object:
    return events(data)[0]


def get(*headers: str, version: str = "HTTP/1.1", target: str = "/v1/version") -> bytes:
    lines = [f"GET {target} {version}", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# (case, request bytes, the status of the error, or None for a request)
CASES = [
    ("plain GET", get(), None),
    ("Content-Length: 0", get("Content-Length: 0"), None),
    ("superscript digit as a length", get("Content-Length: ²"), 400),
    ("5,001 digits of length", get("Content-Length: " + "9" * 5001), 400),
    ("negative length", get("Content-Length: -1"), 400),
    ("length with a sign", get("Content-Length: +1"), 400),
    ("length as a list", get("Content-Length: 0, 0"), 400),
    ("two different lengths", get("Content-Length: 0", "Content-Length: 5"), 400),
    ("two identical lengths", get("Content-Length: 0", "Content-Length: 0"), None),
    ("body over the limit", get(f"Content-Length: {MAX_BODY + 1}"), 413),
    ("chunked", get("Transfer-Encoding: chunked"), 411),
    ("gzip coding", get("Transfer-Encoding: gzip"), 501),
    ("chunked and a length", get("Transfer-Encoding: chunked", "Content-Length: 0"), 400),
    ("bare LF everywhere", b"GET /v1/version HTTP/1.1\nHost: x\n\n", 400),
    ("bare LF in one line", b"GET /v1/version HTTP/1.1\r\nHost: x\n\r\n", 400),
    ("bare CR", b"GET /v1/version HTTP/1.1\r\nHost: x\rY: z\r\n\r\n", 400),
    ("NUL in a value", get("X-A: a\x00b"), 400),
    ("obs-text in a value", get("X-A: caf\xe9"), None),
    ("obs-fold", get("X-A: a", " continued"), 400),
    ("space in a header name", get("X A: b"), 400),
    ("space before the colon", get("Host : x"), 400),
    ("no colon", get("Hostx"), 400),
    ("empty header name", get(": x"), 400),
    ("missing Host on 1.1", b"GET /v1/version HTTP/1.1\r\n\r\n", None),
    ("two Hosts", get("Host: y"), 400),
    ("two spaces in the request line", b"GET  /v1/version HTTP/1.1\r\n\r\n", 400),
    ("no version", b"GET /v1/version\r\n\r\n", 400),
    ("lower-case version", get(version="http/1.1"), 400),
    ("HTTP/2.0", get(version="HTTP/2.0"), 505),
    ("HTTP/1.x", get(version="HTTP/1.x"), 400),
    ("HTTP/1.2 is served as 1.1", get(version="HTTP/1.2"), None),
    ("bad method", b"G(T /v1/version HTTP/1.1\r\n\r\n", 400),
    ("tab in the target", b"GET /v1/\tversion HTTP/1.1\r\n\r\n", 400),
    ("raw UTF-8 in the target", "GET /v1/é HTTP/1.1\r\n\r\n".encode(), 400),
    ("target not a path", get(target="v1/version"), 400),
    ("absolute-form target", get(target="http://hroute/v1/version"), None),
    ("only CRLFs", b"\r\n" * 8, 400),
    ("Expect something else", get("Expect: teapot", "Content-Length: 1"), 417),
    ("head at the limit", None, None),
    ("head one byte past the limit", None, 431),
]


def _sized_head(size: int) -> bytes:
    fixed = len(get("X-Pad: "))
    return get("X-Pad: " + "a" * (size - fixed))


CASES[-2] = ("head at the limit", _sized_head(MAX_HEAD_BYTES), None)
CASES[-1] = ("head one byte past the limit", _sized_head(MAX_HEAD_BYTES + 1), 431)


@pytest.mark.parametrize(("data", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rfc_9112_cases(data: bytes, status: int | None) -> None:
    for pieces in (1, 3, len(data)):  # in one piece, in three, a byte at a time
        event = events(data, pieces=pieces)[0]
        if status is None:
            assert isinstance(event, Request), (pieces, event)
        else:
            assert isinstance(event, ParseError) and event.status == status, (pieces, event)


def test_a_17_kib_head_in_one_piece_is_431() -> None:
    event = one(get("X-Pad: " + "a" * 17 * 1024))
    assert isinstance(event, ParseError) and event.status == 431


def test_a_head_without_its_end_past_the_limit_is_431_at_once() -> None:
    event = one(b"GET /" + b"a" * MAX_HEAD_BYTES)
    assert isinstance(event, ParseError) and event.status == 431


def test_bare_lf_is_refused_before_the_head_ends() -> None:
    assert isinstance(one(b"GET /v1/version HTTP/1.1\nHo"), ParseError)
    assert one(b"GET /v1/version HTTP/1.1\r") is NEED_DATA  # its LF may come next


def test_two_different_lengths_never_swallow_the_next_request() -> None:
    smuggled = get("Content-Length: 0", "Content-Length: 27") + b"GET /v1/secret HTTP/1.1\r\n\r\n"
    out = events(smuggled)
    assert len(out) == 1 and isinstance(out[0], ParseError) and out[0].status == 400


def test_pipelined_requests_come_out_one_by_one_with_their_bodies() -> None:
    body = b'{"a": 1}'
    post = b"POST /v1/reports HTTP/1.1\r\nContent-Length: 8\r\n\r\n" + body
    out = events(get() + post + b"\r\n" + get("Connection: close"))
    assert [type(e) for e in out] == [Request, Request, Request, type(NEED_DATA)]
    first, second, third = out[:3]
    assert (first.path, second.body, third.keep_alive) == ("/v1/version", body, False)


def test_a_later_request_too_large_is_an_error_after_the_earlier_ones() -> None:
    big = b"POST /v1/reports HTTP/1.1\r\nContent-Length: 87000\r\n\r\n" + b"x" * 87000
    out = events(b"POST /v1/reload HTTP/1.1\r\nContent-Length: 0\r\n\r\n" + big)
    assert isinstance(out[0], Request) and out[0].path == "/v1/reload"
    assert isinstance(out[1], ParseError) and out[1].status == 413


def test_expect_100_continue_asks_for_the_body_once() -> None:
    parser = RequestParser(MAX_BODY)
    parser.feed(b"POST /v1/reports HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert parser.next_event() is CONTINUE
    assert parser.next_event() is NEED_DATA
    parser.feed(b"{}")
    request = parser.next_event()
    assert isinstance(request, Request) and request.body == b"{}"


def test_expect_100_continue_with_a_body_too_large_is_413_not_continue() -> None:
    event = one(get("Expect: 100-continue", f"Content-Length: {MAX_BODY + 1}"))
    assert isinstance(event, ParseError) and event.status == 413


def test_expect_on_http_1_0_is_ignored() -> None:
    data = get("Expect: 100-continue", "Content-Length: 2", version="HTTP/1.0") + b"{}"
    assert isinstance(one(data), Request)


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Keep-Alive, Close", False),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "keep-alive", True),
        ("HTTP/1.0", "Keep-Alive", True),
    ],
)
def test_keep_alive_by_version_and_connection(
    version: str, connection: str | None, keep_alive: bool
) -> None:
    headers = [] if connection is None else [f"Connection: {connection}"]
    request = one(get(*headers, version=version))
    assert isinstance(request, Request)
    assert (request.keep_alive, request.http10) == (keep_alive, version == "HTTP/1.0")


def test_query_and_path_are_decoded() -> None:
    request = one(get(target="/v1/backends/a%20b?backend=x&base_url=http%3A%2F%2Fh&m=a+b&e="))
    assert isinstance(request, Request)
    assert request.path == "/v1/backends/a b"
    assert request.query == {"backend": "x", "base_url": "http://h", "m": "a b", "e": ""}


def test_after_an_error_the_parser_answers_only_that_error() -> None:
    parser = RequestParser(MAX_BODY)
    parser.feed(get("Content-Length: ²"))
    first = parser.next_event()
    parser.feed(get())
    assert parser.next_event() == first and parser.buffered == 0


def test_no_bytes_make_it_raise() -> None:
    """Mutated requests, fed in random pieces: every answer is an event, never an exception."""
    rng = random.Random(9112)
    seeds = [c[1] for c in CASES if len(c[1]) < 400]
    alphabet = b"\r\n :\t0123456789\x00\xff\xb2-,GETPOST/HTTP1.Content-Length"
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.5 and at < len(data):
                del data[at]
            else:
                data[at:at] = bytes([rng.choice(alphabet)])
        parser = RequestParser(64, max_head=256)
        piece = rng.randint(1, 40)
        for i in range(0, len(data), piece):
            parser.feed(bytes(data[i : i + piece]))
            for _ in range(8):
                event = parser.next_event()
                assert isinstance(event, Request | ParseError) or event in (NEED_DATA, CONTINUE)
                if event is NEED_DATA or isinstance(event, ParseError):
                    break

"""One HTTP/1.1 exchange over the daemon's Unix socket, client side. Standard library only."""

from __future__ import annotations

import json
import socket
import time
from typing import Any


class _Closed(Exception):
    """The daemon closed a kept connection before answering."""


def _exchange(
    sock: socket.socket, wire: bytes, deadline: float, *, keep: bool
) -> tuple[tuple[int, Any], bool]:
    """Send one request and read one response; ((status, body), connection reusable)."""
    try:
        sock.settimeout(_left(deadline))
        sock.sendall(wire)
        buf = b""
        while b"\r\n\r\n" not in buf:
            sock.settimeout(_left(deadline))
            chunk = sock.recv(65536)
            if not chunk:
                raise _Closed if not buf else ValueError("connection closed mid-response")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status_line = lines[0].split()
        if len(status_line) < 2 or not status_line[1].isdigit():
            raise ValueError("not an HTTP response")
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        while (len(rest) < length) if length is not None else True:
            sock.settimeout(_left(deadline))
            chunk = sock.recv(65536)
            if not chunk:
                if length is None:
                    break
                raise ValueError("connection closed mid-body")
            rest += chunk
        reusable = keep and length is not None and not close
        if not reusable:
            sock.close()
        return (int(status_line[1]), json.loads(rest) if rest else None), reusable
    except BaseException:
        sock.close()
        raise


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("hroute did not answer within the budget")
    return left

"""How many clients the socket serves at once, and the file descriptors kept for the rest.

With systemd's default limit of 1,024 descriptors, 1,100 idle clients once left no
descriptor for probes and state saves: healthy backends were marked down ("too many open
files") and the log grew by megabytes. So the soft limit is raised to what the hard limit
allows, client connections are capped below it with RESERVED_FDS kept for probes, files
and the supervised servers, and a client that comes when the cap is reached closes the
oldest connection that is not in the middle of a request. The listen backlog asked for is
the one that applies: asyncio would otherwise call listen() again with aiohttp's 128.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from typing import Any

from aiohttp import web

log = logging.getLogger("hroute")

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 since Linux 5.4)
RESERVED_FDS = 128
MAX_CONNECTIONS = 4096
NOFILE_WANTED = 65_536
_BUSY_BODY = b'{"error":{"code":"busy","message":"too many client connections"}}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nRetry-After: 1\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode()
    + _BUSY_BODY
)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard one; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(fd_limit: int) -> int:
    """Client connections allowed with `fd_limit` descriptors, RESERVED_FDS kept back."""
    return max(16, min(MAX_CONNECTIONS, fd_limit - RESERVED_FDS))


class LimitedSockSite(web.SockSite):
    """aiohttp's SockSite with its own accept loop: it accepts only while a descriptor is
    free for the client (asyncio's accepts a whole backlog at once, before anyone can say
    no), and keeps the backlog it was asked for."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, max_connections: int) -> None:
        super().__init__(runner, sock, backlog=BACKLOG)
        self.max_connections = max_connections
        self.evicted = 0
        self._pending = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)
        self._loop = asyncio.get_running_loop()
        self._sock.listen(BACKLOG)
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    async def stop(self) -> None:
        if self._loop is not None and self._sock.fileno() != -1:
            self._loop.remove_reader(self._sock.fileno())
        await super().stop()
        self._sock.close()

    def _open(self) -> int:
        server = self._runner.server
        return self._pending + (0 if server is None else len(server.connections))

    def _on_readable(self) -> None:
        assert self._loop is not None
        for _ in range(64):  # then let the loop run other work
            if self._open() >= self.max_connections and not self._make_room():
                return  # evicted clients free their descriptors on the next turn
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("cannot accept a client: %s; pausing accepts for 0.1 s", exc)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(
                    0.1, self._loop.add_reader, self._sock.fileno(), self._on_readable
                )
                return
            conn.setblocking(False)
            self._pending += 1
            self._loop.create_task(self._serve(conn))

    def _make_room(self) -> bool:
        """Close the oldest idle client; False when every client is mid-request."""
        server = self._runner.server
        idle = next((h for h in (server.connections if server else ()) if not _busy(h)), None)
        if idle is None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return False
            with conn:
                conn.setblocking(False)
                with contextlib.suppress(OSError):
                    conn.send(BUSY)
            return False
        idle.force_close()
        self.evicted += 1
        return False

    async def _serve(self, conn: socket.socket) -> None:
        assert self._loop is not None and self._runner.server is not None
        try:
            await self._loop.connect_accepted_socket(self._runner.server, conn)
        except OSError:
            conn.close()
        finally:
            self._pending -= 1


def _busy(handler: Any) -> bool:
    return bool(getattr(handler, "_request_in_progress", False))

"""How many clients the socket serves at once, and the file descriptors kept for the rest.

With systemd's default limit of 1,024 descriptors, 1,100 idle clients once left no
descriptor for probes and state saves: healthy backends were marked down ("too many open
files") and the log grew by megabytes. So the soft limit is raised to what the hard limit
allows, client connections are capped below it with RESERVED_FDS kept for probes, files
and the supervised servers, and a client that comes when the cap is reached closes the
oldest connection whose handler is not running: idle, partial or with answers it does not
read (edges/http.py): 4,096 clients trickling a header byte every 3 s once held every place
and every legitimate request got 503. The listen backlog asked for is the one that
applies: asyncio would otherwise call listen() again with 100.

A request must be complete, head and body, within REQUEST_TIMEOUT_S of its first byte (408
after it); a connection with nothing to do is closed after IDLE_TIMEOUT_S, and one whose
answers wait unread then is aborted, so a client that never reads holds no memory.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("hroute")

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 since Linux 5.4)
RESERVED_FDS = 128
MAX_CONNECTIONS = 4096
NOFILE_WANTED = 65_536
REQUEST_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 64 * 1024  # a request body (413 past it)
WRITE_HIGH_WATER_BYTES = 64 * 1024  # answers queued for a client before it is no longer read


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

"""How many clients the socket serves at once, and the file descriptors kept for the rest.

With systemd's default limit of 1,024 descriptors, 1,100 idle clients once left no
descriptor for probes and state saves: healthy backends were marked down ("too many open
files") and the log grew by megabytes. So the soft limit is raised to what the hard limit
allows, client connections are capped below it with RESERVED_FDS kept for probes, files
and the supervised servers, and a client that comes when the cap is reached closes the
oldest connection that is not in the middle of a request (edges/http.py). The listen backlog
asked for is the one that applies: asyncio would otherwise call listen() again with 100.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("hroute")

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 since Linux 5.4)
RESERVED_FDS = 128
MAX_CONNECTIONS = 4096
NOFILE_WANTED = 65_536


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

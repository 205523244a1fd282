"""Hand memory the daemon no longer uses back to the system.

Parsing the configuration, the first round of probes, a reload or a fleet re-sync build many
short-lived objects; CPython frees them, but glibc keeps the freed heap for later and the
daemon's RSS stays at its high-water mark for months. `malloc_trim(0)` returns what is free
(about 0.5 MiB after start with 10 backends, more after a large reload). It costs about a
millisecond, so it runs once soon after start and then once a minute. Without glibc (musl)
it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

from hroute.core.clock import Clock

log = logging.getLogger("hroute")

FIRST_TRIM_S = 5.0  # after the first round of probes has come and gone
TRIM_EVERY_S = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


async def give_back_memory(clock: Clock, trim: Callable[[int], int] | None = None) -> None:
    """The daemon's task: trim the C heap soon after start, then every TRIM_EVERY_S."""
    trim = trim or _malloc_trim()
    if trim is None:
        log.debug("no malloc_trim here (not glibc): freed heap is kept by the C library")
        return
    await clock.sleep(FIRST_TRIM_S)
    while True:
        trim(0)
        await clock.sleep(TRIM_EVERY_S)

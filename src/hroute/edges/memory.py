"""The daemon's memory over months: freed heap handed back, start-up objects out of the GC's way.

- Parsing the configuration, the first round of probes, a reload or a fleet re-sync build
  many short-lived objects; CPython frees them, but glibc keeps the freed heap for later and
  the daemon's RSS stays at its high-water mark. `malloc_trim(0)` returns what is free (about
  0.5 MiB after start with 10 backends, more after a large reload). It costs under a
  millisecond, so it runs once soon after start and then once a minute. Without glibc (musl)
  it does nothing.
- A full collection of the cyclic GC walks every object: the modules, classes and functions
  of the daemon and its packages alone (50,000 objects) make that 13-18 ms, during which no
  agent is answered. Once start-up is over, what it built is moved out of the collector's
  sight (`gc.freeze()`, after one collection so that no garbage is frozen); a full
  collection then walks only what was made since. Objects frozen stay until the process
  ends if they ever become cyclic garbage: start-up's, once, bounded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

from hroute.core.clock import Clock

log = logging.getLogger("hroute")

FIRST_TRIM_S = 5.0  # start-up is over: the probe client is loaded, the first probes are done
TRIM_EVERY_S = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def freeze_start_up() -> None:
    """Collect once, then keep everything alive now out of every later collection."""
    gc.collect()
    gc.freeze()


async def give_back_memory(
    clock: Clock,
    trim: Callable[[int], int] | None = None,
    freeze: Callable[[], None] = freeze_start_up,
) -> None:
    """The daemon's task: soon after start, freeze what start-up built and trim the C heap;
    then trim every TRIM_EVERY_S."""
    trim = trim or _malloc_trim()
    await clock.sleep(FIRST_TRIM_S)
    freeze()
    if trim is None:
        log.debug("no malloc_trim here (not glibc): freed heap is kept by the C library")
        return
    while True:
        trim(0)
        await clock.sleep(TRIM_EVERY_S)

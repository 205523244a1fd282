"""Test-only hooks, off unless HROUTE_TEST_HOOKS=1. Never set that in production.

SIGUSR2 blocks the event loop with a plain `time.sleep()` for HROUTE_TEST_BLOCK_S seconds
(default 60): the wedged loop that systemd's watchdog must catch. The real-systemd test uses it
to check that a daemon which stops answering gets restarted.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping

import anyio

log = logging.getLogger("hroute")


async def serve_test_hooks(env: Mapping[str, str] | None = None) -> None:
    """Act on the test hooks' signals when HROUTE_TEST_HOOKS=1; else return at once."""
    env = os.environ if env is None else env
    if env.get("HROUTE_TEST_HOOKS") != "1":
        return
    block_s = float(env.get("HROUTE_TEST_BLOCK_S", "60"))
    log.warning("test hooks are on (HROUTE_TEST_HOOKS=1): SIGUSR2 blocks the event loop")
    with anyio.open_signal_receiver(signal.SIGUSR2) as signals:
        async for _ in signals:
            log.warning("test hook: blocking the event loop for %gs", block_s)
            time.sleep(block_s)  # deliberately blocking: this is the fault under test

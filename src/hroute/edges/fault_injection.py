"""Test-only hooks, off unless HROUTE_TEST_HOOKS=1. Never set that in production.

SIGUSR2 blocks the event loop with a plain `time.sleep()` for HROUTE_TEST_BLOCK_S seconds
(default 60): the wedged loop that systemd's watchdog must catch. The real-systemd test uses it
to check that a daemon which stops answering gets restarted.

HROUTE_TEST_IDLE_TIMEOUT_S and HROUTE_TEST_REQUEST_TIMEOUT_S shorten the socket's deadlines
(edges/limits.py), so the fault matrix sees a stalled client dropped in seconds.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Mapping

import anyio

log = logging.getLogger("hroute")


def socket_timeouts(env: Mapping[str, str] | None = None) -> dict[str, float]:
    """The socket's deadlines the test hooks set, by make_api's parameter names; else none."""
    env = os.environ if env is None else env
    if env.get("HROUTE_TEST_HOOKS") != "1":
        return {}
    names = {"idle_timeout_s": "HROUTE_TEST_IDLE_TIMEOUT_S"}
    names["request_timeout_s"] = "HROUTE_TEST_REQUEST_TIMEOUT_S"
    return {key: float(env[var]) for key, var in names.items() if var in env}


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

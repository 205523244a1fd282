"""The middle layer in-process: the API app, the prober, the files, reload, and the whole
daemon (`tests/support/inprocess.py`: `run_daemon` on a `ManualClock`, whose sleeps wait
for the test to advance it). Real sockets on loopback and real files in tmp_path; no daemon
subprocess. With tests/unit, this is the loop to run while coding (`make test-fast`)."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

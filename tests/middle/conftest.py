"""The middle layer in-process: the API app, the prober, the files, reload. Real sockets on
loopback and real files in tmp_path; no daemon subprocess."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

"""The fault matrix: one daemon per module where the cases can share it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon
from tests.support.faults import config, unprobed
from tests.support.procs import free_port


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with two unprobed backends and a profile, shared by a module's cases."""
    tmp = tmp_path_factory.mktemp("shared")
    text = config({"a": unprobed(free_port()), "b": unprobed(free_port())}, {"p": ["a", "b"]})
    with Daemon(tmp, text) as d:
        yield d

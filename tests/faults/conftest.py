"""The fault matrix: one daemon per module where the cases can share it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon
from tests.support.fault_users import User, create_user, remove_user, usable_for_others
from tests.support.faults import config, unprobed
from tests.support.procs import free_port


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with two unprobed backends and a profile, shared by a module's cases."""
    tmp = tmp_path_factory.mktemp("shared")
    text = config({"a": unprobed(free_port()), "b": unprobed(free_port())}, {"p": ["a", "b"]})
    with Daemon(tmp, text) as d:
        yield d


@pytest.fixture(scope="session")
def users() -> Iterator[tuple[User, User]]:
    """Two real unprivileged users, the victim and the other one; removed at the end."""
    if not usable_for_others():
        pytest.fail("the unprivileged-user cases need root and /usr/bin/python3")
    tag = f"{os.getpid() % 100000}"
    made = []
    try:
        made.append(create_user(f"hrf-victim-{tag}"))
        made.append(create_user(f"hrf-other-{tag}"))
        yield made[0], made[1]
    finally:
        for user in made:
            remove_user(user)

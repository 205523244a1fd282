"""The daemon hands freed heap back to the system (soon after start, then once a minute) and
takes what start-up built out of the cyclic GC's walks."""

from __future__ import annotations

import gc

import anyio
import pytest

from hroute.edges import memory
from hroute.edges.memory import give_back_memory
from tests.support.clock import ManualClock, settle

pytestmark = pytest.mark.anyio


async def test_the_heap_is_trimmed_after_start_then_every_minute() -> None:
    clock = ManualClock(start=0.0)
    trims: list[float] = []
    frozen: list[float] = []

    def trim(pad: int) -> int:
        assert pad == 0  # everything free, nothing kept
        trims.append(clock.now())
        return 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(give_back_memory, clock, trim, lambda: frozen.append(clock.now()))
        await settle()
        assert trims == [] and frozen == []  # not while the daemon starts
        await clock.advance(memory.FIRST_TRIM_S)
        await settle()
        for _ in range(3):
            await clock.advance(memory.TRIM_EVERY_S)
            await settle()
        tg.cancel_scope.cancel()
    first = memory.FIRST_TRIM_S
    assert trims == [first + i * memory.TRIM_EVERY_S for i in range(4)]
    assert frozen == [first]  # once


def test_what_start_up_built_is_no_longer_walked_by_a_full_collection() -> None:
    made = [[i] for i in range(1000)]  # start-up's objects, tracked by the GC
    try:
        memory.freeze_start_up()
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in tracked for o in made)
        assert gc.get_freeze_count() >= len(made)
    finally:
        gc.unfreeze()


def test_the_c_library_s_trim_is_found_and_returns_heap() -> None:
    trim = memory._malloc_trim()
    assert trim is not None  # glibc here: the daemon's task does trim
    assert trim(0) in (0, 1)

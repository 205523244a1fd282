"""The daemon hands freed heap back to the system: soon after start, then once a minute."""

from __future__ import annotations

import anyio
import pytest

from hroute.edges import memory
from hroute.edges.memory import give_back_memory
from tests.support.clock import ManualClock, settle

pytestmark = pytest.mark.anyio


async def test_the_heap_is_trimmed_after_start_then_every_minute() -> None:
    clock = ManualClock(start=0.0)
    trims: list[float] = []

    def trim(pad: int) -> int:
        assert pad == 0  # everything free, nothing kept
        trims.append(clock.now())
        return 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(give_back_memory, clock, trim)
        await settle()
        assert trims == []  # not while the daemon starts
        await clock.advance(memory.FIRST_TRIM_S)
        await settle()
        for _ in range(3):
            await clock.advance(memory.TRIM_EVERY_S)
            await settle()
        tg.cancel_scope.cancel()
    first = memory.FIRST_TRIM_S
    assert trims == [first + i * memory.TRIM_EVERY_S for i in range(4)]


def test_the_c_library_s_trim_is_found_and_returns_heap() -> None:
    trim = memory._malloc_trim()
    assert trim is not None  # glibc here: the daemon's task does trim
    assert trim(0) in (0, 1)

"""The manual clock the in-process daemon runs on, and the edges' waits driven by it."""

from __future__ import annotations

import anyio
import pytest

from hroute.edges.clock import RealClock, call_within, wait_until
from tests.support.clock import ManualClock, settle

pytestmark = pytest.mark.anyio


async def test_sleepers_wake_in_the_order_of_their_deadlines_each_at_its_time() -> None:
    clock = ManualClock(start=100.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        for name, seconds in (("c", 3.0), ("a", 1.0), ("b", 2.0)):
            tg.start_soon(sleeper, name, seconds)
        await settle()
        assert clock.sleepers == 3
        await clock.advance(1.5)
        assert woke == [("a", 101.0)]
        await clock.advance(10)
    assert woke == [("a", 101.0), ("b", 102.0), ("c", 103.0)]
    assert clock.now() == 111.5


async def test_a_loop_that_sleeps_again_is_woken_at_each_of_its_ticks() -> None:
    clock = ManualClock(start=0.0)
    ticks: list[float] = []

    async def loop() -> None:
        while True:
            await clock.sleep(1.0)
            ticks.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        await settle()
        await clock.advance(5.0)
        tg.cancel_scope.cancel()
    assert ticks == [1.0, 2.0, 3.0, 4.0, 5.0]


async def test_a_cancelled_sleeper_leaves_the_clock() -> None:
    clock = ManualClock()
    with anyio.move_on_after(0.01):
        await clock.sleep(60)
    assert clock.sleepers == 0


async def test_wall_time_moves_with_monotonic_time() -> None:
    clock = ManualClock(start=5.0, wall=1_700_000_000.0)
    await clock.advance(30)
    assert (clock.now(), clock.wall()) == (35.0, 1_700_000_030.0)


async def test_wait_until_gives_up_at_the_deadline_of_the_clock_it_was_given() -> None:
    clock = ManualClock(start=0.0)
    event = anyio.Event()
    result: list[bool] = []

    async def waiter() -> None:
        result.append(await wait_until(clock, event, deadline=10.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await settle()
        await clock.advance(9.9)
        assert result == []
        await clock.advance(0.1)
    assert result == [False]


async def test_wait_until_returns_as_soon_as_the_event_is_set() -> None:
    clock = ManualClock(start=0.0)
    event = anyio.Event()
    result: list[bool] = []

    async def waiter() -> None:
        result.append(await wait_until(clock, event, deadline=10.0))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await settle()
        event.set()
    assert result == [True] and clock.now() == 0.0 and clock.sleepers == 0


async def test_wait_until_on_the_real_clock_gives_up_at_its_deadline_or_returns_when_set() -> None:
    clock = RealClock()
    assert await wait_until(clock, anyio.Event(), deadline=clock.now()) is False  # passed
    event = anyio.Event()
    result: list[bool] = []

    async def waiter() -> None:
        result.append(await wait_until(clock, event, deadline=clock.now() + 3600))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await settle()
            assert result == []
            event.set()
    assert result == [True]


@pytest.mark.parametrize(("answer_after", "within", "got"), [(1.0, 2.0, "x"), (3.0, 2.0, None)])
async def test_call_within_answers_or_gives_up_on_the_clocks_time(answer_after, within, got):
    clock = ManualClock(start=0.0)
    result: list[object] = []

    async def slow() -> str:
        await clock.sleep(answer_after)
        return "x"

    async def caller() -> None:
        result.append(await call_within(clock, within, slow))

    async with anyio.create_task_group() as tg:
        tg.start_soon(caller)
        await settle()
        await clock.advance(5.0)
    assert result == [got]

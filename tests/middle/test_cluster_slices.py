"""The cluster link's re-sync work yields to the loop (issue 20: no socket request may wait
more than a few ms for a re-sync). A re-push brings every record back on the channel at
once; redis-py hands buffered messages over without suspending, so the listener itself must
yield between slices, or the whole burst runs before the socket is served again."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from hroute.config.cluster import ClusterSettings
from hroute.config.model import load_config
from hroute.core.registry import Registry
from hroute.edges.cluster import Cluster
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

CONFIG = """
backends:
  cloud: {kind: openai, base_url: "https://api.example.com/v1", model: m, tier: cloud,
          probe: {enabled: false}}
"""
BURST = 400


class TickingClock(FakeClock):
    """Each reading of the time moves it on by 1 ms, as work would."""

    def now(self) -> float:
        self.t += 0.001
        return self.t


class BufferedPubSub:
    """A burst of messages already received: handed over without suspending, as redis-py
    does for what is in its buffer; then nothing more, ever."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.handed = 0

    async def get_message(self, **_: Any) -> dict[str, Any] | None:
        if self.left == 0:
            await anyio.sleep_forever()
        self.left -= 1
        self.handed += 1
        # garbage: skipped (and warned about once), as cheap as a record gets
        return {"type": "message", "data": "hroute:cd:elsewhere\n60000\nnot a record"}


async def test_a_burst_on_the_channel_lets_other_tasks_run_between_slices() -> None:
    clock = TickingClock()
    registry = Registry(load_config(CONFIG), clock)
    link = Cluster(registry, clock, ClusterSettings(redis_url="redis://127.0.0.1:1"), "h1")
    pubsub = BufferedPubSub(BURST)
    seen_by_the_other_task: list[int] = []

    async def another_request() -> None:
        await anyio.lowlevel.checkpoint()
        seen_by_the_other_task.append(pubsub.handed)

    async with anyio.create_task_group() as tg:
        tg.start_soon(link._listen, pubsub, None)
        tg.start_soon(another_request)
        with anyio.fail_after(5):
            while pubsub.left:
                await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()

    assert seen_by_the_other_task, "the other task never ran"
    # It ran after a slice of the burst (SLICE_S of the clock: a few messages), not after
    # all of it.
    assert seen_by_the_other_task[0] <= BURST // 10, seen_by_the_other_task

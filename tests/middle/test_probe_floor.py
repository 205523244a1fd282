"""The prober's floor (issue 20): a backend is never probed more often than its interval,
whatever pokes ask (a failure report, a cooldown's end). The prober runs against a real aiohttp
server on loopback, on a virtual clock: its sleeps move time, nothing waits on the wall."""

from __future__ import annotations

import anyio
import pytest
from aiohttp import web

from hroute.config.model import load_config
from hroute.core.registry import Registry
from hroute.edges.prober import Prober

pytestmark = pytest.mark.anyio

INTERVAL_S = 2.0


class VirtualClock:
    """Time that moves only when somebody sleeps on it (one sleeper at a time here)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
        await anyio.sleep(0)


async def _backend(status: int, headers: dict[str, str]) -> tuple[web.AppRunner, int, list[int]]:
    hits: list[int] = []

    async def models(request: web.Request) -> web.Response:
        hits.append(1)
        body = {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}
        if status == 200:
            body = {"data": [{"id": "m"}]}  # type: ignore[dict-item]
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1], hits  # type: ignore[union-attr]


@pytest.mark.parametrize(("status", "headers"), [(200, {}), (503, {}), (429, {"Retry-After": "0"})])
async def test_pokes_never_bring_probes_closer_than_the_interval(status, headers) -> None:
    probed_at, hits = await _storm(status, headers, floor=True)
    gaps = [b - a for a, b in zip(probed_at, probed_at[1:], strict=False)]
    assert all(g >= INTERVAL_S - 1e-9 for g in gaps), gaps
    # The server saw the probes counted (and at most the one in flight at the end).
    assert len(probed_at) <= len(hits) <= len(probed_at) + 1


async def test_a_supervisor_polls_its_own_server_on_its_own_schedule() -> None:
    """A supervisor polling the readiness of a server it started is not held to the floor
    (its polls are bounded by its own growing schedule, against hroute's own child)."""
    probed_at, _ = await _storm(200, {}, floor=False)
    assert probed_at[-1] - probed_at[0] < INTERVAL_S


async def _storm(status: int, headers: dict[str, str], *, floor: bool) -> tuple[list, list]:
    runner, port, hits = await _backend(status, headers)
    config = load_config(
        f"""
backends:
  b: {{kind: openai, base_url: "http://127.0.0.1:{port}/v1", model: m,
      probe: {{interval_s: {INTERVAL_S}, jitter: 0, timeout_s: 1}}}}
"""
    )
    clock = VirtualClock()
    reg = Registry(config, clock)
    probed_at: list[float] = []
    done = anyio.Event()
    prober: Prober

    def storm(name: str, outcome: object) -> None:
        # Every probe is followed at once by a poke (a cooldown that ended at once, a
        # failure report): the storm of issue 20.
        probed_at.append(clock.now())
        prober.poke(name, floor=floor)
        if len(probed_at) >= 6:
            done.set()

    try:
        async with anyio.create_task_group() as tg:
            prober = Prober(reg, clock, on_outcome=storm)
            await tg.start(prober.run)
            with anyio.fail_after(20):  # real seconds: a bound on the test, not a measurement
                await done.wait()
            tg.cancel_scope.cancel()
    finally:
        await runner.cleanup()
    return probed_at, hits

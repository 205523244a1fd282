"""A budget day's spend shared through Redis: one hash per day, one field per host and backend.

Each host writes its own total (not an increment), so a send can be repeated after any
failure, and a Redis that lost its memory gets the day back from every host's next send.
Fields are untrusted: a value that is not a finite amount in 0..MAX_SPEND_USD is skipped
(1e9 would block a paid backend everywhere; two of 1e308 summed to inf and broke
`GET /v1/backends`), and only backends configured here are summed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hroute.core.registry import Registry
from hroute.core.shared_record import MAX_HOST_CHARS, valid_spend
from hroute.edges.redis_text import text

DAY_KEPT_S = 86_400  # a day's hash outlives the day by this (a relative TTL: no other clock)


async def send_spend(client: Any, registry: Registry, prefix: str, channel: str, host: str) -> None:
    """This host's total per backend for the budget day, and a message telling the others."""
    day = registry.router.day_window()
    own = registry.router.spend.own(day)
    if not own:
        return
    key = f"{prefix}spend:{day.label}"
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping={f"{host}\t{b}": repr(usd) for b, usd in own.items()})
    pipe.pexpire(key, int((day.ends_at - day.now + DAY_KEPT_S) * 1000))
    pipe.publish(channel, f"spend\n{day.label}\n{host}")
    await pipe.execute()


async def pull_spend(
    client: Any,
    registry: Registry,
    prefix: str,
    host: str,
    label: str,
    warn: Callable[[str, str], None],
) -> None:
    """What the other hosts spent in budget day `label`, summed per backend; `warn(key, why)`
    for each field that is not a spend record."""
    fields = await client.hgetall(f"{prefix}spend:{label}")
    others: dict[str, float] = {}
    configured = registry.config.backends
    for field, value in fields.items():
        who, _, backend = text(field).partition("\t")
        usd = valid_spend(value)
        if not backend or usd is None or len(who) > MAX_HOST_CHARS:
            warn(f"{prefix}spend:{label} {text(field)}", "not a spend record")
            continue
        if who != host and backend in configured:
            others[backend] = others.get(backend, 0.0) + usd  # each <= MAX_SPEND_USD: finite
    registry.take_shared_spend(label, others)

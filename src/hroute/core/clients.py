"""What agent plugins say about themselves: which of their guards work, how they are isolated.

The Hermes plugin attaches a `client` object to its reports when that changes and once a
minute. One entry per client (kind and process id), the most recent kept; `GET /v1/clients`
lists them and the `hroute_client_guards` / `hroute_clients` gauges (edges/metrics.py) count
the ones heard from lately. Every label value comes from a fixed vocabulary, never from client text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GUARDS = ("restore", "fallback", "auxiliary")
GUARD_STATES = ("on", "off", "failing")
ISOLATIONS = ("in_process", "host")
MAX_CLIENTS = 64
# A client not heard from for this long no longer counts in the gauges (it is still listed).
RECENT_S = 3600.0


@dataclass(frozen=True)
class ClientState:
    kind: str
    pid: int
    isolation: str
    guards: dict[str, str]
    version: str | None
    seen: float


class Clients:
    """The latest state of each client; bounded, the oldest-heard dropped first."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self._max = max_clients
        self._by_key: dict[tuple[str, int], ClientState] = {}

    def record(self, state: dict[str, Any], now: float) -> None:
        """Keep `state` (validated: kind, pid, isolation, guards, version?) as heard at `now`."""
        key = (state["kind"], state["pid"])
        self._by_key.pop(key, None)
        self._by_key[key] = ClientState(
            state["kind"],
            state["pid"],
            state["isolation"],
            {g: state["guards"].get(g, "off") for g in GUARDS},
            state.get("version"),
            now,
        )
        while len(self._by_key) > self._max:
            del self._by_key[next(iter(self._by_key))]

    def views(self, now: float) -> list[dict[str, Any]]:
        """Every known client, most recently heard first, with what of it is off."""
        out = []
        for c in sorted(self._by_key.values(), key=lambda c: -c.seen):
            off = [g for g in GUARDS if c.guards[g] != "on"]
            out.append(
                {
                    "kind": c.kind,
                    "pid": c.pid,
                    "version": c.version,
                    "isolation": c.isolation,
                    "guards": dict(c.guards),
                    "off": off,
                    "seen_s_ago": round(max(0.0, now - c.seen), 1),
                }
            )
        return out

    def recent(self, now: float) -> list[ClientState]:
        return [c for c in self._by_key.values() if now - c.seen <= RECENT_S]

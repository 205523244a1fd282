"""The event log and the one way to hear of the registry: topics and their subscribers.

Events are numbered, kept in a ring (`/v1/events` reads it) and told on the `event` topic
to the log, the journal and the metrics. Time comes from the injected clock (wall time:
events are shown to people).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from hroute.core.clock import Clock
from hroute.core.sanitize import clean

# Events go to the log, the journal, /v1/events and metrics: every string in one is made
# safe here, whatever its source. The operator's own config error may keep its lines.
FIELD_CHARS = {"detail": 2000}
_MULTILINE = {"config_rejected"}


class Topic(StrEnum):
    """What a subscriber hears, and with which arguments. Subscribers run on the event loop
    inside the change: they must not block (queue work, set an event, count)."""

    EVENT = "event"  # (record): every event (log, journal, metrics, the prober's pokes)
    CHANGED = "changed"  # (): an answer may have changed (snapshot, state file, notify)
    REPORTED = "reported"  # (name, transitions): a client's report changed something
    CLEARED = "cleared"  # (name, transition): a hold ended before its time
    SPENT = "spent"  # (name, usd, day): a cost was added (the cluster shares the day's)


class Subscribers:
    """Who listens to which topic; told in the order they subscribed."""

    def __init__(self) -> None:
        self._by_topic: dict[Topic, list[Callable[..., None]]] = {t: [] for t in Topic}

    def subscribe(self, topic: Topic, fn: Callable[..., None]) -> None:
        self._by_topic[topic].append(fn)

    def tell(self, topic: Topic, *args: Any) -> None:
        for fn in self._by_topic[topic]:
            fn(*args)


class EventLog:
    """A bounded ring of events; the registry owns one."""

    def __init__(self, clock: Clock, kept: int = 1000) -> None:
        self._clock = clock
        self._ring: deque[dict[str, Any]] = deque(maxlen=kept)
        self._ids = itertools.count(1)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record an event and return it; fields that are None or "" are left out."""
        record = {"id": next(self._ids), "ts": round(self._clock.wall(), 3), "event": event}
        keep_lines = event in _MULTILINE
        for key, value in fields.items():
            if value is None or value == "":
                continue
            if isinstance(value, str):
                value = clean(value, FIELD_CHARS.get(key, 300), keep_lines=keep_lines)
            record[key] = value
        self._ring.append(record)
        return record

    def since(self, event_id: int = 0) -> list[dict[str, Any]]:
        """Events newer than `event_id`, oldest first."""
        return [e for e in self._ring if e["id"] > event_id]

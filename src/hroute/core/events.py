"""The event log: what happened, numbered, kept in a ring and handed to every sink.

Sinks are the log, the journal and the metrics; `/v1/events` reads the ring. Time comes from
the injected clock (wall time: events are shown to people).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from hroute.core.clock import Clock
from hroute.core.sanitize import clean

# Events go to the log, the journal, /v1/events and metrics: every string in one is made
# safe here, whatever its source. The operator's own config error may keep its lines.
FIELD_CHARS = {"detail": 2000}
_MULTILINE = {"config_rejected"}

EventSink = Callable[[dict[str, Any]], None]


class EventLog:
    """A bounded ring of events; the registry owns one."""

    def __init__(self, clock: Clock, kept: int = 1000) -> None:
        self._clock = clock
        self._ring: deque[dict[str, Any]] = deque(maxlen=kept)
        self._ids = itertools.count(1)
        self._sinks: list[EventSink] = []

    def add_sink(self, sink: EventSink) -> None:
        """Call `sink(event)` for every event."""
        self._sinks.append(sink)

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record an event and hand it to every sink; fields that are None or "" are left out."""
        record = {"id": next(self._ids), "ts": round(self._clock.wall(), 3), "event": event}
        keep_lines = event in _MULTILINE
        for key, value in fields.items():
            if value is None or value == "":
                continue
            if isinstance(value, str):
                value = clean(value, FIELD_CHARS.get(key, 300), keep_lines=keep_lines)
            record[key] = value
        self._ring.append(record)
        for sink in self._sinks:
            sink(record)
        return record

    def since(self, event_id: int = 0) -> list[dict[str, Any]]:
        """Events newer than `event_id`, oldest first."""
        return [e for e in self._ring if e["id"] > event_id]

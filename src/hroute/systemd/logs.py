"""How hroute tells its story: one readable line per event on stderr."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from hroute.core.sanitize import clean
from hroute.systemd.journal import JournalHandler, stderr_is_journal

log = logging.getLogger("hroute")
EVENT_LINE_CHARS = 2000  # an event's detail is already cut to 300; names add to it

_LEVELS = {
    "backend_down": logging.WARNING,
    "auth_blocked": logging.ERROR,
    "cooldown": logging.WARNING,
    "fallback": logging.WARNING,
    "escalation": logging.WARNING,
    "fatal": logging.ERROR,
    "config_rejected": logging.ERROR,
    "restart": logging.WARNING,  # a manual one is INFO (log_event)
    "cluster_disconnected": logging.WARNING,
}


def setup_logging(level: str = "info") -> None:
    """Plain lines on stderr; systemd's journal adds its own timestamps and unit name.

    When stderr is systemd's journal stream, entries go to journald natively instead, with
    their fields (HROUTE_EVENT, HROUTE_BACKEND …) and a MESSAGE_ID per event type.
    """
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if stderr_is_journal():
        handler = JournalHandler(fallback=handler)
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RepeatFilter(logging.Filter):
    """At most `burst` warnings of one kind (logger and format string) per `window_s`, and
    one identical event warning per `event_window_s`.

    An error that repeats on every accept or every probe (no descriptors left, a disk
    full) once wrote 10 MB of log in 15 s, and a loop of cooldowns that ended at once
    logged the same WARNING line thousands of times. The rest of a window's lines are
    counted, and the next line of that kind says how many were left out. Events are
    already one per change, so only an identical warning (same backend, reason, detail) is
    held back: a new condition is always told at once, and INFO lines are never held.
    """

    def __init__(
        self,
        burst: int = 10,
        window_s: float = 10.0,
        event_window_s: float = 60.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst, self.window_s, self.event_window_s = burst, window_s, event_window_s
        self._now = now
        self._seen: dict[tuple[str, str], list[float]] = {}  # key -> [window start, n, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # info lines are not errors (nor warnings: a connection is back)
        if hasattr(record, "hroute_event"):
            key, burst, window_s = ("event", record.getMessage()), 1, self.event_window_s
        else:
            key, burst, window_s = (record.name, str(record.msg)), self.burst, self.window_s
        now = self._now()
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= window_s:
            dropped = 0 if seen is None else int(seen[2])
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} ({dropped} more like this left out)"
            return True
        seen[1] += 1
        if seen[1] > burst:
            seen[2] += 1
            return False
        return True


def describe(event: dict[str, Any]) -> str:
    """One line for an event, e.g. `llama-local: healthy -> unhealthy (connection: refused)`.

    Escaped (sanitize.clean): an event carries names and text from outside (a Redis record's
    host, a task id, a report), and this line goes to terminals and logs as it is.
    """
    return clean(_describe(event), EVENT_LINE_CHARS)


def _describe(event: dict[str, Any]) -> str:
    kind = event["event"]
    name = _whom(event)
    reason = event.get("reason")
    detail = f": {event['detail']}" if event.get("detail") else ""
    cred = f" for credential {event['credential']}" if event.get("credential") else ""
    if kind == "cooldown":
        secs = event.get("cooldown_s")
        if secs is not None:
            span = f"for {secs:g}s"
        elif reason == "model_not_found":
            span = "until a probe finds it"
        else:
            span = "until the key changes"
        seen = f", seen by {event['seen_by']}" if event.get("seen_by") else ""
        return f"{name}: cooling down {span}{cred} ({reason}{seen}{detail})"
    if kind.startswith(("process_", "unit_")) or kind in ("restart", "fatal"):
        return f"{name}: {event.get('detail') or kind}"
    if kind in ("cluster_connected", "cluster_disconnected"):
        return f"cluster: {event.get('detail') or kind}"
    if kind == "cooldown_end":
        return f"{name}: cooldown over ({reason})"
    if kind == "cooldown_cleared":
        why = "a success with that key" if event.get("credential") else "healthy again"
        seen = f", seen by {event['seen_by']}" if event.get("seen_by") else ""
        incident = f"incident {event.get('incident')}"
        return f"{name}: cooldown lifted{cred}: {why} ({reason}{seen}, {incident})"
    if kind == "config_reloaded":
        return f"{event.get('detail') or 'reloaded'} ({reason})"
    if kind == "config_rejected":
        return (
            f"config rejected, still running the previous one ({reason}): {event.get('detail', '')}"
        )
    if kind == "escalation":
        return (
            f"task {event.get('task')} (profile {event.get('profile')}): skipping the local "
            f"tier, routed to {name} ({reason}{detail})"
        )
    if kind == "task_failure":
        return f"task {event.get('task')}: failed ({reason}{detail})"
    if kind == "fallback":
        return (
            f"profile {event.get('profile')}: {event.get('old')} -> {event.get('new')} ({reason})"
        )
    if kind == "auth_blocked":
        return f"{name}: rejected hroute's key ({reason}{detail}); unusable until the key or config changes"
    if "old" in event and "new" in event:
        if reason is None and event.get("detail") in (None, "", "ok"):
            why = ""  # up is up: "(None: ok)" says nothing
        elif reason is None:
            why = f" ({event['detail']})"
        else:
            why = f" ({reason}{detail})"
        if event["old"] == event["new"]:  # a new reason for the same state
            return f"{name}: still {event['new']}, now{why}"
        return f"{name}: {event['old']} -> {event['new']}{why}"
    extra = f" ({reason}{detail})" if reason or detail else ""
    return f"{name}: {kind}{extra}"


def _whom(event: dict[str, Any]) -> str:
    """Who a change holds: `ollama (qwen, llama3, or-a)`, `ollama model llama3:8b (llama3)`,
    or just the backend's name when it is the only one there."""
    name = event.get("backend", "-")
    held = event.get("held") or []
    scope, model = event.get("scope"), event.get("model")
    if not held or (held == [name] and scope in (None, "server")):
        return name
    server = event.get("server") or name
    part = f" model {model}" if model and scope in ("model", "key") else ""
    return f"{server}{part} ({', '.join(held)})"


def log_event(event: dict[str, Any]) -> None:
    """The registry's log sink."""
    level = _LEVELS.get(event["event"], logging.INFO)
    if event.get("reason") == "manual":
        level = logging.INFO
    log.log(level, describe(event), extra={"hroute_event": event})

"""How hroute tells its story: one readable line per event on stderr."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("hroute")

_LEVELS = {
    "backend_down": logging.WARNING,
    "auth_blocked": logging.ERROR,
    "cooldown": logging.WARNING,
    "fallback": logging.WARNING,
    "fatal": logging.ERROR,
    "config_rejected": logging.ERROR,
}


def setup_logging(level: str = "info") -> None:
    """Plain lines on stderr; systemd's journal adds its own timestamps and unit name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def describe(event: dict[str, Any]) -> str:
    """One line for an event, e.g. `llama-local: healthy -> unhealthy (connection: refused)`."""
    kind = event["event"]
    name = event.get("backend", "-")
    reason = event.get("reason")
    detail = f": {event['detail']}" if event.get("detail") else ""
    cred = f" for credential {event['credential']}" if event.get("credential") else ""
    if kind == "cooldown":
        secs = event.get("cooldown_s")
        span = "until the key changes" if secs is None else f"for {secs:g}s"
        return f"{name}: cooling down {span}{cred} ({reason}{detail})"
    if kind == "cooldown_end":
        return f"{name}: cooldown over ({reason})"
    if kind == "fallback":
        return (
            f"profile {event.get('profile')}: {event.get('old')} -> {event.get('new')} ({reason})"
        )
    if kind == "auth_blocked":
        return f"{name}: rejected hroute's key ({reason}{detail}); unusable until the key or config changes"
    if "old" in event and "new" in event:
        why = f" ({reason}{detail})" if reason or detail else ""
        return f"{name}: {event['old']} -> {event['new']}{why}"
    extra = f" ({reason}{detail})" if reason or detail else ""
    return f"{name}: {kind}{extra}"


def log_event(event: dict[str, Any]) -> None:
    """The registry's log sink."""
    log.log(_LEVELS.get(event["event"], logging.INFO), describe(event))

"""`hroute status --watch` (`hroute top`): the status table refreshed in place, events below.

On a terminal each frame replaces the previous one (ANSI home + clear) and states are
coloured; piped, frames are plain text blocks one after another, so `| tee` or a log keeps
them readable. A daemon that goes away is shown as such and the view keeps trying.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from hroute.client import Client
from hroute.systemd.logs import describe

CLEAR = "\x1b[H\x1b[2J"
EVENTS_SHOWN = 8
_COLOURS = {"green": "32", "red": "31", "yellow": "33", "dim": "2", "bold": "1"}
_STATE_COLOUR = {"healthy": "green", "unhealthy": "red", "starting": "yellow", "unknown": "dim"}
_EVENT_COLOUR = {
    "backend_down": "red",
    "fatal": "red",
    "auth_blocked": "red",
    "cooldown": "yellow",
    "fallback": "yellow",
    "restart": "yellow",
    "escalation": "yellow",
    "backend_up": "green",
    "process_ready": "green",
    "cooldown_end": "green",
    "cooldown_cleared": "green",
}


def paint(text: str, colour: str | None, enabled: bool) -> str:
    """`text` in an ANSI colour when `enabled` (a terminal), else unchanged."""
    if not enabled or not colour:
        return text
    return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"


def status_rows(backends: list[dict[str, Any]]) -> list[tuple[tuple[str, str | None], ...]]:
    """One row per backend: (text, colour) cells, a header first."""
    header = tuple(
        (h, "bold") for h in ("BACKEND", "KIND", "STATE", "USABLE", "REASON", "COOLDOWN", "LATENCY")
    )
    rows = [header]
    for b in backends:
        proc = b.get("process")
        state = b["state"] + (f" ({proc['state']})" if proc else "")
        colour = "red" if proc and proc["state"] == "fatal" else _STATE_COLOUR.get(b["state"])
        cooldown = b["cooldown_remaining_s"]
        rows.append(
            (
                (b["name"], None),
                (b["kind"], None),
                (state, colour),
                ("yes", "green") if b["usable"] else ("no", "red"),
                (b["reason"] or b.get("note") or "-", None),
                (f"{cooldown:.0f}s" if cooldown else "-", "yellow" if cooldown else None),
                (f"{b['latency_ms']:.1f}ms" if b["latency_ms"] is not None else "-", None),
            )
        )
    return rows


def render(
    backends: list[dict[str, Any]] | None,
    events: list[dict[str, Any]],
    *,
    colour: bool,
    now: float,
    problem: str | None = None,
) -> str:
    """One frame: a heading, the table (or why there is none), the latest events."""
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    lines = [paint(f"hroute status  {stamp}", "bold", colour)]
    if backends is None:
        lines.append(paint(f"cannot reach the daemon: {problem}", "red", colour))
    else:
        rows = status_rows(backends)
        widths = [max(len(r[i][0]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [
                paint(text.ljust(w) if i < len(row) - 1 else text, c, colour)
                for i, ((text, c), w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        spend = [(b["name"], b["spent_today_usd"]) for b in backends if "spent_today_usd" in b]
        if spend:
            lines.append("spent today: " + ", ".join(f"{n} ${usd:.2f}" for n, usd in spend))
    lines.append("")
    lines.append(paint("latest events", "bold", colour))
    if not events:
        lines.append("  (none yet)")
    for e in events[-EVENTS_SHOWN:]:
        at = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
        text = f"  {at} {e['event']:<14} {describe(e)}"
        lines.append(paint(text, _EVENT_COLOUR.get(e["event"]), colour))
    return "\n".join(lines) + "\n"


def fetch(client: Client) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]], str | None]:
    """The backends and recent events, or None and why the daemon did not answer."""
    try:
        status, body = client.request("GET", "/v1/backends")
        if status != 200:
            return None, [], f"HTTP {status}"
        _, ev = client.request("GET", "/v1/events")
    except (OSError, TimeoutError, ValueError) as exc:
        return None, [], f"{client.socket_path}: {exc}"
    return body["backends"], ev.get("events", []) if isinstance(ev, dict) else [], None


def watch(
    client: Client,
    *,
    interval_s: float = 1.0,
    count: int | None = None,
    out: TextIO = sys.stdout,
    colour: bool | None = None,
    as_json: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Redraw every `interval_s` until interrupted or `count` frames; exit status 0."""
    try:
        return _loop(client, interval_s, count, out, colour, as_json, sleep)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a live view ends


def _loop(
    client: Client,
    interval_s: float,
    count: int | None,
    out: TextIO,
    colour: bool | None,
    as_json: bool,
    sleep: Callable[[float], None],
) -> int:
    tty = out.isatty() if colour is None else colour
    shown = 0
    while count is None or shown < count:
        backends, events, problem = fetch(client)
        if as_json:
            out.write(json.dumps({"backends": backends, "events": events[-EVENTS_SHOWN:]}) + "\n")
        else:
            frame = render(backends, events, colour=tty, now=time.time(), problem=problem)
            out.write((CLEAR + frame) if tty else (frame + "\n"))
        out.flush()
        shown += 1
        if count is None or shown < count:
            sleep(interval_s)
    return 0

"""`hroute status`: the table of backends, today's spend, and agent plugins with a guard off."""

from __future__ import annotations

from typing import Any

from hroute.core.gpu import gpu_lines
from hroute.core.sanitize import clean

LINE_CHARS = 2000


def status_lines(backends: dict[str, Any], clients: Any = None) -> list[str]:
    """The lines `hroute status` prints for `GET /v1/backends` (and `GET /v1/clients`)."""
    rows = [("BACKEND", "KIND", "STATE", "USABLE", "HELD BY", "COOLDOWN", "LATENCY")]
    for b in backends["backends"]:
        cooldown = b["cooldown_remaining_s"]
        held = b.get("blocked_by")  # which scope holds it: its server, its model, a key
        rows.append(
            (
                b["name"],
                b["kind"],
                b["state"] + (f" ({b['process']['state']})" if b.get("process") else ""),
                "yes" if b["usable"] else "no",
                f"{held['scope']}: {b['reason']}" if held else b.get("note") or "-",
                f"{cooldown:.0f}s" if cooldown else "-",
                f"{b['latency_ms']:.1f}ms" if b["latency_ms"] is not None else "-",
            )
        )
    out = table(rows)
    table_lines = len(out)
    if backends.get("cluster"):  # cooldowns shared with other hosts through Redis
        out.append(cluster_line(backends["cluster"]))
    spend = [
        (b["name"], b["spent_today_usd"]) for b in backends["backends"] if "spent_today_usd" in b
    ]
    if spend:
        out.append("spent today: " + ", ".join(f"{n} ${usd:.2f}" for n, usd in spend))
    out.extend(gpu_lines(backends.get("gpus") or []))
    for c in clients.get("clients", []) if isinstance(clients, dict) else []:
        if c["off"] or c["isolation"] != "in_process":
            guards = ", ".join(f"{g} {c['guards'][g]}" for g in c["off"])
            out.append(
                f"{c['kind']} {c.get('version') or '?'} (pid {c['pid']}, "
                f"{c['seen_s_ago']:.0f}s ago): isolation {c['isolation']}; {guards}"
            )
    # A plugin's version, a Redis host, a name: text from outside never reaches the terminal raw.
    return out[:table_lines] + [clean(line, LINE_CHARS) for line in out[table_lines:]]


def cluster_line(cluster: dict[str, Any]) -> str:
    """One line for the link to the fleet's Redis (`hroute status`)."""
    where = f"{cluster['redis_url']} as {cluster['host']}"
    if cluster["connected"]:
        return f"cluster: connected to {where}"
    return f"cluster: DISCONNECTED from {where} ({cluster.get('error')}); using this host's state"


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as left-aligned columns, every cell escaped (sanitize.clean)."""
    rows = [tuple(clean(c, LINE_CHARS) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]

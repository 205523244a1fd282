"""The command-line side of the tools: `doctor`, `demo`, `top` and `status --watch`.

`hroute.cli` hands its subparsers here and dispatches to these handlers, so adding a tool
touches the CLI in two or three lines. Imports stay inside the handlers: `hroute --help`
must not pay for them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_watch_options(p: argparse.ArgumentParser, implied: bool = False) -> None:
    """--watch (unless the command always watches), --interval, --count."""
    if not implied:
        p.add_argument("--watch", "-w", action="store_true", help="refresh in place, events below")
    else:
        p.add_argument("--json", action="store_true", help="one JSON line per refresh")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--count", type=int, metavar="N", help="stop after N refreshes")


def add_tool_commands(sub: Any) -> None:
    """Register `top`, `doctor` and `demo` with the CLI's subparsers."""
    p = sub.add_parser("top", help="the status table refreshed in place (status --watch)")
    add_watch_options(p, implied=True)

    p = sub.add_parser(
        "doctor", help="check the setup as this user: config, socket, Hermes, backends"
    )
    p.add_argument("--config", "-c", help="YAML configuration file")
    p.add_argument("--hermes-home", help="Hermes' home (default: $HERMES_HOME or ~/.hermes)")
    p.add_argument("--hermes-python", help="the Python that runs hermes (default: its #! line)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "demo", help="a minute of crash, hang, fallback, cooldown and recovery (no root needed)"
    )
    p.add_argument("--duration", type=float, default=60.0, metavar="SECONDS")


def watching(args: argparse.Namespace) -> bool:
    """Does this `status`/`top` command line ask for the live view?"""
    return args.command == "top" or bool(getattr(args, "watch", False))


def cmd_watch(args: argparse.Namespace, client: Any) -> int:
    from hroute.tools.watch import watch

    return watch(client, interval_s=args.interval, count=args.count, as_json=args.json)


def cmd_doctor(args: argparse.Namespace, config_path: Path) -> int:
    from hroute.tools.doctor import doctor

    return doctor(
        config_path,
        Path(args.socket) if args.socket else None,
        hermes_home=args.hermes_home,
        hermes_python=args.hermes_python,
        as_json=args.json,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from hroute.tools.demo import run_demo

    return run_demo(max(args.duration, 10.0))

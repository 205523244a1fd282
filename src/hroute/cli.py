"""The `hroute` command: run the daemon, ask it questions, check a config."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from hroute import __version__
from hroute.core.escalation import TASK_REASONS
from hroute.core.sanitize import clean
from hroute.tools.commands import (
    add_tool_commands,
    add_watch_options,
    cmd_demo,
    cmd_doctor,
    cmd_watch,
    watching,
)
from hroute.tools.status import status_lines

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NONE_USABLE = 0, 1, 2, 3, 4
DEFAULT_CONFIG = "/etc/hroute/hroute.yaml"
CLI_BUDGET_S = 5.0

EPILOG = """\
exit codes:
  0  success (check-config: the file is valid)
  1  failure: invalid configuration, or the daemon answered with an error
  2  bad command-line usage
  3  cannot reach the daemon (is it running? is --socket right?)
  4  route: no backend of the profile is usable now; usable: the backend is not usable now

The socket is --socket, else $HROUTE_SOCKET, else $RUNTIME_DIRECTORY/hroute.sock,
else /run/hroute/hroute.sock as root, else $XDG_RUNTIME_DIR/hroute/hroute.sock.
The configuration is --config, else $HROUTE_CONFIG, else /etc/hroute/hroute.yaml.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hroute",
        description="Backend-health and failover daemon for local-first LLM agents.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hroute {__version__}")
    parser.add_argument("--socket", help="the daemon's Unix socket (see below)")
    sub = _Commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))

    p = sub.add_parser("run", help="run the daemon in the foreground (logs to stderr)")
    p.add_argument("--config", "-c", help="YAML configuration file")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    p = sub.add_parser("check-config", help="validate a configuration file, like nginx -t")
    p.add_argument("file", nargs="?", help="the file (default: --config's default)")

    p = sub.add_parser("status", help="a table of every backend's health")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    add_watch_options(p)

    p = sub.add_parser("route", help="which backend a profile should use now")
    p.add_argument("profile")
    p.add_argument(
        "--exclude", default="", help="comma-separated backends to skip (turn-local failures)"
    )
    p.add_argument(
        "--task", help="task id: a task that failed locally often enough skips the local tier"
    )
    p.add_argument("--needs", help="e.g. vision,tools,context:20000")
    p.add_argument(
        "--allow-paid", action="store_true", help="route to paid backends past their budget"
    )
    p.add_argument("--credential", help="fingerprint of the caller's key (its own cooldowns)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("task-failure", help="report a task-level failure (escalation)")
    p.add_argument("task")
    p.add_argument("reason", choices=TASK_REASONS)
    p.add_argument("--detail", help="what went wrong, in a few words (kept in the journal)")

    p = sub.add_parser("usable", help="may a backend be used (restored) now?")
    p.add_argument("backend", nargs="?", help="backend name (or use --base-url)")
    p.add_argument("--base-url")
    p.add_argument("--credential", help="fingerprint of the key in use")
    p.add_argument("--model", help="the model asked for (default: the backend's)")

    p = sub.add_parser("report", help="report a failure or success seen by a client")
    p.add_argument("backend")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--failure", metavar="REASON", help="e.g. rate_limit, server_error, timeout")
    group.add_argument("--success", action="store_true")
    p.add_argument("--retry-after", type=float, metavar="SECONDS")
    p.add_argument("--status-code", type=int)
    p.add_argument("--credential")
    p.add_argument("--model", help="the model the failed request asked for")
    p.add_argument("--detail")

    p = sub.add_parser("events", help="recent state transitions")
    p.add_argument("--since", type=int, default=0)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true")

    add_tool_commands(sub)  # top, doctor, demo
    sub.add_parser("reload", help="reload the configuration (same as SIGHUP)")
    p = sub.add_parser(
        "restart",
        help="restart a supervised inference server",
        epilog="Works from any state; clears 'fatal' and the start history. For mode: systemd "
        "it runs systemctl reset-failed and restart. Exit 1 if the backend is not supervised.",
    )
    p.add_argument("backend", help="the backend's name in the configuration")
    return parser


class _Commands:
    """Subcommands whose --help starts with what the command does (its one-line help)."""

    def __init__(self, action: Any) -> None:
        self._action = action

    def add_parser(self, name: str, *, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        text = help[:1].upper() + help[1:]
        description = text if text.endswith("?") else text + "."
        return self._action.add_parser(name, help=help, description=description, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_ERROR


def _config_path(value: str | None) -> Path:
    return Path(value or os.environ.get("HROUTE_CONFIG") or DEFAULT_CONFIG)


def _cmd_run(args: argparse.Namespace) -> int:
    # Before anything slow: a SIGHUP while the daemon starts must not kill it (the default
    # action); it is remembered and becomes a reload once the daemon serves.
    hups: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: hups.append(signum))

    import anyio

    from hroute.core.errors import HrouteError
    from hroute.daemon import run_daemon
    from hroute.systemd.logs import setup_logging

    setup_logging(args.log_level or os.environ.get("HROUTE_LOG_LEVEL", "info"))
    from hroute.supervise.process import become_subreaper

    if not become_subreaper():  # a server's daemonized helpers would then go to init
        logging.getLogger("hroute").warning("cannot become a child subreaper (prctl refused)")
    if args.socket:
        os.environ["HROUTE_SOCKET"] = args.socket
    try:
        anyio.run(partial(run_daemon, _config_path(args.config), hup_pending=lambda: bool(hups)))
    except HrouteError as exc:
        print(f"hroute: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _cmd_check_config(args: argparse.Namespace) -> int:
    from hroute.config.model import missing_keys
    from hroute.core.errors import ConfigError
    from hroute.edges.config_file import read_config

    path = _config_path(args.file)
    try:
        config = read_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_ERROR
    for name, var in missing_keys(config).items():
        print(
            f"{path}: warning: backends.{name}.key_env: {var} is not set in this environment",
            file=sys.stderr,
        )
    print(f"{path}: ok ({len(config.backends)} backends, {len(config.profiles)} profiles)")
    return EXIT_OK


def _client(args: argparse.Namespace):
    from hroute.client import Client

    return Client(args.socket, budget_s=CLI_BUDGET_S)


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    client = _client(args)
    try:
        return client.request(method, path, body)
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"hroute: cannot reach the daemon at {client.socket_path}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_UNREACHABLE) from None


def _fail(status: int, body: Any) -> int:
    message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    print(f"hroute: {_shown(message or f'HTTP {status}')}", file=sys.stderr)
    return EXIT_ERROR


def _shown(value: Any) -> str:
    """A daemon's answer as a terminal may print it: names and details come from outside."""
    return clean(value, 2000)


def _cmd_status(args: argparse.Namespace) -> int:
    if watching(args):
        return cmd_watch(args, _client(args))
    status, body = _call(args, "GET", "/v1/backends")
    if status != 200:
        return _fail(status, body)
    if args.json:
        print(json.dumps(body, indent=2))
        return EXIT_OK
    status, clients = _call(args, "GET", "/v1/clients")
    print("\n".join(status_lines(body, clients if status == 200 else None)))
    return EXIT_OK


def _cmd_route(args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    query = {"profile": args.profile, **({"exclude": args.exclude} if args.exclude else {})}
    query.update(
        {
            k: v
            for k, v in (
                ("task", args.task),
                ("needs", args.needs),
                ("credential", args.credential),
            )
            if v
        }
    )
    if args.allow_paid:
        query["allow_paid"] = "1"
    status, body = _call(args, "GET", "/v1/route?" + urlencode(query))
    if status not in (200, 503):
        return _fail(status, body)
    if args.json:
        print(json.dumps(body, indent=2))
    elif body["backend"]:
        fields = (body["backend"], body["base_url"], body.get("model") or "-")
        print("\t".join(map(_shown, fields)))
    for link in body["chain"]:
        if not args.json and link["backend"] != body["backend"] and not link["usable"]:
            print(f"  skipped {_shown(link['backend'])}: {_shown(link['reason'])}", file=sys.stderr)
    if body["backend"] is None:
        wait = body.get("retry_after_s")
        hint = f"; earliest in {wait:.0f}s" if wait is not None else ""
        print(
            f"hroute: no backend of profile {args.profile!r} is usable now{hint}", file=sys.stderr
        )
        if not args.json:
            if "retry_after_unknown" in body:
                print(f"  when: unknown ({_shown(body['retry_after_unknown'])})", file=sys.stderr)
            for tip in body.get("help", []):
                print(f"  help: {_shown(tip)}", file=sys.stderr)
        return EXIT_NONE_USABLE
    return EXIT_OK


def _cmd_usable(args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    if not args.backend and not args.base_url:
        print("hroute usable: give a backend name or --base-url", file=sys.stderr)
        return EXIT_USAGE
    query = {
        k: v
        for k, v in (
            ("backend", args.backend),
            ("base_url", args.base_url),
            ("credential", args.credential),
            ("model", args.model),
        )
        if v
    }
    status, body = _call(args, "GET", "/v1/usable?" + urlencode(query))
    if status != 200:
        return _fail(status, body)
    print(json.dumps(body))
    return EXIT_OK if body["usable"] else EXIT_NONE_USABLE


def _cmd_report(args: argparse.Namespace) -> int:
    body = {
        "backend": args.backend,
        "outcome": "success" if args.success else "failure",
        "reason": args.failure,
        "retry_after_s": args.retry_after,
        "status_code": args.status_code,
        "credential": args.credential,
        "model": args.model,
        "detail": args.detail,
    }
    status, answer = _call(
        args, "POST", "/v1/reports", {k: v for k, v in body.items() if v is not None}
    )
    if status != 202:
        return _fail(status, answer)
    print(
        f"{_shown(answer['name'])}: {answer['state']}, usable={'yes' if answer['usable'] else 'no'}"
        + (f" ({answer['reason']})" if answer["reason"] else "")
    )
    return EXIT_OK


def _cmd_events(args: argparse.Namespace) -> int:
    from hroute.systemd.logs import describe

    since = args.since
    while True:
        status, body = _call(args, "GET", f"/v1/events?since={since}")
        if status != 200:
            return _fail(status, body)
        for event in body["events"]:
            since = max(since, event["id"])
            if args.json:
                print(json.dumps(event), flush=True)
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["ts"]))
                kind = _shown(event["event"])
                print(f"{event['id']:>6} {stamp} {kind:<14} {describe(event)}", flush=True)
        if not args.follow:
            return EXIT_OK
        time.sleep(1.0)


def _cmd_task_failure(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    payload = {"reason": args.reason, **({"detail": args.detail} if args.detail else {})}
    status, body = _call(args, "POST", f"/v1/tasks/{quote(args.task, safe='')}/failures", payload)
    if status != 202:
        return _fail(status, body)
    escalated = [p for p, yes in body["escalated"].items() if yes]
    print(
        f"task {_shown(body['task'])}: {body['failures']} failures"
        + (f"; escalated past the local tier for: {', '.join(escalated)}" if escalated else "")
    )
    return EXIT_OK


def _cmd_reload(args: argparse.Namespace) -> int:
    status, body = _call(args, "POST", "/v1/reload")
    if status != 200:
        return _fail(status, body)
    print(_shown(body.get("summary", "reloaded")))
    return EXIT_OK


def _cmd_restart(args: argparse.Namespace) -> int:
    status, body = _call(args, "POST", f"/v1/backends/{args.backend}/restart")
    if status != 202:
        return _fail(status, body)
    print(f"{args.backend}: restart requested")
    return EXIT_OK


_COMMANDS = {
    "run": _cmd_run,
    "check-config": _cmd_check_config,
    "status": _cmd_status,
    "route": _cmd_route,
    "usable": _cmd_usable,
    "task-failure": _cmd_task_failure,
    "report": _cmd_report,
    "events": _cmd_events,
    "reload": _cmd_reload,
    "restart": _cmd_restart,
    "top": _cmd_status,
    "doctor": lambda args: cmd_doctor(args, _config_path(args.config)),
    "demo": cmd_demo,
}

if __name__ == "__main__":
    sys.exit(main())

"""Drive a real Hermes Agent turn by turn; run with the Hermes venv's python.

    python hermes_driver.py SPEC.json

SPEC: {"base_url", "api_key", "model", "fallback": [{"provider", "model", "base_url",
"api_key"}], "max_iterations"?, "remove"?: ["module:attr", ...], "approve"?: "once"|"deny"}. `approve`
installs an approval prompt (as the CLI does) that answers so and records what it was asked. `remove` deletes those
attributes before Hermes loads its plugins, as a Hermes release without them would be. `HERMES_HOME` must name a directory whose config.yaml
enables (or not) the plugin. One AIAgent is built; then each stdin line is a command and
each answer one JSON line on stdout:

    turn TEXT    run_conversation(TEXT) -> {"turn", "response", "model", "base_url",
                 "fallback_active", "seconds", "failed"}
    slash NAME ARGS  a plugin's slash command, as the CLI runs it -> {"output"}
    new          a new session in the same agent, as `/new` does -> {"session_id"}
    chat NAME TEXT   with "chats": [NAME, ...] in SPEC: a turn of that gateway chat's agent
                 (one AIAgent per chat, with the gateway's session key for it) -> as `turn`
    gwslash NAME TEXT  TEXT sent in gateway chat NAME through Hermes' real
                 `GatewayRunner._handle_message` (how a gateway runs a plugin's slash
                 command) -> {"output"}
    title        generate_title() with the primary's runtime -> {"title", "error", "seconds"}
    quit         exit 0

The first line printed is {"ready": true, "plugin": {...}} (or {"ready": false, "error"}).
Hermes' own chatter goes to stderr. This file is run as a script and imports nothing from
the test suite.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import sys
import time
import traceback
from pathlib import Path


def emit(obj: dict) -> None:
    sys.__stdout__.write(json.dumps(obj) + "\n")
    sys.__stdout__.flush()


def plugin_state() -> dict:
    from hermes_cli.plugins import get_plugin_manager

    loaded = get_plugin_manager()._plugins.get("hroute")
    if loaded is None:
        return {"found": False}
    return {
        "found": True,
        "enabled": loaded.enabled,
        "error": loaded.error,
        "source": loaded.manifest.source,
        "hooks": loaded.hooks_registered,
    }


def reporter():
    """The loaded plugin's report queue (None without the plugin)."""
    from hermes_cli.plugins import get_plugin_manager

    for cb in get_plugin_manager()._hooks.get("api_request_error", []):
        plugin = getattr(cb, "__self__", None)
        if hasattr(plugin, "reporter"):
            return plugin.reporter
    return None


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    sys.stdout = sys.stderr  # keep stdout for our JSON lines only
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger("hroute_hermes").addHandler(handler)
    logging.getLogger("hroute_hermes").setLevel(logging.INFO)
    try:
        import importlib

        for target in spec.get("remove", []):
            module, _, attr = target.partition(":")
            with contextlib.suppress(AttributeError):
                delattr(importlib.import_module(module), attr)
        import run_agent

        def build(**extra: object) -> object:
            return run_agent.AIAgent(
                base_url=spec["base_url"],
                api_key=spec["api_key"],
                provider="custom",
                model=spec["model"],
                fallback_model=spec.get("fallback") or None,
                quiet_mode=True,
                enabled_toolsets=spec.get("toolsets", []),
                skip_context_files=True,
                skip_memory=True,
                max_iterations=spec.get("max_iterations", 4),
                **extra,
            )

        agent = build(**({"session_id": spec["session_id"]} if spec.get("session_id") else {}))
        chats: dict = {}
        runner = None
        if spec.get("chats"):
            from gateway.config import GatewayConfig, Platform
            from gateway.run import GatewayRunner
            from gateway.session import SessionSource

            runner = GatewayRunner(GatewayConfig())
            for name in spec["chats"]:
                source = SessionSource(
                    platform=Platform.TELEGRAM, chat_id=name, user_id="u1", chat_type="dm"
                )
                key = runner._session_key_for_source(source)
                chats[name] = (
                    build(session_id=f"chat-{name}", gateway_session_key=key),
                    source,
                )
    except Exception as exc:
        emit(
            {
                "ready": False,
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc(),
            }
        )
        return 1
    prompts: list[str] = []
    if spec.get("approve"):  # the CLI's approval prompt, answering as the user would
        from tools.terminal_tool import set_approval_callback

        def approve(command: str, description: str, **_: object) -> str:
            prompts.append(f"{command} | {description}")
            return spec["approve"]

        set_approval_callback(approve)
    emit({"ready": True, "plugin": plugin_state()})
    reports = reporter()
    turns = 0
    default = agent
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "quit":
            break
        started = time.perf_counter()
        agent = default
        if cmd == "chat":
            name, _, arg = arg.partition(" ")
            agent, cmd = chats[name][0], "turn"
        if cmd == "gwslash":
            import asyncio

            from gateway.platforms.base import MessageEvent

            name, _, text = arg.partition(" ")
            event = MessageEvent(text=text, source=chats[name][1])
            emit({"output": asyncio.run(runner._handle_message(event))})
            continue
        if cmd == "turn":
            turns += 1
            try:
                result = agent.run_conversation(arg or f"hello {turns}")
                response, failed = result.get("final_response"), bool(result.get("failed"))
            except Exception as exc:
                response, failed = f"{type(exc).__name__}: {exc}", True
            if reports is not None and spec.get(
                "flush_reports", True
            ):  # this turn's reports reach hroute before the next turn
                reports.flush(5)
            emit(
                {
                    "turn": turns,
                    "response": response,
                    "failed": failed,
                    "model": agent.model,
                    "base_url": str(agent.base_url),
                    "fallback_active": bool(getattr(agent, "_fallback_activated", False)),
                    "session_id": getattr(agent, "session_id", None),
                    "prompts": list(prompts),
                    "seconds": round(time.perf_counter() - started, 3),
                    "reports_dropped": reports.dropped if reports is not None else None,
                }
            )
        elif cmd == "slash":
            from hermes_cli.plugins import get_plugin_command_handler

            name, _, args = arg.partition(" ")
            handler = get_plugin_command_handler(name)
            emit({"output": handler(args) if handler else None})
        elif cmd == "new":
            old = agent.session_id
            agent.session_id = f"{old}-new{turns}"
            with contextlib.suppress(Exception):
                agent.reset_session_state()
            emit({"session_id": agent.session_id, "old": old})
        elif cmd == "title":
            from agent.title_generator import generate_title

            primary = agent._primary_runtime
            runtime = {
                k: primary.get(k) for k in ("model", "provider", "base_url", "api_key", "api_mode")
            }
            # 0.18/0.19 title the first exchange; 0.22 the opening message alone.
            kwargs = {"timeout": 10, "main_runtime": runtime}
            if "assistant_response" in inspect.signature(generate_title).parameters:
                kwargs["assistant_response"] = "hello to you"
            title, error = None, None
            try:
                title = generate_title("hello", **kwargs)
            except Exception as exc:  # said in the answer, not hidden
                error = f"{type(exc).__name__}: {exc}"
            emit(
                {"title": title, "error": error, "seconds": round(time.perf_counter() - started, 3)}
            )
        else:
            emit({"error": f"unknown command {cmd!r}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Put the `Gate` in front of the Hermes functions it guards, and take it away again.

Hermes loads plugins while `run_agent` is still being imported (`model_tools`, imported near
its top, runs the discovery), before `class AIAgent` exists. `AIAgent._restore_primary_runtime`
and `AIAgent._try_activate_fallback` are forwarders that look their helper up at call time
(0.18 and 0.19 import it, 0.22 goes through `agent.lazy_forward`), so the helpers are what gets
wrapped; that also covers an agent's very first turn.

No hook or middleware of Hermes can keep an agent off its primary or pick an auxiliary
provider (the hooks get no agent; middleware wraps a request already bound to a provider), so
these three private seams are wrapped; the reports go through the public hooks.

Every stand-in takes whatever arguments Hermes passes and hands them on unchanged. If hroute's
own logic raises (a changed signature, a missing attribute, a bug), Hermes' function runs as if
the plugin were absent, and the guard says so once. Every target is checked before anything is
touched: a guard whose module or attributes are missing in every known layout is left off with
one notice, and the rest still works.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .gate import Gate
from .status import Status

log = logging.getLogger("hroute_hermes")

_MARK = "__hroute_original__"


@dataclass(frozen=True)
class Group:
    """Functions of one Hermes module wrapped together, or not at all.

    Several groups may share a `name` (one per Hermes layout): the first whose targets all
    exist is the one installed.
    """

    name: str
    module: str
    wrapped: tuple[str, ...]
    needed: tuple[str, ...] = ()


GROUPS = (
    Group("restore", "agent.agent_runtime_helpers", ("restore_primary_runtime",)),
    Group(
        "fallback",
        "agent.chat_completion_helpers",
        ("try_activate_fallback",),
        ("_fallback_entry_key",),
    ),
    # 0.22: the health cache is per (label, base_url); fallback entries are checked through it.
    Group(
        "auxiliary",
        "agent.auxiliary_client",
        ("_resolve_auto_route", "_is_provider_unhealthy"),
        ("_normalize_main_runtime", "_normalize_chain_label"),
    ),
    # 0.18, 0.19: a per-label health cache; fallback entries resolve without consulting it.
    Group(
        "auxiliary",
        "agent.auxiliary_client",
        ("_resolve_auto", "_is_provider_unhealthy", "_resolve_fallback_entry"),
        ("_normalize_main_runtime", "_normalize_chain_label"),
    ),
)
# Installed only when escalation is configured (a profile is named): one turn, start to end.
ESCALATION = Group("escalation", "agent.conversation_loop", ("run_conversation",))
GUARDS = ("restore", "fallback", "auxiliary")

Logic = Callable[[Callable[[], Any], tuple[Any, ...], dict[str, Any]], Any]


def argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    """Hermes' argument `name` (positional `index`), or None when it was not passed."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


class _Call:
    """Hermes' function with exactly the arguments Hermes passed; remembers how it went."""

    __slots__ = ("_fn", "_args", "_kwargs", "called", "returned", "result")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self.called = self.returned = False
        self.result: Any = None

    def __call__(self) -> Any:
        self.called = True
        self.result = self._fn(*self._args, **self._kwargs)
        self.returned = True
        return self.result


def guarded(
    guard: str, original: Callable[..., Any], logic: Logic, status: Status
) -> Callable[..., Any]:
    """A stand-in for `original` that runs `logic(call, args, kwargs)` and never fails a turn.

    `call()` runs the original with the caller's exact arguments. When `logic` raises before
    calling it, the original runs; after it returned, its result stands; an exception raised by
    the original itself propagates, exactly as without the plugin.
    """

    @functools.wraps(original)
    def stand_in(*args: Any, **kwargs: Any) -> Any:
        call = _Call(original, args, kwargs)
        try:
            status.flush()  # at the start of a turn Hermes' log files exist: say what is off
            return logic(call, args, kwargs)
        except Exception as exc:
            if call.called and not call.returned:
                raise  # Hermes' own exception: not ours to swallow
            status.guard_failed(guard, exc)
            return call.result if call.returned else original(*args, **kwargs)

    setattr(stand_in, _MARK, original)
    return stand_in


def _original(fn: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(fn, _MARK, fn)


def _logics(gate: Gate, group: str, mod: ModuleType) -> dict[str, Logic]:
    """hroute's decision in front of each function of one group."""
    if group == "restore":
        return {
            "restore_primary_runtime": lambda call, a, kw: gate.restore_primary(
                argument(a, kw, 0, "agent"), call
            )
        }
    if group == "escalation":
        escalator = gate.escalator
        return {
            "run_conversation": lambda call, a, kw: escalator.turn(
                argument(a, kw, 0, "agent"), argument(a, kw, 1, "user_message"), call
            )
        }
    if group == "fallback":
        entry_key = mod._fallback_entry_key
        return {
            "try_activate_fallback": lambda call, a, kw: gate.activate_fallback(
                argument(a, kw, 0, "agent"),
                call,
                entry_key,
                reason=argument(a, kw, 1, "reason"),
                reset_at=argument(a, kw, 2, "reset_at"),
            )
        }

    def resolve(call: Callable[[], Any], a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        return gate.resolve_auxiliary(
            argument(a, kw, 0, "main_runtime"),
            call,
            mod._normalize_main_runtime,
            mod._normalize_chain_label,
        )

    logics: dict[str, Logic] = {
        "_is_provider_unhealthy": lambda call, a, kw: gate.provider_unhealthy(
            argument(a, kw, 0, "label"), argument(a, kw, 1, "base_url"), call
        ),
        "_resolve_auto_route": resolve,
        "_resolve_auto": resolve,
        "_resolve_fallback_entry": lambda call, a, kw: gate.resolve_fallback_entry(
            argument(a, kw, 0, "entry"), call
        ),
    }
    return logics


@dataclass
class Wiring:
    """What `install()` replaced, so `uninstall()` can put it back."""

    gate: Gate
    status: Status = field(default_factory=Status)
    installed: dict[str, list[tuple[ModuleType, str, Callable[..., Any]]]] = field(
        default_factory=dict
    )

    def install(self, groups: tuple[Group, ...] = GROUPS) -> list[str]:
        """Wrap, per guard name, the first group whose targets exist; return the names wrapped.

        A guard none of whose groups fits is left off, and `status` says why.
        """
        why_not: dict[str, list[str]] = {}
        for group in groups:
            if group.name in self.installed:
                continue
            try:
                mod = importlib.import_module(group.module)
            except Exception as exc:  # noqa: BLE001 - any import failure: leave Hermes alone
                why_not.setdefault(group.name, []).append(f"cannot import {group.module} ({exc})")
                continue
            missing = [
                a for a in group.wrapped + group.needed if not callable(getattr(mod, a, None))
            ]
            if missing:
                why_not.setdefault(group.name, []).append(
                    f"{group.module} has no {', '.join(missing)}"
                )
                continue
            logics = _logics(self.gate, group.name, mod)
            done = []
            for attr in group.wrapped:
                original = _original(getattr(mod, attr))
                setattr(mod, attr, guarded(group.name, original, logics[attr], self.status))
                done.append((mod, attr, original))
            self.installed[group.name] = done
        for name, reasons in why_not.items():
            if name not in self.installed:
                self.status.guard_off(name, "; ".join(reasons) + " (unsupported Hermes version?)")
        for name in self.installed:
            self.status.guard_on(name)
        return list(self.installed)

    def uninstall(self) -> None:
        """Put back every original this wiring replaced."""
        for done in self.installed.values():
            for mod, attr, original in done:
                setattr(mod, attr, original)
        self.installed.clear()

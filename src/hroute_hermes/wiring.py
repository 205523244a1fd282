"""Put the `Gate` in front of the Hermes functions it guards, and take it away again.

Hermes loads plugins while `run_agent` is still being imported (`model_tools`, imported near
its top, runs the discovery), before `class AIAgent` exists. `AIAgent._restore_primary_runtime`
and `AIAgent._try_activate_fallback` are forwarders that look their helper up at call time
(0.18 and 0.19 import it, 0.22 goes through `agent.lazy_forward`), so the helpers are what gets
wrapped; that also covers an agent's very first turn.

No hook or middleware of Hermes can keep an agent off its primary or pick an auxiliary
provider (the hooks get no agent; middleware wraps a request already bound to a provider), so
these three private seams are wrapped; the reports go through the public hooks.

Every stand-in takes whatever arguments Hermes passes and hands them on unchanged, and reads
them by parameter name. If hroute's own logic raises (a changed signature, a missing attribute,
a bug), Hermes' function runs as if the plugin were absent, and the guard says so once. What
each guard needs of Hermes is declared in `surface`, and all of it is checked before the guard
says "on": a guard that fits no known Hermes line, or whose first agent lacks an attribute it
reads, is left off with one notice, and the rest still works.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .gate import Gate
from .status import Status
from .surface import Group, bind, groups_for, missing_in_module, missing_on_agent

log = logging.getLogger("hroute_hermes")

_MARK = "__hroute_original__"

GROUPS = groups_for(None)
# Installed only when escalation is configured (a profile is named): one turn, start to end.
ESCALATION = next(g for g in groups_for(None, escalation=True) if g.name == "escalation")

# hroute's decision, given Hermes' function as a thunk and the call's arguments by name.
Logic = Callable[[Callable[[], Any], Mapping[str, Any]], Any]
# Whether the guard may decide for this call (its agent has what it reads); False: Hermes alone.
Ready = Callable[[Mapping[str, Any]], bool]


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
    guard: str,
    original: Callable[..., Any],
    logic: Logic,
    status: Status,
    ready: Ready = lambda bound: True,
) -> Callable[..., Any]:
    """A stand-in for `original` that runs `logic(call, arguments)` and never fails a turn.

    The arguments are bound to `original`'s parameter names, so a Hermes that reorders them
    is read right. `call()` runs the original with the caller's exact arguments. When
    `logic` raises before calling it, the original runs; after it returned, its result
    stands; an exception raised by the original itself propagates, exactly as without the
    plugin.
    """
    signature = inspect.signature(original)

    @functools.wraps(original)
    def stand_in(*args: Any, **kwargs: Any) -> Any:
        call = _Call(original, args, kwargs)
        try:
            status.flush()  # at the start of a turn Hermes' log files exist: say what is off
            bound = bind(signature, args, kwargs)
            if not ready(bound):
                return call()
            return logic(call, bound)
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
            "restore_primary_runtime": lambda call, a: gate.restore_primary(a.get("agent"), call)
        }
    if group == "escalation":
        escalator = gate.escalator
        return {
            "run_conversation": lambda call, a: escalator.turn(
                a.get("agent"), a.get("user_message"), call
            )
        }
    if group == "fallback":
        entry_key = mod._fallback_entry_key
        return {
            "try_activate_fallback": lambda call, a: gate.activate_fallback(
                a.get("agent"), call, entry_key, reason=a.get("reason"), reset_at=a.get("reset_at")
            )
        }

    def resolve(call: Callable[[], Any], a: Mapping[str, Any]) -> Any:
        return gate.resolve_auxiliary(
            a.get("main_runtime"), call, mod._normalize_main_runtime, mod._normalize_chain_label
        )

    logics: dict[str, Logic] = {
        "_is_provider_unhealthy": lambda call, a: gate.provider_unhealthy(
            a.get("label"), a.get("base_url"), call
        ),
        "_resolve_auto_route": resolve,
        "_resolve_auto": resolve,
        "_resolve_fallback_entry": lambda call, a: gate.resolve_fallback_entry(
            a.get("entry"), call
        ),
    }
    return logics


@dataclass
class Wiring:
    """What `install()` replaced, so `uninstall()` can put it back; and, per guard, whether
    the first agent it saw had every attribute the guard reads."""

    gate: Gate
    status: Status = field(default_factory=Status)
    installed: dict[str, list[tuple[ModuleType, str, Callable[..., Any]]]] = field(
        default_factory=dict
    )
    # Guards installed whose agent attributes are not checked yet: name -> its group.
    _unchecked: dict[str, Group] = field(default_factory=dict)
    _dead: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, groups: tuple[Group, ...] = GROUPS) -> list[str]:
        """Wrap, per guard name, the first group whose functions, parameters and mentions all
        exist; return the names wrapped.

        A guard none of whose groups fits is left off, and `status` says why. A guard that
        reads agent attributes says "on" only once the first agent has them all.
        """
        why_not: dict[str, list[str]] = {}
        for group in groups:
            if group.name in self.installed:
                continue
            try:
                mod = importlib.import_module(group.module)
            except Exception as exc:  # any import failure: leave Hermes alone
                why_not.setdefault(group.name, []).append(f"cannot import {group.module} ({exc})")
                continue
            try:
                missing = missing_in_module(group, mod)
            except Exception as exc:  # an unreadable module: leave it alone
                missing = [f"readable code ({type(exc).__name__}: {exc})"]
            if missing:
                why_not.setdefault(group.name, []).append(
                    f"{group.module} has no {', '.join(missing)}"
                )
                continue
            logics = _logics(self.gate, group.name, mod)
            done = []
            for fn in group.wrapped:
                original = _original(getattr(mod, fn.name))
                stand_in = guarded(
                    group.name, original, logics[fn.name], self.status, self._ready(group.name)
                )
                setattr(mod, fn.name, stand_in)
                done.append((mod, fn.name, original))
            self.installed[group.name] = done
            if group.agent:
                self._unchecked[group.name] = group
        for name, reasons in why_not.items():
            if name not in self.installed:
                self.status.guard_off(name, "; ".join(reasons) + " (unsupported Hermes version?)")
        for name in self.installed:
            if name in self._unchecked:
                self.status.guard_unchecked(name)
            else:
                self.status.guard_on(name)
        return list(self.installed)

    def _ready(self, guard: str) -> Ready:
        def ready(bound: Mapping[str, Any]) -> bool:
            agent = bound.get("agent")
            if self._unchecked and agent is not None:
                self.check_agent(agent)
            return guard not in self._dead

        return ready

    def check_agent(self, agent: Any) -> None:
        """Check, once, every installed guard's agent attributes on `agent` (or its class);
        a guard missing one is off from now on, said as a missing function is."""
        with self._lock:  # no call may decide before the verdict on its guard is in
            for name, group in self._unchecked.items():
                missing = missing_on_agent(group, agent)
                if missing:
                    self._dead.add(name)
                    self.status.guard_off(
                        name,
                        f"Hermes' agent ({type(agent).__name__}) has no {', '.join(missing)} "
                        "(unsupported Hermes version?)",
                    )
                else:
                    self.status.guard_on(name)
            self._unchecked.clear()

    def uninstall(self) -> None:
        """Put back every original this wiring replaced."""
        for done in self.installed.values():
            for mod, attr, original in done:
                setattr(mod, attr, original)
        self.installed.clear()
        self._unchecked.clear()
        self._dead.clear()

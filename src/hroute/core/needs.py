"""Capability needs of one request: `needs=vision,tools,context:20000`. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Needs:
    """What a request needs of a backend: `needs=vision,tools,context:20000`."""

    vision: bool = False
    tools: bool = False
    context: int = 0


NO_NEEDS = Needs()


def parse_needs(text: str | None) -> Needs:
    """Parse the `needs` query parameter; ValueError names what is wrong."""
    vision = tools = False
    context = 0
    for raw in (text or "").split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item == "vision":
            vision = True
        elif item == "tools":
            tools = True
        elif item.startswith("context:") and item[8:].isdigit():
            context = int(item[8:])
        else:
            raise ValueError(f"needs: unknown item {raw!r} (valid: vision, tools, context:TOKENS)")
    return Needs(vision, tools, context)


def capability_gap(backend: Any, needs: Needs) -> str | None:
    """Why `backend` cannot serve `needs`, or None when it can."""
    if needs.vision and not backend.vision:
        return "needs vision"
    if needs.tools and not backend.tools:
        return "needs tools"
    if (
        needs.context
        and backend.context_length is not None
        and backend.context_length < needs.context
    ):
        return f"needs context {needs.context} > {backend.context_length}"
    return None

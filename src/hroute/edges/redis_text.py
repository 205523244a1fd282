"""Text from Redis: bytes decoded for logs and parsing, never trusted to be UTF-8."""

from __future__ import annotations

from typing import Any


def text(value: Any) -> str:
    """A Redis answer as text (invalid UTF-8 replaced, not raised)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

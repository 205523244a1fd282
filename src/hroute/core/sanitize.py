"""Text from outside (reports, backends' error bodies, task ids) made safe to show. Pure.

A newline in a report's `detail` would forge a log line; an ANSI escape would reach the
operator's terminal; a megabyte would fill the journal. Every string that comes from
outside passes here before it is logged, kept or shown: control characters become visible
escapes (`\\n`, `\\x1b`, `\\u2028`), and the text is cut to a bound.
"""

from __future__ import annotations

import re

DETAIL_CHARS = 300
# C0 and C1 controls, DEL, and the Unicode line/paragraph separators and bidi controls
# that terminals and log viewers also act on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEPING_LINES = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
ELLIPSIS = "…"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: object, limit: int = DETAIL_CHARS, *, keep_lines: bool = False) -> str:
    """`text` with control characters escaped, cut to `limit` characters (then `…`).

    `keep_lines` keeps plain newlines (for the operator's own multi-line config errors);
    every other control character is still escaped.
    """
    text = text if isinstance(text, str) else str(text)
    if len(text) > limit * 4:
        text = text[: limit * 4]  # escaping never needs more than this much of the input
    pattern = _CONTROL_KEEPING_LINES if keep_lines else _CONTROL
    text = pattern.sub(_escape, text)
    if len(text) > limit:
        text = text[: limit - 1] + ELLIPSIS
    return text


def is_clean(text: str) -> bool:
    """True when `text` has no control character (nothing `clean` would escape)."""
    return _CONTROL.search(text) is None

"""Text from outside made safe to show; fingerprints are the only credential form."""

from __future__ import annotations

from hroute.core.credentials import fingerprint, is_fingerprint
from hroute.core.reasons import is_reason
from hroute.core.sanitize import clean, is_clean


def test_control_characters_become_visible_escapes() -> None:
    text = clean("a\nCRITICAL x\x1b[31m\r\t\x7f\x9b\u2028\u202e")
    assert text == "a\\nCRITICAL x\\x1b[31m\\r\\t\\x7f\\x9b\\u2028\\u202e"
    assert is_clean(text)


def test_length_is_capped_after_escaping() -> None:
    assert clean("x" * 1000, 50) == "x" * 49 + "…"
    assert len(clean("\x00" * 10_000, 300)) == 300


def test_keep_lines_keeps_only_newlines() -> None:
    assert clean("line 1\nline 2\x1b", keep_lines=True) == "line 1\nline 2\\x1b"


def test_fingerprints() -> None:
    fp = fingerprint(" sk-abc ")
    assert fp == fingerprint("sk-abc") and is_fingerprint(fp)
    assert not is_fingerprint("sk-abc") and not is_fingerprint(fp.upper())
    assert not is_fingerprint(fp + "0") and not is_fingerprint(None)


def test_reasons_are_names() -> None:
    assert is_reason("rate_limit") and is_reason("FailoverReason.thinking_signature")
    assert not is_reason("why-1") and not is_reason("")

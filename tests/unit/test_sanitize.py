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


HERMES_REASONS = [
    "auth",
    "auth_permanent",
    "billing",
    "content_policy_blocked",
    "context_overflow",
    "format_error",
    "image_corrupt",
    "image_too_large",
    "incomplete_response",
    "invalid_encrypted_content",
    "llama_cpp_grammar_pattern",
    "long_context_tier",
    "model_entitlement",
    "model_not_found",
    "multimodal_tool_content_unsupported",
    "oauth_long_context_beta_forbidden",
    "overloaded",
    "payload_too_large",
    "provider_policy_blocked",
    "rate_limit",
    "reasoning_mandatory",
    "role_alternation",
    "server_error",
    "ssl_cert_verification",
    "thinking_signature",
    "timeout",
    "unknown",
    "upstream_blocked",
    "upstream_rate_limit",
]  # FailoverReason of hermes-agent 0.18.2, 0.19.0 and 0.22.2


def test_every_hermes_reason_is_taken() -> None:
    assert [r for r in HERMES_REASONS if not is_reason(r)] == []

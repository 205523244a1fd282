"""Why a request or a probe failed: the one list of reasons, in Hermes' words. Pure.

Reports carry these names (Hermes' `FailoverReason` values, and a few finer ones that map
onto them); probes and classification produce them; health decides by the sets below.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a request failed; values are Hermes' FailoverReason strings where they overlap."""

    RATE_LIMIT = "rate_limit"
    UPSTREAM_RATE_LIMIT = "upstream_rate_limit"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    AUTH = "auth"
    AUTH_PERMANENT = "auth_permanent"
    BILLING = "billing"
    MODEL_NOT_FOUND = "model_not_found"
    INVALID_RESPONSE = "invalid_response"
    CONTEXT_OVERFLOW = "context_overflow"
    FORMAT_ERROR = "format_error"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    CONTENT_POLICY_BLOCKED = "content_policy_blocked"
    UNKNOWN = "unknown"


# The request, not the backend, is at fault: these never mark a backend down.
HEALTH_NEUTRAL = frozenset(
    {
        Reason.CONTEXT_OVERFLOW,
        Reason.FORMAT_ERROR,
        Reason.PAYLOAD_TOO_LARGE,
        Reason.CONTENT_POLICY_BLOCKED,
    }
)
# The server itself says it is sick: count at once, act on the backend as a whole.
SEVERE = frozenset(
    {
        Reason.SERVER_ERROR,
        Reason.OVERLOADED,
        Reason.TIMEOUT,
        Reason.CONNECTION,
        Reason.INVALID_RESPONSE,
    }
)

# Hermes' finer FailoverReasons; its request-shape ones blame the request, not the backend.
_BY_NAME = (
    {r.value: r for r in Reason}
    | dict.fromkeys(
        (
            "thinking_signature",
            "invalid_encrypted_content",
            "multimodal_tool_content_unsupported",
            "oauth_long_context_beta_forbidden",
            "llama_cpp_grammar_pattern",
            "role_alternation",
            "reasoning_mandatory",
            "image_corrupt",
        ),
        Reason.FORMAT_ERROR,
    )
    | {
        "provider_policy_blocked": Reason.CONTENT_POLICY_BLOCKED,
        "image_too_large": Reason.PAYLOAD_TOO_LARGE,
        "ssl_cert_verification": Reason.CONNECTION,
        "long_context_tier": Reason.CONTEXT_OVERFLOW,
        "incomplete_response": Reason.INVALID_RESPONSE,
        "upstream_blocked": Reason.CONNECTION,  # a WAF or proxy in front refuses us
        "model_entitlement": Reason.AUTH,  # this key may not use the model: that key only
    }
)


def parse_reason(text: str) -> Reason:
    """Map a reason string (ours or Hermes' FailoverReason, any case) to a `Reason`."""
    key = str(text).strip().lower().removeprefix("failoverreason.")
    return _BY_NAME.get(key, Reason.UNKNOWN)


def is_reason(text: str) -> bool:
    """True when `text` names a reason hroute knows (ours or one of Hermes' finer names);
    anything else is refused at the API, so labels and logs only ever carry known names."""
    return str(text).strip().lower().removeprefix("failoverreason.") in _BY_NAME


REASON_NAMES: tuple[str, ...] = tuple(sorted(_BY_NAME))

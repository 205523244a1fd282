"""The one place secrets are taken out of text that is shown, logged or stored. Pure.

Two kinds of secret: any token shaped like a key (`sk-…`, `key-…`, `Bearer …`, `Basic …`,
`api_key=…`), and the exact secrets hroute holds (from `key_env`, a `base_url`'s password),
which a backend may echo in any shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

KEY_SHAPED = re.compile(
    r"\b(?:sk|rk|pk)-[\w*.-]{4,}|\bkey-[\w*.-]{6,}|\bbearer\s+\S+"
    r"|\bbasic\s+(?=\S*[0-9+/=])[A-Za-z0-9+/]{8,}=*"  # base64, not "basic authentication"
    r"|\b(?:api[_-]?)?(?:key|token)=[^&\s]+",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every known secret and every key-shaped token replaced by [redacted]."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return KEY_SHAPED.sub(REDACTED, text)

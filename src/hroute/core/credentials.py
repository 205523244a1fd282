"""Credential fingerprints: the only form in which hroute ever holds a key's name. Pure.

A report's `credential` says which key of a pool failed, so that one key's 429 cools only
that key. hroute stores it, logs it, shows it and writes it to disk: it must never be the
key. The documented form is `sha256:` and the first 16 hex digits of the key's SHA-256;
anything else is refused, not stored and not echoed.
"""

from __future__ import annotations

import hashlib
import re

FINGERPRINT_PATTERN = r"^sha256:[0-9a-f]{16}$"
_FINGERPRINT = re.compile(FINGERPRINT_PATTERN)
FINGERPRINT_FORM = "sha256: and 16 lower-case hex digits (fingerprint(key))"


def fingerprint(key: str) -> str:
    """The fingerprint of an API key: `sha256:` + the first 16 hex digits of its SHA-256."""
    return "sha256:" + hashlib.sha256(key.strip().encode()).hexdigest()[:16]


def is_fingerprint(text: object) -> bool:
    """True when `text` is a fingerprint in the documented form (and so not a raw key)."""
    return isinstance(text, str) and _FINGERPRINT.match(text) is not None

"""Turn an HTTP answer or a transport exception into a failure `Reason` and a retry hint.

Pure: no I/O, no clock (wall time is passed in), no aiohttp. The rules are provider-neutral:
OpenAI, Anthropic, OpenRouter, DeepSeek, llama-server and Ollama bodies identify themselves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from hroute.core.cooldowns import provider_hint
from hroute.core.reasons import Reason
from hroute.core.redact import redact
from hroute.core.sanitize import clean


@dataclass(frozen=True)
class Classification:
    """A failure reason, the server's retry hint in seconds (if any) and a short detail."""

    reason: Reason
    retry_after_s: float | None
    detail: str


_MAX_PARSE_CHARS = 1 << 20  # bigger bodies are searched as text, not parsed
_DETAIL_CHARS = 200

_GO_PART = r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)"  # "ms" before "m": alternation order matters
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# (header, its "-remaining" partner or None for an explicit hint, value format)
_HINTS = [("retry-after", None, "http"), ("retry-after-ms", None, "ms")]
_HINTS += [
    (f"anthropic-ratelimit-{k}-reset", f"anthropic-ratelimit-{k}-remaining", "rfc3339")
    for k in ("requests", "tokens", "input-tokens", "output-tokens")
]
_HINTS += [
    (f"x-ratelimit-reset-{k}", f"x-ratelimit-remaining-{k}", "go") for k in ("requests", "tokens")
]


def _delta_s(value: str, kind: str, now_wall: float) -> float | None:
    value = value.strip()
    if kind == "go":
        parts = re.findall(_GO_PART, value) if re.fullmatch(f"(?:{_GO_PART})+", value) else []
        return sum(float(n) * _GO_UNITS[unit] for n, unit in parts) if parts else None
    if kind != "rfc3339" and re.fullmatch(r"-?\d+(?:\.\d+)?", value):
        return float(value) / (1000 if kind == "ms" else 1)
    if kind == "ms":
        return None
    try:
        stamp = parsedate_to_datetime(value) if kind == "http" else datetime.fromisoformat(value)
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp() - now_wall
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _hint(
    h: Mapping[str, str], now_wall: float, *, rate_limited: bool, resets: bool = True
) -> float | None:
    found = []
    for name, remaining, kind in _HINTS:
        # A reset matters only for an exhausted limit; a 429 need not say which one it hit.
        exhausted = rate_limited or h.get(remaining or "", "0").strip() == "0"
        if (value := h.get(name)) is None or (remaining and not (resets and exhausted)):
            continue
        # A zero, past or absurd reset is no hint (never a cooldown that ends at once).
        if (delta := provider_hint(_delta_s(value, kind, now_wall))) is not None:
            found.append(delta)
    return max(found) if found else None


def _lower(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now_wall: float, rate_limited: bool = False
) -> float | None:
    """Seconds to wait per the headers: the largest usable hint, or None.

    Reads `Retry-After` (seconds or HTTP-date), `retry-after-ms`, `anthropic-ratelimit-*-reset`
    (RFC 3339) and `x-ratelimit-reset-*` (`6m0s`); a reset counts when its `-remaining` is 0
    or absent, or always when `rate_limited` (a 429). Garbage values, and resets that are zero,
    already past or beyond a day, are ignored: they are no hint (`cooldowns.provider_hint`).
    """
    return _hint(_lower(headers), now_wall, rate_limited=rate_limited)


_CONTEXT = re.compile(
    r"context[_ ]length|context (?:window|size)|maximum context|too many tokens"
    r"|prompt is too long|input is too long|reduce the length|max_model_len"
    r"|exceed_context_size|maximum number of tokens"
)
_POLICY = re.compile(
    r"content[_ ]?(?:policy|filter|management)|responsibleaipolicyviolation"
    r"|usage polic|flagged|safety system|moderation|data policy|guardrail"
)
_MODEL_MISSING = re.compile(
    r"model[_ ]not[_ ](?:found|exist)|(?:invalid|unknown|no such) model"
    r"|model\b[^.]{0,80}\b(?:not found|does not exist)|no endpoints found"
)
_KEY_DEAD = re.compile(
    r"\b(?:revoked|deactivated|disabled)\b|invalid[ _-](?:x-)?api[ _-]?key"
    r"|incorrect api key|api key\b[^.]{0,40}\b(?:invalid|not valid)"
)
_BILLING = re.compile(
    r"billing|insufficient[_ ](?:quota|balance|credits|funds)|spend[_ ]limit"
    r"|exceeded your current quota|payment|credit balance"
)
_RATE_WORDS = re.compile(r"rate[ _-]?limit|too many requests")
_OVERLOADED = re.compile(r"overloaded|over capacity|at capacity")
_BY_STATUS = {
    401: Reason.AUTH,
    402: Reason.BILLING,
    408: Reason.TIMEOUT,
    413: Reason.PAYLOAD_TOO_LARGE,
    404: Reason.INVALID_RESPONSE,
}  # names no model: a wrong URL, not an LLM API
# Anthropic's error types, for errors that arrive inside a 200 (SSE `event: error`).
_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


@dataclass(frozen=True)
class _Error:
    message: str
    labels: tuple[str, ...]  # the provider's error code and type, e.g. "rate_limit_error"
    text: str  # lower-cased text the rules search
    upstream: bool  # OpenRouter named the upstream provider that failed
    code: Any


def _load(text: str) -> Any:
    if len(text) <= _MAX_PARSE_CHARS and text.lstrip().startswith(("{", "[")):
        with suppress(ValueError, RecursionError):
            return json.loads(text)
    return None


def _error(data: Any, text: str) -> _Error:
    err = data.get("error") if isinstance(data, dict) else None
    err = {"message": err} if isinstance(err, str) else err
    if not isinstance(err, dict):
        err = data if isinstance(data, dict) else {}
    meta = err.get("metadata") if isinstance(err.get("metadata"), dict) else {}
    raw = json.dumps(raw) if isinstance(raw := meta.get("raw"), dict | list) else raw
    strings = [
        v
        for v in (err.get("message"), err.get("detail"), err.get("msg"), raw)
        if isinstance(v, str)
    ]
    labels = [v for v in (err.get("code"), err.get("type")) if isinstance(v, str) and v]
    message = ": ".join(s.strip() for s in strings if s.strip())
    if not message and not labels:
        message = re.sub(r"<[^>]*>", " ", text[:65536])  # an HTML error page
    return _Error(
        message,
        tuple(labels),
        " ".join([message, *labels]).lower(),
        bool(meta.get("provider_name")),
        err.get("code"),
    )


def _in_body_error(text: str) -> Any:
    if '"error"' not in text:
        return None
    for chunk in [text, *text.splitlines()]:  # one JSON, SSE `data: {...}` events, NDJSON lines
        chunk = chunk.strip().removeprefix("data:")
        if '"error"' in chunk and isinstance(data := _load(chunk), dict) and data.get("error"):
            return data
    return None


def _reason_for(status: int, e: _Error) -> Reason:
    t = e.text
    if status in (401, 403) and _KEY_DEAD.search(t):
        return Reason.AUTH_PERMANENT
    if status in (400, 403, 422) and _POLICY.search(t):
        return Reason.CONTENT_POLICY_BLOCKED
    # OpenRouter's account privacy setting excludes every endpoint: the model exists.
    if status == 404 and ("data policy" in t or "guardrail" in t):
        return Reason.CONTENT_POLICY_BLOCKED
    if status == 404 and ("model" in t or _MODEL_MISSING.search(t)):
        return Reason.MODEL_NOT_FOUND
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status == 403:
        billing = _BILLING.search(t) or "credit" in t or "quota" in t
        return Reason.BILLING if billing else Reason.AUTH
    if status == 400 and _BILLING.search(t):  # Anthropic: "Your credit balance is too low"
        return Reason.BILLING
    if status in (400, 422):
        if _CONTEXT.search(t):
            return Reason.CONTEXT_OVERFLOW
        return Reason.MODEL_NOT_FOUND if _MODEL_MISSING.search(t) else Reason.FORMAT_ERROR
    if status == 429:
        if e.upstream or "upstream" in t:
            return Reason.UPSTREAM_RATE_LIMIT
        # "Add 10 credits to unlock more free requests" is a rate limit that mentions credit.
        if _BILLING.search(t) or ("credit" in t and not _RATE_WORDS.search(t)):
            return Reason.BILLING
        return Reason.OVERLOADED if _OVERLOADED.search(t) else Reason.RATE_LIMIT
    if 500 <= status <= 599:
        overloaded = status in (503, 529) or _OVERLOADED.search(t)
        return Reason.OVERLOADED if overloaded else Reason.SERVER_ERROR
    return Reason.UNKNOWN if 400 <= status <= 499 else Reason.INVALID_RESPONSE


def _detail(head: str, message: str, provider: str | None = None) -> str:
    text = " ".join(f"{head}: {message}".split()) if message.strip() else head
    text = redact(f"{provider}: {text}" if provider else text)
    return clean(text, _DETAIL_CHARS)


def classify_response(
    status: int,
    headers: Mapping[str, str] | None,
    body: bytes | str | None,
    *,
    now_wall: float,
    provider: str | None = None,
) -> Classification | None:
    """Classify one HTTP answer; None when it is a success (2xx without an error in the body).

    A 2xx counts as a failure only when its JSON, SSE or NDJSON body carries an `error`
    object (OpenRouter reports errors after generation started this way); a 2xx that is
    not JSON is not judged here. `provider`, if given, prefixes the detail.
    """
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body or ""
    h = _lower(headers)
    if 200 <= status <= 299:
        data = _in_body_error(text)
        if data is None:
            return None
        e = _error(data, "")
        code = int(e.code) if isinstance(e.code, int | str) and str(e.code).isdigit() else None
        known = [_TYPE_STATUS[label] for label in e.labels if label in _TYPE_STATUS]
        inner = code if code and 400 <= code <= 599 else (known or [500])[0]
        head = f"HTTP {status} in-body {e.labels[0] if e.labels else code or 'error'}"
        return Classification(
            _reason_for(inner, e),
            _hint(h, now_wall, rate_limited=False),
            _detail(head, e.message, provider),
        )
    e = _error(_load(text), text)
    reason = _reason_for(status, e)
    # Rate-limit resets say nothing about when money arrives.
    hint = _hint(h, now_wall, rate_limited=status == 429, resets=reason is not Reason.BILLING)
    head = " ".join([f"HTTP {status}", *e.labels[:1]])
    return Classification(reason, hint, _detail(head, e.message, provider))


_EXCEPTION_NAMES = (
    (
        Reason.TIMEOUT,
        {
            "TimeoutError",
            "ServerTimeoutError",
            "ConnectionTimeoutError",
            "SocketTimeoutError",
            "ReadTimeout",
            "ConnectTimeout",
            "PoolTimeout",
            "TimeoutException",
            "Timeout",
            "APITimeoutError",
        },
    ),
    (
        Reason.INVALID_RESPONSE,
        {
            "JSONDecodeError",
            "ContentTypeError",
            "ClientPayloadError",
            "UnicodeDecodeError",
            "RemoteProtocolError",
        },
    ),
    (
        Reason.CONNECTION,
        {
            "OSError",
            "ConnectionError",
            "EOFError",
            "ClientConnectionError",
            "ClientConnectorError",
            "ServerDisconnectedError",
            "ClientOSError",
            "APIConnectionError",
            "ConnectError",
            "ReadError",
        },
    ),
)


def classify_exception(exc: BaseException) -> Classification:
    """Classify a transport failure by the class names in its MRO and its `__cause__` chain.

    Timeouts win over connection errors because aiohttp's ServerTimeoutError is both.
    An exception carrying an HTTP `status`/`status_code` (raise_for_status) is judged by it.
    """
    detail = _detail(type(exc).__name__, str(exc))
    chain = [exc]  # `raise Wrapper(...) from cause`: the cause says what really happened
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    for reason, names in _EXCEPTION_NAMES:
        if any(cls.__name__ in names for e in chain for cls in type(e).__mro__):
            return Classification(reason, None, detail)
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        return Classification(_reason_for(status, _error(None, "")), None, detail)
    return Classification(Reason.UNKNOWN, None, detail)

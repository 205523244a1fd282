"""What the plugin tells hroute, and how it gets there without the agent waiting.

The bodies are built from the keyword arguments of Hermes' `api_request_error` and
`post_api_request` hooks (pure functions, no I/O); `Reporter` sends them from one daemon
thread through a bounded queue, dropping reports when the queue is full: a lost report
costs hroute one data point, a blocked agent costs the user a turn.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from hroute.core.credentials import fingerprint
from hroute.core.identity import normalize_base_url
from hroute.core.redact import redact as redact_secrets

_DETAIL_CHARS = 300


def credential_fingerprint(api_key: object) -> str | None:
    """A short, stable, one-way name for an API key, so hroute can tell keys apart.

    hroute's own `fingerprint(key)`, so that a key the daemon, its client and the plugin see
    has one name; the key cannot be recovered from it. None for anything that is not a
    non-empty string (no key, or a token-provider callable).
    """
    if not isinstance(api_key, str) or not api_key.strip():
        return None
    return _fingerprint(api_key)


def normalized_url(url: object) -> str | None:
    """hroute's canonical form of a backend URL (Hermes adds a trailing `/` after a fallback)."""
    if not isinstance(url, str) or not url.strip():
        return None
    return _normalize(url)


# Both run several times per turn on the same few strings: remember the answers.
_fingerprint = functools.lru_cache(maxsize=64)(fingerprint)


@functools.lru_cache(maxsize=256)
def _normalize(url: str) -> str | None:
    try:
        return normalize_base_url(url)
    except ValueError:
        return None


def redact(text: str, api_key: object = None) -> str:
    """`text` without the key in use or anything shaped like a key (hroute's `redact`), cut
    to a short line."""
    key = api_key.strip() if isinstance(api_key, str) else ""
    # A key of a few characters would blank out ordinary words of the message.
    text = redact_secrets(text, (key,) if len(key) >= 4 else ())
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


def _short(value: object, limit: int) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:limit]


def failure_report(
    hook: Mapping[str, Any], credential: str | None = None, api_key: object = None
) -> dict[str, Any] | None:
    """The `POST /v1/reports` body for one `api_request_error` call, or None without a URL.

    `reason` is Hermes' own FailoverReason string: hroute understands those as they are.
    """
    base_url = normalized_url(hook.get("base_url"))
    if base_url is None:
        return None
    status = hook.get("status_code")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        status = None
    reason = _short(hook.get("reason"), 64)
    error = hook.get("error")
    detail = None
    if isinstance(error, Mapping):
        parts = [str(error.get(k)) for k in ("type", "message") if error.get(k)]
        detail = redact(": ".join(parts), api_key) or None
    body = {
        "base_url": base_url,
        "outcome": "failure",
        "reason": reason.lower() if reason else None,
        "status_code": status,
        "provider": _short(hook.get("provider"), 64),
        "model": _short(hook.get("model"), 200),
        "credential": credential,
        "detail": detail,
    }
    return {k: v for k, v in body.items() if v is not None}


def success_report(hook: Mapping[str, Any], credential: str | None = None) -> dict[str, Any] | None:
    """The `POST /v1/reports` body for one `post_api_request` call, or None without a URL."""
    base_url = normalized_url(hook.get("base_url"))
    if base_url is None:
        return None
    body = {
        "base_url": base_url,
        "outcome": "success",
        "provider": _short(hook.get("provider"), 64),
        "model": _short(hook.get("model"), 200),
        "credential": credential,
    }
    return {k: v for k, v in body.items() if v is not None}


_RETRY_AFTER_MAX_S = 86400.0  # what hroute accepts; a provider's reset is hours at most


def reset_delay_s(reset_at: object, now_epoch: float) -> float | None:
    """Seconds from `now_epoch` to a provider's reset time, or None (missing, past, unreadable).

    Hermes 0.22 passes `reset_at` as it got it: epoch seconds, epoch milliseconds, or an
    ISO-8601 string (a numeric string counts as a number).
    """
    at: float | None = None
    if isinstance(reset_at, bool):
        return None
    if isinstance(reset_at, int | float):
        at = float(reset_at)
    elif isinstance(reset_at, str) and reset_at.strip():
        raw = reset_at.strip()
        try:
            at = float(raw)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            at = parsed.timestamp()
    if at is None or at != at or at <= 0:
        return None
    if at > 1e12:
        at /= 1000.0  # milliseconds
    delay = at - now_epoch
    if not 0 < delay < float("inf"):
        return None
    return round(min(delay, _RETRY_AFTER_MAX_S), 3)


def reset_report(
    base_url: object, api_key: object, reason: object, reset_at: object, now_epoch: float
) -> dict[str, Any] | None:
    """The `POST /v1/reports` body saying a backend is off until the provider's reset time.

    Hermes 0.22 hands `try_activate_fallback` the reset time of the backend it is leaving;
    hroute takes `retry_after_s` as that backend's cooldown end. None without a URL or a
    reset still ahead.
    """
    url = normalized_url(base_url)
    delay = reset_delay_s(reset_at, now_epoch)
    if url is None or delay is None:
        return None
    why = _short(str(getattr(reason, "value", reason) or ""), 64)
    body = {
        "base_url": url,
        "outcome": "failure",
        "reason": why.lower() if why else "rate_limit",
        "retry_after_s": delay,
        "credential": credential_fingerprint(api_key),
    }
    return {k: v for k, v in body.items() if v is not None}


def usage_report(hook: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `POST /v1/usage` body (tokens, for spend budgets) or None when Hermes gave none."""
    base_url = normalized_url(hook.get("base_url"))
    usage = hook.get("usage")
    if base_url is None or not isinstance(usage, Mapping):
        return None
    tokens_in = usage.get("prompt_tokens", usage.get("input_tokens"))
    tokens_out = usage.get("output_tokens")
    if not isinstance(tokens_in, int) or not isinstance(tokens_out, int):
        return None
    if tokens_in <= 0 and tokens_out <= 0:
        return None
    return {"base_url": base_url, "input_tokens": tokens_in, "output_tokens": tokens_out}


class Reporter:
    """Sends `(path, body)` pairs from one daemon thread; `submit()` never blocks.

    When `maxsize` reports are waiting (hroute slow or gone), new ones are dropped and
    counted in `dropped`. `send` does the I/O and may raise; errors are swallowed.
    """

    def __init__(
        self,
        send: Callable[[str, dict[str, Any]], object],
        maxsize: int = 256,
        name: str = "hroute-reporter",
    ) -> None:
        self._send = send
        self._maxsize = maxsize
        self._name = name
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.failed = 0
        if hasattr(os, "register_at_fork"):
            # A child must not inherit a queue whose lock the parent's worker held.
            reset = weakref.WeakMethod(self._reset_after_fork)
            os.register_at_fork(after_in_child=lambda: (m := reset()) is not None and m())

    def submit(self, path: str, body: dict[str, Any]) -> bool:
        """Queue one report; False (and counted) when the queue is full."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        try:
            self._queue.put_nowait((path, body))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def pending(self) -> int:
        """Reports queued or being sent."""
        return self._queue.unfinished_tasks

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued report was handled; False after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            path, body = self._queue.get()
            try:
                self._send(path, body)
            except Exception:  # a report must never take the worker down
                self.failed += 1
            finally:
                self._queue.task_done()

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._queue = queue.Queue(self._maxsize)
        self._thread = None

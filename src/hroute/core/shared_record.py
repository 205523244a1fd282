"""A shared cooldown as the fleet's Redis carries it, and the rules for reading one. Pure.

A record is one scope's cooldown: which server (api mode, base URL, model family), scope,
model, key fingerprint, reason, incident count, the host that saw it, the incident's version
and its state (held or cleared). Its deadline is the Redis key's TTL, not in the value.

Records are untrusted: whoever holds the Redis credential writes them, and one bad record must
not decide for the whole fleet (a 10-year TTL, a 110-character host, `n` = 1e9, `Infinity`,
JSON nested 100,000 deep, a spend of 1e308). `decode` bounds every field to what this host
could write and what its state file keeps (a record applied here is saved; one the file
rejects would set aside every cooldown at the next start), clamps the remaining time to
MAX_REMAINING_S (the longest a local report holds: a provider's reset of a day; the config's
`max_s` bounds only the growth of inferred holds), and answers a record or a ValueError.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from hroute.core.credentials import is_fingerprint
from hroute.core.health_values import Scope
from hroute.core.identity import BackendIdentity
from hroute.core.reasons import Reason

FORMAT = 2  # format 1 (no version, no state) is read as a held record of version 0
# Bounds of a record read from Redis: what this host itself could write, and what its state
# file keeps (a record applied here is saved; one the file rejects would set aside every
# cooldown at the next start).
MAX_RECORD_BYTES = 4096
MAX_HOST_CHARS = 64  # cluster.host's bound, and the state file's `seen_by`
MAX_MODEL_CHARS = 256
MAX_SERVER_CHARS = 2048  # a base URL
MAX_INCIDENTS = 10_000  # the state file's bound
MAX_REMAINING_S = 86_400.0  # the longest a local report holds (a provider's reset of a day)
MAX_VERSION = 2**53 - 1  # exact in a double (Redis' Lua, JavaScript readers)
# A day of one host's spend on one backend, in USD: more is a broken or hostile record, not
# spend (it would block the backend on every host). Finite, so sums cannot overflow to inf.
MAX_SPEND_USD = 1_000_000.0


@dataclass(frozen=True)
class Shared:
    """One scope's cooldown as the cluster carries it."""

    identity: BackendIdentity
    scope: Scope
    reason: Reason
    remaining_s: float
    host: str
    incidents: int = 1
    model: str = ""  # the model scope's model, or a key scope's ("" = every model)
    credential: str = ""  # a key scope's fingerprint
    version: int = 0  # the incident's (see the module's docstring)
    cleared: bool = False  # the incident ended early: evidence says the scope works

    @property
    def key(self) -> str:
        """Its name in Redis under the prefix: one per scope, whoever saw it."""
        ident = self.identity
        parts = [ident.api_mode, ident.base_url, ident.model_family or "", str(self.scope)]
        digest = hashlib.sha256("\0".join([*parts, self.model, self.credential]).encode())
        return "cd:" + digest.hexdigest()[:32]

    @property
    def order(self) -> tuple[int, bool]:
        """Which of two records of one scope is newer (the deadline decides a tie)."""
        return (self.version, self.cleared)

    def encode(self) -> str:
        """The value stored under `key` (the deadline is the key's TTL, not in here)."""
        ident = self.identity
        return json.dumps(
            {
                "v": FORMAT,
                "ver": self.version,
                "state": "cleared" if self.cleared else "held",
                "server": [ident.api_mode, ident.base_url, ident.model_family],
                "scope": str(self.scope),
                "model": self.model,
                "credential": self.credential,
                "reason": str(self.reason),
                "n": self.incidents,
                "host": self.host,
            },
            separators=(",", ":"),
        )


def decode(raw: str | bytes, remaining_ms: object) -> Shared:
    """A stored value and its TTL back into a `Shared`; ValueError for anything else (another
    program's key, a newer format, a key without a TTL, a field out of bounds, JSON too deep).
    The remaining time is clamped to MAX_REMAINING_S."""
    ttl = _integer(remaining_ms, "TTL", text=True)
    if ttl <= 0:
        raise ValueError(f"no remaining time (TTL {ttl} ms)")
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"{len(raw)} bytes (at most {MAX_RECORD_BYTES})")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") not in (1, FORMAT):
        raise ValueError(f"not a format-1 or format-{FORMAT} hroute record")
    try:
        server = data["server"]
        if not isinstance(server, list) or len(server) != 3:
            raise ValueError("server is not [api mode, base url, family]")
        api_mode, base_url, family = server
        scope = Scope(data["scope"])
        out = Shared(
            identity=BackendIdentity(
                _bounded(api_mode, "api mode", 32),
                _bounded(base_url, "base url", MAX_SERVER_CHARS),
                None if family is None else _bounded(family, "family", MAX_MODEL_CHARS),
            ),
            scope=scope,
            reason=Reason(data["reason"]),
            remaining_s=min(ttl / 1000, MAX_REMAINING_S),
            host=_bounded(data["host"], "host", MAX_HOST_CHARS, name=True),
            incidents=max(1, _integer(data["n"], "n", MAX_INCIDENTS)),
            model=_bounded(data.get("model") or "", "model", MAX_MODEL_CHARS),
            credential=_bounded(data.get("credential") or "", "credential", 64),
            version=_integer(data.get("ver", 0), "ver", MAX_VERSION),
            cleared=_state(data.get("state", "held")),
        )
    except KeyError as exc:
        raise ValueError(f"no {exc}") from None
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    if (out.scope is Scope.KEY) != bool(out.credential):
        raise ValueError("a key scope needs a credential, and only a key scope has one")
    if out.credential and not is_fingerprint(out.credential):
        raise ValueError("the credential is not a fingerprint")
    if out.scope is Scope.MODEL and not out.model:
        raise ValueError("a model scope needs a model")
    return out


def valid_spend(value: object) -> float | None:
    """One host's day of spend on one backend as Redis stores it, or None when it is not one
    (not a number, NaN or infinite, negative, past MAX_SPEND_USD)."""
    if isinstance(value, bytes | str) and len(value) > 64:
        return None
    try:
        usd = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(usd) and 0.0 <= usd <= MAX_SPEND_USD):
        return None
    return usd


def _integer(value: object, what: str, most: int | None = None, *, text: bool = False) -> int:
    if text and isinstance(value, bytes | str) and len(value) <= 20:  # a TTL told as text
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"{what} is not a number") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} is not an integer")
    if value < -2 or (most is not None and not 0 <= value <= most):
        raise ValueError(f"{what} out of bounds (0..{most})")
    return value


def _bounded(value: Any, what: str, most: int, *, name: bool = False) -> str:
    """A text field of a record: a string of at most `most` printable characters (a name:
    at least one, and no spaces)."""
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string")
    if len(value) > most:
        raise ValueError(f"{what} has {len(value)} characters (at most {most})")
    if not value.isprintable() or (name and (not value or any(c.isspace() for c in value))):
        raise ValueError(f"{what} has characters a name cannot have")
    return value


def _state(value: object) -> bool:
    if value not in ("held", "cleared"):
        raise ValueError("state is neither held nor cleared")
    return value == "cleared"


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: int(Infinity) raised out of the decoder before.
    raise ValueError(f"{name} is not a number")

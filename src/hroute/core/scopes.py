"""Which scope a failure holds, for a client's report and for hroute's own probe. Pure.

docs/design.md's scope table, as code: change how a reason is handled here, and only here.

A **report** is one agent's request with its own key and model: a failure holds the server,
one model on it, or that key (`report_scope`). A **probe** is hroute's own request, made with
the backend's configured key: what it meets is the configured backend's, so a rate limit it
meets cools the whole server and an auth failure blocks it (`probe_effect`).
"""

from __future__ import annotations

from enum import StrEnum

from hroute.core.health_values import Scope
from hroute.core.reasons import HEALTH_NEUTRAL, Reason
from hroute.core.verdict import ANY_MODEL

# Reasons by the scope a report of them holds (Hermes' names). `auth` without a credential
# is nobody's: one client's bad key must not take a backend away from everyone.
_SERVER = frozenset(
    {Reason.CONNECTION, Reason.TIMEOUT, Reason.SERVER_ERROR, Reason.INVALID_RESPONSE}
)
_MODEL = frozenset({Reason.MODEL_NOT_FOUND, Reason.UPSTREAM_RATE_LIMIT})
_KEY = frozenset({Reason.RATE_LIMIT, Reason.BILLING, Reason.AUTH, Reason.AUTH_PERMANENT})


def report_scope(
    reason: Reason, *, credential: str | None, model: str | None, local: bool
) -> Scope | None:
    """Which scope a client's failure report holds, or None when it holds nothing.

    A model-scoped reason whose model is unknown falls back to the server (the endpoint said
    it, for every model we cannot tell apart), except `model_not_found`, which names nothing
    then; the probes check every configured model anyway.
    """
    if reason in _SERVER:
        return Scope.SERVER
    if reason is Reason.OVERLOADED:
        # A local server that is overloaded is overloaded for every model it serves; a cloud
        # API's overload (Anthropic's 529, a 503 from OpenAI) is for the model asked.
        return Scope.SERVER if local or not model else Scope.MODEL
    if reason in _KEY and credential:
        return Scope.KEY
    if reason in (Reason.AUTH, Reason.AUTH_PERMANENT):
        return None
    if reason is Reason.BILLING:
        return Scope.SERVER  # the account behind the configured backend; nobody to tell apart
    if reason in _MODEL or reason is Reason.RATE_LIMIT:
        if model:
            return Scope.MODEL
        return None if reason is Reason.MODEL_NOT_FOUND else Scope.SERVER
    return None


def key_model(reason: Reason, model: str | None) -> str:
    """The model part of a key scope: a rate limit that names a model is that model's (OpenAI
    and Anthropic limit per model); billing and auth are the key's, for every model."""
    return model if reason is Reason.RATE_LIMIT and model else ANY_MODEL


class ProbeEffect(StrEnum):
    """What one failed probe does to its server."""

    NOTHING = "nothing"  # says nothing of the server's health (a request-shaped error)
    BLOCK = "block"  # hroute's own key is refused: blocked until a probe succeeds or it changes
    COOLDOWN = "cooldown"  # the server answered but says wait: a server cooldown, no state
    STATE = "state"  # the server failed: counts toward `fall`, then unhealthy


# A probe's quota answers cool the server: the probe used the configured key, so the limit it
# met is the configured backend's (a report's holds only the reporting key).
_PROBE_COOLS = frozenset({Reason.RATE_LIMIT, Reason.UPSTREAM_RATE_LIMIT, Reason.BILLING})


def probe_effect(reason: Reason) -> ProbeEffect:
    """What a probe that failed with `reason` does (always at the server scope)."""
    if reason in HEALTH_NEUTRAL:
        return ProbeEffect.NOTHING
    if reason in (Reason.AUTH, Reason.AUTH_PERMANENT):
        return ProbeEffect.BLOCK
    if reason in _PROBE_COOLS:
        return ProbeEffect.COOLDOWN
    return ProbeEffect.STATE

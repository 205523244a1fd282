"""The directory: what the configuration says about each backend, indexed. Pure, immutable.

Built once per configuration: every backend name with the server identity whose health it
shares, its model and thresholds, and the indexes that find a backend from a URL (and
model) or tell which names one server's cooldown holds, so that no request or change does
work that grows with the fleet. A reload builds a new directory; nothing here changes after.
"""

from __future__ import annotations

from typing import Any

from hroute.core.errors import UnknownBackendError
from hroute.core.health_values import Policy, Scope, policy_for
from hroute.core.identity import BackendIdentity, normalize_base_url


class Directory:
    """Names, identities, models and thresholds of one configuration (`config.model.Config`)."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self._identity: dict[str, BackendIdentity] = {}
        self._model: dict[str, str | None] = {}
        self._by_url: dict[str, str] = {}  # normalised base URL -> the first name with it
        self._by_url_model: dict[tuple[str, str], str] = {}
        self._at: dict[BackendIdentity, list[str]] = {}  # a server's names, in config order
        for name, backend in config.backends.items():
            ident = backend.identity
            self._identity[name] = ident
            self._model[name] = backend.model
            self._by_url.setdefault(ident.base_url, name)
            self._at.setdefault(ident, []).append(name)
            if backend.model:
                self._by_url_model.setdefault((ident.base_url, backend.model), name)
        self._policies: dict[str, Policy] = {}

    @property
    def names(self) -> list[str]:
        return list(self._identity)

    def __contains__(self, name: object) -> bool:
        return name in self._identity

    def identity(self, name: str) -> BackendIdentity:
        try:
            return self._identity[name]
        except KeyError:
            raise UnknownBackendError(name, list(self._identity)) from None

    def identities(self) -> list[BackendIdentity]:
        """Every configured server identity once, in config order."""
        return list(self._at)

    def model(self, name: str) -> str | None:
        return self._model[name] if name in self._model else self._unknown(name)

    def first_at(self, identity: BackendIdentity) -> str | None:
        """The first name configured with `identity` (its probes and events go by it)."""
        at = self._at.get(identity)
        return at[0] if at else None

    def policy(self, name: str) -> Policy:
        """The thresholds of `name` (computed once per configuration)."""
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = policy_for(self.config, name)
        return policy

    def urls(self) -> dict[str, str]:
        """Normalised base URL → the first backend configured with it."""
        return dict(self._by_url)

    def url_models(self) -> dict[str, dict[str, str]]:
        """Normalised base URL → {model → the first backend configured with both}."""
        out: dict[str, dict[str, str]] = {}
        for (url, model), name in self._by_url_model.items():
            out.setdefault(url, {})[model] = name
        return out

    def models_at(self, name: str) -> tuple[str, ...]:
        """Every model configured on `name`'s server (what its probe checks)."""
        at = self._at[self.identity(name)]
        return tuple(sorted({m for n in at if (m := self._model[n])}))

    def held_by(self, name: str, scope: str, model: str | None = None) -> list[str]:
        """The configured backends a cooldown of `scope` on `name`'s server holds."""
        at = self._at[self.identity(name)]
        if scope == Scope.SERVER or not model:
            return list(at)
        return [n for n in at if self._model[n] == model]

    def resolve(
        self, *, backend: str | None = None, base_url: str | None = None, model: str | None = None
    ) -> str | None:
        """The configured name for a backend name or any spelling of its URL (the one with
        `model` there, when given and configured); None if unknown."""
        if backend is not None:
            return backend if backend in self._identity else None
        if base_url is not None:
            url = normalize_base_url(base_url)
            if model is not None and (url, model) in self._by_url_model:
                return self._by_url_model[(url, model)]
            return self._by_url.get(url)
        return None

    def _unknown(self, name: str) -> Any:
        raise UnknownBackendError(name, list(self._identity))

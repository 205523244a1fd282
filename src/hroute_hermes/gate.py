"""Keep Hermes off backends that hroute says are down: the per-turn restore of the primary,
the fallback chain, and auxiliary calls (titles, compression).

Each method takes the Hermes function it stands in front of as a thunk that calls it with
exactly the arguments Hermes passed (see `wiring.guarded`); the decision is made from the
agent's own attributes and hroute's answer. Whenever hroute cannot answer, or says nothing is
usable, the original runs unchanged: the plugin may save requests, it must never cost an
answer.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

from .reports import credential_fingerprint, normalized_url, reset_report

log = logging.getLogger("hroute_hermes")


def socket_trouble(path: Path) -> tuple[str, str]:
    """Why hroute's socket at `path` does not answer, and the fix: (cause, fix)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return (
            "missing: no socket there (hroute not running, or another socket path)",
            "start hroute (sudo systemctl enable --now hroute, or hroute run), or point "
            "HROUTE_SOCKET at its socket",
        )
    except PermissionError:
        return _denied(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})", "check the socket's directory"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.2)
    try:
        probe.connect(str(path))
    except PermissionError:
        return _denied(path)
    except ConnectionRefusedError:
        return (
            "not answering: connection refused (a socket left by a daemon that is gone)",
            "restart hroute (sudo systemctl restart hroute)",
        )
    except OSError as exc:
        return f"not answering ({exc.strerror or exc})", "check hroute: hroute status"
    finally:
        probe.close()
    return (
        "not answering in time, or not a directory hroute may trust",
        "check hroute (hroute status) and the socket directory's owner and mode (hroute doctor)",
    )


def _denied(path: Path) -> tuple[str, str]:
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    return (
        f"permission denied for user {user}",
        "add the user to hroute's group: sudo usermod -aG hroute $USER (then log in again)",
    )


class SocketWatch:
    """Says once in Hermes' log that hroute cannot be reached (the socket, the cause, the
    fix) and once when it answers again; turns go on without it meanwhile."""

    def __init__(
        self,
        path: Path | str,
        diagnose: Callable[[Path], tuple[str, str]] = socket_trouble,
    ) -> None:
        self.path = Path(path)
        self._diagnose = diagnose
        self.lost = False
        self._lock = threading.Lock()

    def unreachable(self) -> None:
        with self._lock:
            if self.lost:
                return
            self.lost = True
        try:
            cause, fix = self._diagnose(self.path)
        except Exception as exc:  # a diagnosis must not cost a turn
            cause, fix = f"unknown ({type(exc).__name__})", "hroute doctor"
        log.warning(
            "hroute: cannot reach hroute at %s (%s); Hermes goes on without it (no health "
            "gate, no escalation, no budget gate) until it answers. Fix: %s",
            self.path, cause, fix,
        )  # fmt: skip

    def answered(self) -> None:
        with self._lock:
            if not self.lost:
                return
            self.lost = False
        log.warning("hroute: hroute answers again at %s", self.path)


class HealthView:
    """hroute's verdict on a backend URL, failing open.

    `usable` is `hroute.client.Client.usable`. When hroute cannot answer (no daemon, a
    hung one), the view stops asking for `quiet_s`, so a daemon that hangs costs the agent
    at most one client budget per `quiet_s` rather than one per check.
    """

    def __init__(
        self,
        usable: Callable[..., Any],
        clock: Callable[[], float] = time.monotonic,
        quiet_s: float = 5.0,
        watch: SocketWatch | None = None,
    ) -> None:
        self._usable = usable
        self._clock = clock
        self._quiet_s = quiet_s
        self._quiet_until = float("-inf")
        self.watch = watch

    def down(
        self, base_url: object, credential: str | None = None, model: object = None
    ) -> str | None:
        """Why the backend must not be used now, or None (usable, unknown, or no answer).

        `model` is the model Hermes would ask for there: several models of one server (two
        of one Ollama) are told apart by it, each with its own verdict."""
        url = normalized_url(base_url)
        if url is None or self._clock() < self._quiet_until:
            return None
        extra = {"model": model} if isinstance(model, str) and model.strip() else {}
        try:
            answer = self._usable(base_url=url, credential=credential, **extra)
        except Exception:  # the client fails open already; so do we
            return None
        if getattr(answer, "source", None) == "fail-open":
            self._quiet_until = self._clock() + self._quiet_s
            if self.watch is not None:
                self.watch.unreachable()
            return None
        if self.watch is not None:
            self.watch.answered()
        if answer:
            return None
        return str(getattr(answer, "reason", None) or "unusable")


def entry_credential(entry: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> str | None:
    """Fingerprint of the key a fallback entry uses (`api_key`, else its `key_env` variable)."""
    key = entry.get("api_key")
    if not key:
        var = entry.get("key_env") or entry.get("api_key_env")
        key = env.get(var) if isinstance(var, str) and var else None
    return credential_fingerprint(key)


class Gate:
    """The decisions, one instance per plugin; thread-safe per agent thread."""

    def __init__(
        self,
        view: HealthView,
        report: Callable[[dict[str, Any]], object] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.view = view
        self._report = report
        self._wall_clock = wall_clock
        self._local = threading.local()
        # Set by the plugin when escalation is configured (see escalator.Escalator.restore).
        self.escalator: Any = None

    # --- the agent whose turn runs on this thread (to fingerprint its key in hooks) ------

    def current_agent(self) -> Any:
        ref = getattr(self._local, "agent", None)
        return ref() if ref is not None else None

    def _remember(self, agent: Any) -> None:
        try:
            self._local.agent = weakref.ref(agent)
        except TypeError:
            self._local.agent = None

    # --- the primary, at the start of every turn -----------------------------------------

    def restore_primary(self, agent: Any, restore: Callable[[], Any]) -> Any:
        """Stand-in for Hermes' `restore_primary_runtime(agent)`.

        On a fallback: stay there (return False, as Hermes' own rate-limit gate does) while
        hroute says the primary is not usable. On the primary: when hroute says it is down,
        move to the first usable fallback before the turn's first request.
        """
        self._remember(agent)
        self._local.restoring = True  # a switch made here is hroute's, not Hermes' verdict
        try:
            return self._restore_primary(agent, restore)
        finally:
            self._local.restoring = False

    def _restore_primary(self, agent: Any, restore: Callable[[], Any]) -> Any:
        if self.escalator is not None:
            handled, result = self.escalator.restore(agent, restore)
            if handled:
                return result
        primary = getattr(agent, "_primary_runtime", None)
        if not isinstance(primary, Mapping):
            return restore()
        url, model = primary.get("base_url"), primary.get("model")
        credential = credential_fingerprint(primary.get("api_key"))
        if getattr(agent, "_fallback_activated", False):
            why = self.view.down(url, credential, model)
            if why:
                log.info(
                    "hroute: primary %s is not usable (%s); staying on %s this turn",
                    normalized_url(url),
                    why,
                    getattr(agent, "model", "?"),
                )
                return False
            return restore()
        result = restore()
        chain = getattr(agent, "_fallback_chain", None)
        if getattr(agent, "_fallback_activated", False) or not chain:
            return result
        why = self.view.down(url, credential, model)
        if not why:
            return result
        entries = [e for e in chain if isinstance(e, Mapping)]
        if entries and all(
            self.view.down(e.get("base_url"), entry_credential(e), e.get("model")) for e in entries
        ):
            log.info(
                "hroute: primary %s is down (%s) but so is every fallback; trying it anyway",
                normalized_url(url),
                why,
            )
            return result
        agent._fallback_index = 0
        switched = agent._try_activate_fallback()
        if switched:
            log.info(
                "hroute: primary %s is down (%s); starting this turn on %s",
                normalized_url(url),
                why,
                getattr(agent, "model", "?"),
            )
        return result

    # --- the fallback chain ------------------------------------------------------------------

    def activate_fallback(
        self,
        agent: Any,
        activate: Callable[[], Any],
        entry_key: Callable[[Mapping[str, Any]], Hashable],
        reason: Any = None,
        reset_at: Any = None,
    ) -> Any:
        """Stand-in for Hermes' `try_activate_fallback(agent, reason=None, reset_at=None)`.

        `reset_at` (0.22) is when the provider says the failing backend takes requests
        again: hroute is told, as that backend's cooldown end. Entries hroute says are down
        are put in the agent's `_unavailable_fallback_keys` (Hermes' own skip list) for this
        one activation only, then taken out again: that set lasts the whole session in
        Hermes, hroute's verdicts do not. If every remaining entry is down, none is skipped.
        """
        if getattr(self._local, "activating", False):
            return activate()  # Hermes recurses to skip entries; decided already
        if self.escalator is not None and not getattr(self._local, "restoring", False):
            self.escalator.note_fallback(agent, reason)
        refused = self.escalator.fallback_refused(agent) if self.escalator is not None else None
        if refused:
            self._say_once(f"hroute: not switching to a fallback: {refused}")
            return False
        if reset_at is not None and self._report is not None:
            body = reset_report(
                getattr(agent, "base_url", None),
                getattr(agent, "api_key", None),
                reason,
                reset_at,
                self._wall_clock(),
            )
            if body is not None:
                self._report(body)
        chain = getattr(agent, "_fallback_chain", None) or []
        start = getattr(agent, "_fallback_index", 0)
        remaining = [e for e in chain[start:] if isinstance(e, Mapping)]
        # A paid backend past its budget is never switched to (paid: deny, or confirm without
        # the user's yes), whichever path chose it: escalation or Hermes' own fallback.
        paid_blocked = self.escalator.budget_blocked(agent) if self.escalator is not None else ()
        spent = {
            entry_key(e): "past its budget (hroute.paid: deny)"
            for e in remaining
            if normalized_url(e.get("base_url")) in paid_blocked
        }
        keys = {entry_key(e) for e in remaining}
        if spent and len(spent) >= len(keys):
            self._say_once(
                "hroute: not switching to fallback "
                + ", ".join(str(k) for k in spent)
                + ": past its budget (paid models need hroute.paid: allow or confirm)"
            )
            return False
        down = {
            entry_key(e): why
            for e in remaining
            if entry_key(e) not in spent
            and (why := self.view.down(e.get("base_url"), entry_credential(e), e.get("model")))
        }
        if len(down) >= len(keys) - len(spent):
            down = {}  # every affordable entry is down: let Hermes try them anyway
        down.update(spent)
        if not down:
            return activate()
        unavailable = getattr(agent, "_unavailable_fallback_keys", None)
        if unavailable is None:
            unavailable = set()
            agent._unavailable_fallback_keys = unavailable
        added = [k for k in down if k not in unavailable]
        unavailable.update(added)
        for key, why in down.items():
            log.info("hroute: skipping fallback %s (%s)", key, why)
        self._local.activating = True
        try:
            return activate()
        finally:
            self._local.activating = False
            unavailable.difference_update(added)

    def _say_once(self, line: str) -> None:
        said = getattr(self._local, "said", None)
        if said == line:
            return
        self._local.said = line
        log.info("%s", line)

    def _paid_blocked(self, url: Any) -> str | None:
        """`past its budget` when `url` is a paid backend of the profile past its budget (and
        paid use is not allowed): an auxiliary call must not go there either."""
        if self.escalator is None:
            return None
        if normalized_url(url) in self.escalator.budget_blocked(self.current_agent()):
            return "past its budget (hroute.paid: deny)"
        return None

    # --- auxiliary calls (titles, compression, vision ...) -------------------------------

    def resolve_auxiliary(
        self,
        main_runtime: Any,
        resolve: Callable[[], Any],
        normalize_runtime: Callable[[Any], Mapping[str, Any]],
        normalize_label: Callable[[str], str],
    ) -> Any:
        """Stand-in for `auxiliary_client._resolve_auto_route` (0.22) / `_resolve_auto`: while
        it runs, the chain labels of a main runtime that hroute says is down count as
        unhealthy (see `provider_unhealthy`), so Hermes goes on to its next candidate instead
        of sending the side task there."""
        labels: frozenset[str] = frozenset()
        runtime = normalize_runtime(main_runtime)
        provider = str(runtime.get("provider") or "")
        url = runtime.get("base_url")
        if provider and url:
            why = self._paid_blocked(url) or self.view.down(
                url, credential_fingerprint(runtime.get("api_key")), runtime.get("model")
            )
            if why:
                names = {provider}
                if provider == "custom" or provider.startswith("custom:"):
                    names.add("custom")  # an anonymous custom endpoint is the "local/custom" slot
                labels = frozenset(normalize_label(n) for n in names)
                log.info(
                    "hroute: not using %s for an auxiliary task (%s)", normalized_url(url), why
                )
        previous = getattr(self._local, "aux_down", frozenset())
        self._local.aux_down = labels
        try:
            return resolve()
        finally:
            self._local.aux_down = previous

    def provider_unhealthy(self, label: Any, base_url: Any, original: Callable[[], Any]) -> Any:
        """Stand-in for `auxiliary_client._is_provider_unhealthy(label[, base_url])`.

        Hermes' own answer first. 0.22 names the endpoint (`base_url`): hroute is asked about
        it. Without one (0.19, or a provider with no URL of its own), the labels of a main
        runtime hroute says is down count while `resolve_auxiliary` runs.
        """
        unhealthy = original()
        if unhealthy:
            return unhealthy
        if isinstance(base_url, str) and base_url.strip():
            return bool(self._paid_blocked(base_url) or self.view.down(base_url))
        return bool(label) and label in getattr(self._local, "aux_down", ())

    def resolve_fallback_entry(self, entry: Any, original: Callable[[], Any]) -> Any:
        """Stand-in for `auxiliary_client._resolve_fallback_entry(entry)` (0.18, 0.19): an
        entry hroute says is down resolves to no client, so the auxiliary chain moves on."""
        if isinstance(entry, Mapping):
            why = self._paid_blocked(entry.get("base_url")) or self.view.down(
                entry.get("base_url"), entry_credential(entry), entry.get("model")
            )
            if why:
                log.info(
                    "hroute: auxiliary fallback %s skipped (%s)",
                    normalized_url(entry.get("base_url")),
                    why,
                )
                return None, None
        return original()

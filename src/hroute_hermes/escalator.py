"""Escalation in a Hermes process: report failed local attempts, and keep an escalated task on
its cloud fallback (see `escalation` for the definitions; this module does the I/O).

Two stand-ins feed it: `run_conversation` (one turn: the user's words, the result, its
duration) and the per-turn restore of the primary (`Gate.restore_primary`), where an escalated
task is moved to, or kept on, the fallback hroute routes it to. A session that never reported a
failure costs nothing: hroute is asked only about sessions that did.

Every decision is one `hroute_hermes` line in Hermes' log; hroute logs the matching
`task_failure` and `escalation` events itself.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .escalation import (
    ESCALATE_COMMAND,
    LOCAL_COMMAND,
    Decision,
    Failure,
    Intent,
    Settings,
    decide,
    failed_attempt,
    intent,
    missing_profile,
    task_type,
    task_type_arg,
    tools_used,
    turn_messages,
)
from .reports import normalized_url

log = logging.getLogger("hroute_hermes")

# The answer to a failure report decides the next turn; the turn that failed already ended.
FAILURE_BUDGET_S = 0.5
_MAX_SESSIONS = 256
_FORKS = frozenset({"background_review", "side_question"})
# How long hroute's list of paid backends past their budget is trusted (it gates every fallback
# activation and auxiliary call; one question per this many seconds at most).
BUDGET_VIEW_S = 2.0
# While hroute does not answer, whether the profile exists is asked again this often at most.
PROFILE_RETRY_S = 30.0


def approval_callback() -> Callable[..., Any] | None:
    """Hermes' interactive approval prompt on this thread (the CLI's), or None."""
    try:
        from tools.terminal_tool import _get_approval_callback  # type: ignore[import-not-found]
    except Exception:  # no Hermes, or a Hermes without it: nobody to ask
        return None
    try:
        return _get_approval_callback()
    except Exception:
        return None


class Escalator:
    """Per-process state: which sessions failed locally, what was said, what the user allowed."""

    def __init__(
        self,
        client: Any,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
        ask: Callable[[], Callable[..., Any] | None] = approval_callback,
    ) -> None:
        self.client = client
        self.settings = settings
        self._clock = clock
        self._ask = ask
        self._lock = threading.Lock()
        self.failed: dict[str, int] = {}  # session id -> failed local attempts reported
        self.confirmed: set[str] = set()
        self.asked: set[str] = set()  # sessions whose user asked for the cloud
        self._said: dict[str, str] = {}  # session id -> the last decision logged
        self._last_response: dict[str, tuple[Any, str]] = {}
        # `/escalate` or `/local` typed since the chat's last turn, by who typed it: a gateway
        # chat ("chat", session key), a CLI session ("session", id), or ("any",) when the
        # process has one session at most and the command could not say whose it was.
        self._pending: dict[tuple[str, ...], Intent] = {}
        self.pinned: dict[str, str] = {}  # session id -> the words that pinned it local
        self._seen: dict[str, None] = {}  # sessions that ran a turn in this process
        self._looked_up: set[str] = set()  # sessions hroute was asked about once (--resume)
        self._budget: tuple[float, frozenset[str]] = (float("-inf"), frozenset())
        self._turn = threading.local()  # what Hermes did within the turn on this thread
        self.types: dict[str, str] = {}  # session -> its task type ("" for none)
        self._typed_by_user: set[str] = set()  # sessions whose type the user set (/task)
        self._local_only: set[str] = set()  # sessions hroute said are local_only by type
        self._announced = False
        self._profile_checked = False
        self._profile_retry_at = float("-inf")
        self.profile_missing = False  # hroute said it has no such profile: escalation off
        self._aliases: dict[str, str] = {}  # a session id Hermes' compression rotated to -> task

    def _task(self, session: str | None) -> str | None:
        """The task a session id belongs to: itself, or the session it continues."""
        return self._aliases.get(session, session) if session is not None else None

    def announce(self) -> None:
        """Say once that escalation is on, at the first turn: Hermes' log exists by then.
        Until hroute has answered, each turn checks that the profile exists; a profile hroute
        does not have switches escalation off, said once with the closest name."""
        if not self._profile_checked and self._clock() >= self._profile_retry_at:
            known = self.client.profile_missing(self.settings.profile)
            if known is None:  # no answer: ask again later, not at every turn
                self._profile_retry_at = self._clock() + PROFILE_RETRY_S
            else:
                self._profile_checked = True
                if known:
                    self.profile_missing = True
                    log.warning("%s", missing_profile(str(self.settings.profile), known[1:]))
        if self._announced:
            return
        self._announced = True
        if self.profile_missing:
            return
        limit = self.settings.turn_timeout_s
        log.info(
            "hroute: escalation on for profile %s (paid past budget: %s%s)",
            self.settings.profile,
            self.settings.paid,
            f", turn limit {limit:g}s" if limit else "",
        )

    def request(self, raw_args: str = "") -> str:
        """Hermes' `/escalate` slash command: the next turn of the chat it was typed in runs
        on the cloud model (the command runs outside any turn: who typed it is found from
        Hermes' gateway context or the CLI that called it)."""
        return self._command(Intent("escalate", ESCALATE_COMMAND), (
            f"hroute: the next turn asks hroute (profile {self.settings.profile}) to run this "
            "task on the cloud model"
        ))  # fmt: skip

    def keep_local(self, raw_args: str = "") -> str:
        """Hermes' `/local` slash command: this chat's task stays on the local model (no
        escalation, no Hermes fallback) until `/new`."""
        return self._command(Intent("local", LOCAL_COMMAND), (
            "hroute: this task stays on the local model until /new (no escalation, no "
            "fallback); /escalate lifts it"
        ))  # fmt: skip

    def set_type(self, raw_args: str = "") -> str:
        """Hermes' `/task TYPE` slash command: this chat's task is of type TYPE (its
        `escalation.task_types` rule in hroute applies) until /new."""
        kind = task_type_arg(raw_args)
        if kind is None:
            return "hroute: /task TYPE, e.g. /task chat or /task coding"
        return self._command(Intent("task", kind), f"hroute: this task is {kind} until /new")

    def _command(self, wanted: Intent, said: str) -> str:
        who = command_chat()
        with self._lock:
            if who is None:
                if len(self._seen) > 1:
                    return (
                        f"hroute: cannot tell which chat typed {wanted.words}; start your "
                        f"message with {wanted.words} instead"
                    )
                who = ("any",)
            self._pending[who] = wanted
            _bound(self._pending)
        return said

    def _take_pending(self, agent: Any, raw: str | None, session: str) -> Intent | None:
        keys: list[tuple[str, ...]] = [("session", session)]
        if raw is not None and raw != session:
            keys.append(("session", raw))
        chat = getattr(agent, "_gateway_session_key", None)
        if isinstance(chat, str) and chat:
            keys.append(("chat", chat))
        with self._lock:
            if len(self._seen) <= 1:
                keys.append(("any",))
            found = [w for w in (self._pending.pop(k, None) for k in keys) if w is not None]
        return found[-1] if found else None

    def _set_type(self, session: str, kind: str, why: str) -> None:
        with self._lock:
            before = self.types.pop(session, None)
            self.types[session] = kind
            _bound(self.types)
            if before == kind:
                return
            self._looked_up.discard(session)  # ask hroute again: the type's rule may differ
            self._local_only.discard(session)
        if before is not None or kind != "chat":
            log.info("hroute: task %s is %s (%s)", session, kind or "of no listed type", why)

    def _pin(self, session: str, wanted: Intent) -> None:
        with self._lock:
            new = session not in self.pinned
            self.pinned.pop(session, None)
            self.pinned[session] = wanted.words
            _bound(self.pinned)
        if new:
            log.info(
                "hroute: task %s: pinned to the local model (the user said %r); no escalation "
                "and no fallback for it until /new (/escalate lifts it)", session, wanted.words,
            )  # fmt: skip

    # --- a turn --------------------------------------------------------------------------

    def turn(self, agent: Any, user_message: Any, run: Callable[[], Any]) -> Any:
        """Stand-in for `run_conversation(agent, user_message, ...)`: runs it, then reports the
        turn to hroute if it was a failed local attempt."""
        self.announce()
        if self.profile_missing or not _user_facing(agent):
            return run()
        raw = _session(agent)
        session = self._task(raw)
        asked = None
        if session is not None:
            with self._lock:
                self._seen.pop(session, None)
                self._seen[session] = None
                _bound(self._seen)
            wanted = self._take_pending(agent, raw, session) or intent(user_message, self.settings)
            if wanted is not None and wanted.where == "task":
                self._set_type(session, wanted.words, "the user said /task")
                self._typed_by_user.add(session)
                wanted = intent(user_message, self.settings)
                wanted = wanted if wanted is not None and wanted.where != "task" else None
            elif session not in self.types:
                self.types[session] = "chat"  # no tool used yet
                _bound(self.types)
            if wanted is not None and wanted.where == "local":
                self._pin(session, wanted)  # before anything: nothing of it leaves the machine
            elif wanted is not None and session in self.pinned:
                if wanted.words == ESCALATE_COMMAND:  # only the explicit command lifts a pin
                    with self._lock:
                        self.pinned.pop(session, None)
                    log.info("hroute: task %s: the user lifted the local pin (/escalate)", session)
                else:
                    wanted = None
                    self._say(session, f"hroute: task {session}: pinned local; a phrase does "
                              "not lift the pin (/escalate does)")  # fmt: skip
            if wanted is not None and wanted.where == "escalate":
                asked = Failure("user_request", f"the user asked for it ({wanted.words!r})")
            if asked is not None and session not in self.asked:
                self.asked.add(session)  # once is enough: it escalates the whole task
                self._report(agent, session, asked)  # before the turn: it runs escalated
        pinned = session is not None and session in self.pinned
        self._turn.left_for_answer = False
        started = self._clock()
        result = run()
        after = _session(agent)
        if session is not None and after is not None and after != raw:
            # Hermes' compression may end the session and continue it under a new id within a
            # turn: the same task (a new id between turns is `/new`, a new task).
            with self._lock:
                self._aliases[after] = session
                _bound(self._aliases)
        if session is not None and session not in self._typed_by_user:
            messages = result.get("messages") if isinstance(result, dict) else None
            used = tools_used(turn_messages(messages, user_message))
            kind = task_type(self.types.get(session), used, self.settings)
            self._set_type(session, kind, f"it used {', '.join(dict.fromkeys(used))}")
        if session is None or pinned or asked is not None:
            return result
        if _on_fallback(agent):
            if getattr(self._turn, "left_for_answer", False):
                # The local model answered nothing usable; Hermes retried it, then finished
                # the turn on its fallback. A failed local attempt all the same: counted, it
                # escalates the task instead of retrying the local model every turn.
                self._report(agent, session, Failure(
                    "invalid_output",
                    "the local model's answer was empty or unusable; Hermes finished the "
                    "turn on its fallback",
                ))  # fmt: skip
            return result
        previous_message, previous = self._last_response.get(session, (None, None))
        failure = failed_attempt(
            result, self._clock() - started, self.settings,
            previous_response=previous, user_message=user_message,
            previous_message=previous_message,
        )  # fmt: skip
        response = result.get("final_response") if isinstance(result, dict) else None
        if isinstance(response, str) and response.strip():
            self._last_response.pop(session, None)
            self._last_response[session] = (user_message, response)
            _bound(self._last_response)
        if failure is not None:
            self._report(agent, session, failure)
        return result

    def _report(self, agent: Any, session: str, failure: Any) -> None:
        with self._lock:
            self.failed[session] = self.failed.pop(session, 0) + 1
            for gone in _bound(self.failed):  # a long-lived gateway sees many sessions
                self.confirmed.discard(gone)
                self.asked.discard(gone)
                self._said.pop(gone, None)
        answer = self.client.task_failure(
            session, failure.reason, detail=failure.detail, task_type=self.types.get(session)
        )
        profile = self.settings.profile
        if not isinstance(answer, dict):
            log.info(
                "hroute: task %s: local attempt on %s failed (%s: %s); hroute did not answer",
                session, getattr(agent, "model", "?"), failure.reason, failure.detail,
            )  # fmt: skip
            return
        escalated = (answer.get("escalated") or {}).get(profile)
        log.info(
            "hroute: task %s: local attempt on %s failed (%s: %s); %d failure(s) reported, %s",
            session, getattr(agent, "model", "?"), failure.reason, failure.detail,
            answer.get("failures", 0),
            f"escalated for profile {profile}" if escalated else f"not escalated for profile {profile}",
        )  # fmt: skip

    # --- the start of a turn -------------------------------------------------------------

    def restore(self, agent: Any, restore: Callable[[], Any]) -> tuple[bool, Any]:
        """Before Hermes' restore of the primary: (handled, result). Not handled (False) means
        the usual gate and Hermes decide; handled means this turn runs on the fallback hroute
        routes the escalated task to."""
        session = self._task(_session(agent))
        if session is None or not _user_facing(agent) or self.profile_missing:
            return False, None
        if session in self.pinned:
            # Back to the local primary, whatever kept the agent on a fallback (an escalation
            # before the pin, Hermes' own rate-limit gate), and never off it for this task.
            if _on_fallback(agent) and hasattr(agent, "_rate_limited_until"):
                agent._rate_limited_until = None
            result = restore()
            self._say(session, f"hroute: task {session}: pinned local; staying on "
                      f"{getattr(agent, 'model', '?')}")  # fmt: skip
            return True, result
        if session not in self.failed:
            if session in self._looked_up:
                return False, None
            self._looked_up.add(session)  # its first turn in this process (--resume, -c)
            if len(self._looked_up) > _MAX_SESSIONS:
                self._looked_up.clear()
        decision = self._decision(agent, session, confirmed=session in self.confirmed)
        if decision.action != "none" and session not in self.failed:
            with self._lock:  # escalated in an earlier process: follow it from now on
                self.failed[session] = 0
                _bound(self.failed)
        if decision.action == "ask":
            if self._confirm(agent, session, decision):
                self.confirmed.add(session)
                decision = self._decision(agent, session, confirmed=True)
            else:
                decision = Decision("local", f"{decision.why}, but the user did not allow paid use")
        if decision.action in ("none", "local"):
            if decision.why:
                tail = "" if decision.why.endswith("staying local") else "; staying local"
                self._say(session, f"hroute: task {session}: {decision.why}{tail}")
            return False, None
        if decision.action == "stay":
            self._say(session, f"hroute: task {session}: {decision.why}; staying on {agent.model}")
            return True, False
        result = restore()
        agent._fallback_index = decision.index
        switched = agent._try_activate_fallback()
        if not switched or normalized_url(getattr(agent, "base_url", None)) != decision.url:
            self._say(
                session,
                f"hroute: task {session}: {decision.why}, but Hermes could not switch to "
                f"{decision.url}; staying on {getattr(agent, 'model', '?')}",
            )
            return True, result
        self._say(
            session,
            f"hroute: task {session}: {decision.why}; running the rest of it on "
            f"{agent.model} at {decision.url}",
        )
        return True, result

    # --- every paid call: Hermes' fallback, auxiliary tasks ---------------------------------

    def note_fallback(self, agent: Any, reason: Any) -> None:
        """Hermes is leaving the primary within a turn. With no API error as the reason (an
        empty, invalid or truncated answer), it is the local model's answer that failed."""
        why = str(getattr(reason, "value", reason) or "")
        if not _on_fallback(agent) and why in ("", "incomplete_response"):
            self._turn.left_for_answer = True

    def fallback_refused(self, agent: Any) -> str | None:
        """Why Hermes must not switch this agent to any fallback now, or None."""
        session = self._task(_session(agent))
        if session is not None and session in self.pinned and _user_facing(agent):
            return f"task {session} is pinned to the local model ({self.pinned[session]!r})"
        if session is not None and session in self._local_only and _user_facing(agent):
            kind = self.types.get(session)
            return f"task {session} is {kind}, local_only in profile {self.settings.profile}"
        return None

    def budget_blocked(self, agent: Any = None) -> frozenset[str]:
        """URLs of the profile's paid backends past their budget, unless paid use is allowed
        (`paid: allow`, or the user confirmed it for this agent's task)."""
        if self.settings.paid == "allow":
            return frozenset()
        session = self._task(_session(agent)) if agent is not None else None
        if session is not None and session in self.confirmed:
            return frozenset()
        now = self._clock()
        at, urls = self._budget
        if now - at < BUDGET_VIEW_S:
            return urls
        answer = self.client.route(self.settings.profile)
        if isinstance(answer, dict):
            urls = frozenset(
                u
                for c in answer.get("chain") or ()
                if isinstance(c, dict)
                and str(c.get("reason") or "").startswith("budget_exhausted")
                and (u := normalized_url(c.get("base_url"))) is not None
            )
        self._budget = (now, urls)
        return urls

    def _decision(self, agent: Any, session: str, *, confirmed: bool) -> Decision:
        allow = self.settings.paid == "allow" or confirmed
        kind = self.types.get(session) or None
        answer = self.client.route(
            self.settings.profile, task=session, allow_paid=allow,
            **({"task_type": kind} if kind else {}),
        )  # fmt: skip
        if isinstance(answer, dict):
            answer = {**answer, "base_url": normalized_url(answer.get("base_url"))}
            rule = (answer.get("task_type") or {}).get("rule")
            with self._lock:
                if rule == "local_only":
                    self._local_only.add(session)
                else:
                    self._local_only.discard(session)
        chain = getattr(agent, "_fallback_chain", None) or []
        urls = [normalized_url(e.get("base_url")) if isinstance(e, dict) else None for e in chain]
        return decide(
            answer,
            urls,
            normalized_url(getattr(agent, "base_url", None)),
            bool(getattr(agent, "_fallback_activated", False)),
            self.settings,
            confirmed=confirmed,
        )

    def _confirm(self, agent: Any, session: str, decision: Decision) -> bool:
        """Ask the user through Hermes' approval prompt; no prompt (gateway, cron) is a no."""
        callback = self._ask()
        if callback is None:
            self._say(
                session,
                f"hroute: task {session}: {decision.why}; paid use needs confirmation and "
                "Hermes has no approval prompt here: staying local",
            )
            return False
        try:
            choice = callback(
                f"hroute: escalate task {session} to a paid model past its budget",
                f"{decision.why}; {' '.join(decision.help)}",
                allow_permanent=False,
            )
        except Exception:  # a failing prompt is a no, as Hermes treats it
            return False
        allowed = str(choice).lower() in ("once", "session", "always", "yes", "true")
        log.info(
            "hroute: task %s: the user %s paid escalation", session,
            "allowed" if allowed else "refused",
        )  # fmt: skip
        return allowed

    def _say(self, session: str, line: str) -> None:
        """Log a decision once per session (a turn that repeats it says nothing new)."""
        with self._lock:
            if self._said.get(session) == line:
                return
            self._said[session] = line
        log.info("%s", line)


def command_chat() -> tuple[str, str] | None:
    """Who typed the slash command being handled: ("chat", the gateway's session key) or
    ("session", the CLI's session id); None when Hermes does not say.

    Hermes calls a plugin command with its arguments alone. 0.22's gateway binds the chat's
    `HERMES_SESSION_KEY` around the call; 0.18/0.19's gateway calls it from
    `GatewayRunner._handle_message(event)`, whose source names the chat; the CLI calls it from
    `HermesCLI.process_command`, which holds its session id.
    """
    context = sys.modules.get("gateway.session_context")
    if context is not None:
        try:
            key = context.get_session_env("HERMES_SESSION_KEY")
        except Exception:  # a Hermes without it
            key = None
        if isinstance(key, str) and key:
            return ("chat", key)
    frame: Any = sys._getframe(1)
    for _ in range(40):
        if frame is None:
            return None
        owner, event = frame.f_locals.get("self"), frame.f_locals.get("event")
        frame = frame.f_back
        if owner is None:
            continue
        if event is not None and callable(getattr(owner, "_session_key_for_source", None)):
            try:
                key = owner._session_key_for_source(event.source)
            except Exception:
                key = None
            if isinstance(key, str) and key:
                return ("chat", key)
        if hasattr(owner, "agent") and hasattr(owner, "session_id"):
            session = getattr(owner.agent, "session_id", None) or owner.session_id
            if isinstance(session, str) and session:
                return ("session", session)
    return None


def _bound(sessions: dict[Any, Any]) -> list[Any]:
    """Drop the least recently seen sessions past `_MAX_SESSIONS`; the ids dropped."""
    gone = list(sessions)[: max(0, len(sessions) - _MAX_SESSIONS)]
    for session in gone:
        del sessions[session]
    return gone


def _user_facing(agent: Any) -> bool:
    """False for the forks Hermes runs beside the user's agent (memory/skill review, curator,
    `/btw` side questions): they share the user's session id but are not the user's task, so
    their turns neither count nor move. Named by what they are, so that the main agent's own
    marker (`assistant_tool` in 0.18-0.22) may change without switching escalation off."""
    origin = getattr(agent, "_memory_write_origin", None)
    return not (isinstance(origin, str) and origin in _FORKS)


def _session(agent: Any) -> str | None:
    session = getattr(agent, "session_id", None)
    return session if isinstance(session, str) and session else None


def _on_fallback(agent: Any) -> bool:
    return bool(getattr(agent, "_fallback_activated", False))

"""Local→cloud escalation in Hermes (seed 001): what counts as a failed local attempt, and
what to do with hroute's answer. Pure: no I/O, no clock, no Hermes imports.

A **task** is a Hermes session (`agent.session_id`): everything the user does in one
conversation, until `/new` (or a new process) starts another session id. An **attempt** is one
turn (one `run_conversation` call) that ran on the local primary. A failed attempt is reported
to hroute once, with the first reason that applies:

- `user_request`: the user's message starts with `/escalate` or contains one of the configured
  phrases (default "use the cloud model");
- `task_timeout`: the turn took longer than `turn_timeout_s`;
- `repeated_tool_failure`: at least `tool_failures` tool results of the turn were errors (a tool
  that does not exist, or a result that Hermes itself reads as an error: JSON with `error`), or
  Hermes stopped the turn for invalid tool calls;
- `invalid_output`: the turn ended with no answer text, or Hermes marked it failed;
- `no_progress`: Hermes stopped the turn unfinished (iteration budget used up), the answer
  is word for word the previous turn's to the same request, or the turn called the same tool
  with the same arguments `TOOL_LOOP` times.

hroute counts the reports; once the task is escalated for the profile (`max_local_attempts`,
or one `user_request`), the rest of the session runs on the Hermes fallback whose `base_url`
is the one hroute routes the task to.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PAID_POLICIES = ("deny", "allow", "confirm")
DEFAULT_PHRASES = ("use the cloud model",)
# Words that keep a task on the local model (pin it, until `/new`): the user's words about where
# their text may go outrank everything else hroute hears.
DEFAULT_LOCAL_PHRASES = (
    "keep it local",
    "keep this local",
    "keep it on this machine",
    "stay local",
    "local only",
    "locally only",
    "private",
    "confidential",
    "offline",
    "do not share",
    "don't share",
)
ESCALATE_COMMAND = "/escalate"
LOCAL_COMMAND = "/local"
TASK_COMMAND = "/task"
# Tools that touch code or the machine: a task that used one is `coding` (Hermes' names,
# 0.18-0.22); `hroute: {coding_tools: [...]}` adds to them. A task that used no tool is `chat`.
DEFAULT_CODING_TOOLS = (
    "terminal", "process", "execute_code", "code_execution", "read_file", "write_file",
    "patch", "apply_patch", "edit_file", "search_files", "file", "shell", "python",
    "delegate_task", "cronjob",
)  # fmt: skip
# "don't use the cloud", "never send this online", "no remote model", "without the cloud".
_NEGATIONS = frozenset(
    {"don't", "dont", "do not", "never", "no", "not", "without", "avoid", "mustn't", "must not",
     "shouldn't", "should not", "won't", "cannot", "can't", "nor"}
)  # fmt: skip
_CLOUD_WORDS = frozenset(
    {"cloud", "remote", "online", "internet", "paid", "external", "hosted", "api", "openai",
     "anthropic", "claude", "gpt", "gemini", "third-party", "upload", "send", "share"}
)  # fmt: skip
_NEGATION_REACH = 6  # words between a negation and the cloud word it governs
# Hermes' own text for a tool call naming a tool that does not exist (0.18-0.22).
_UNKNOWN_TOOL_MARKERS = ("does not exist. Available tools", "Tool call rejected")


@dataclass(frozen=True)
class Settings:
    """The plugin's escalation settings: `hroute:` in Hermes' config.yaml, or `HROUTE_*`."""

    profile: str | None = None
    paid: str = "deny"  # past a budget: deny (stay local), allow, or confirm (ask the user)
    turn_timeout_s: float | None = None
    tool_failures: int = 2
    phrases: tuple[str, ...] = DEFAULT_PHRASES
    local_phrases: tuple[str, ...] = DEFAULT_LOCAL_PHRASES
    coding_tools: tuple[str, ...] = DEFAULT_CODING_TOOLS

    @property
    def enabled(self) -> bool:
        return bool(self.profile)


def load_settings(
    config: Mapping[str, Any] | None, env: Mapping[str, str] = os.environ
) -> Settings:
    """Settings from config.yaml's `hroute:` block, each overridden by its environment variable
    (`HROUTE_PROFILE`, `HROUTE_PAID`, `HROUTE_TURN_TIMEOUT_S`). Anything unreadable is left at
    its default: escalation is off without a profile."""
    block = config.get("hroute") if isinstance(config, Mapping) else None
    block = block if isinstance(block, Mapping) else {}
    profile = env.get("HROUTE_PROFILE") or block.get("profile")
    paid = str(env.get("HROUTE_PAID") or block.get("paid") or "deny").strip().lower()
    timeout = _positive(env.get("HROUTE_TURN_TIMEOUT_S") or block.get("turn_timeout_s"))
    tool_failures = _positive(block.get("tool_failures"))
    phrases = block.get("escalate_phrases")
    local_phrases = block.get("local_phrases")
    extra_tools = block.get("coding_tools")
    extra = tuple(str(t).strip() for t in extra_tools) if isinstance(extra_tools, list) else ()
    return Settings(
        profile=str(profile).strip() or None if profile else None,
        paid=paid if paid in PAID_POLICIES else "deny",
        turn_timeout_s=timeout,
        tool_failures=int(tool_failures) if tool_failures else 2,
        phrases=(
            tuple(str(p).lower() for p in phrases if str(p).strip())
            if isinstance(phrases, list)
            else DEFAULT_PHRASES
        ),
        local_phrases=(
            tuple(str(p).lower() for p in local_phrases if str(p).strip())
            if isinstance(local_phrases, list)
            else DEFAULT_LOCAL_PHRASES
        ),
        coding_tools=DEFAULT_CODING_TOOLS + tuple(t for t in extra if t),
    )


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


# --- triggers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intent:
    """What the user said about where this task may run: `local` (pin it to the local model
    until `/new`) or `escalate` (run the rest of it on the cloud), and the words that said so."""

    where: str  # "local" | "escalate" | "task" (words: the type the user gave)
    words: str


def _words(text: str) -> list[str]:
    """Lower-case words, with sentence ends kept as tokens (a negation stops at them)."""
    return re.findall(r"[a-z0-9][a-z0-9'-]*|[.;!?]", text.replace("\u2019", "'").lower())


def _contains(words: list[str], phrase: str) -> bool:
    """Whether `phrase` occurs in `words` as whole words (so "private" is not "privateer")."""
    wanted = _words(phrase)
    n = len(wanted)
    return n > 0 and any(words[i : i + n] == wanted for i in range(len(words) - n + 1))


def _negated_cloud(words: list[str]) -> str | None:
    """ "don't use the cloud model", "never send it online", "no remote", "without the API":
    the negation and the cloud word it governs, or None."""
    for i, word in enumerate(words):
        pair = " ".join(words[i : i + 2])
        if pair in _NEGATIONS:
            start, said = i + 2, pair
        elif word in _NEGATIONS:
            start, said = i + 1, word
        else:
            continue
        for later in words[start : start + _NEGATION_REACH]:
            if later in _CLOUD_WORDS:
                return f"{said} ... {later}"
            if later in (".", ";", "!", "?", "but"):
                break
    return None


def intent(message: Any, settings: Settings) -> Intent | None:
    """What the user's message says about where the task may run, or None.

    `/local` and `/escalate` at the start are commands. Otherwise a request to keep the task
    local (a configured privacy phrase such as "private" or "keep it local", or a negated cloud
    word: "don't use the cloud model") wins over any phrase asking for the cloud in the same
    message: a message that says both is never sent to the cloud.
    """
    if not isinstance(message, str):
        return None
    text = " ".join(message.split()).lower()
    if text.startswith(LOCAL_COMMAND) and text[len(LOCAL_COMMAND) : len(LOCAL_COMMAND) + 1] in (
        "",
        " ",
    ):
        return Intent("local", LOCAL_COMMAND)
    if text.startswith(ESCALATE_COMMAND):
        return Intent("escalate", ESCALATE_COMMAND)
    if text.startswith(TASK_COMMAND + " "):
        kind = task_type_arg(text[len(TASK_COMMAND) :])
        if kind:
            return Intent("task", kind)
    words = _words(text)
    negated = _negated_cloud(words)
    if negated:
        return Intent("local", negated)
    private = next((p for p in settings.local_phrases if p and _contains(words, p)), None)
    if private:
        return Intent("local", private)
    asked = next((p for p in settings.phrases if p and _contains(words, p)), None)
    return Intent("escalate", asked) if asked else None


def task_type_arg(raw: str) -> str | None:
    """The type in `/task TYPE` (a word of letters, digits, `_ . -`), or None."""
    word = raw.strip().split(" ", 1)[0].lower() if raw.strip() else ""
    return word if re.fullmatch(r"[a-z0-9_.-]{1,64}", word) else None


def tools_used(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """The names of the tools the assistant called in these messages."""
    names = []
    for message in messages:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(fn, Mapping) and fn.get("name"):
                    names.append(str(fn["name"]))
        elif message.get("role") == "tool" and message.get("name"):
            names.append(str(message["name"]))
    return names


def task_type(current: str | None, used: Sequence[str], settings: Settings) -> str:
    """A task's type after a turn that called `used`: `coding` once it used a tool that
    touches code or the machine (it stays coding), `chat` while it used no tool at all, and
    "" (no type: the profile's escalation as it is) once it used other tools only."""
    if current == "coding" or any(name in settings.coding_tools for name in used):
        return "coding"
    if used:
        return ""
    return "chat" if current in (None, "chat") else current


def user_request(message: Any, settings: Settings) -> str | None:
    """The user's words asking for the cloud model, or None (also when the same message asks
    to keep the task local)."""
    found = intent(message, settings)
    return found.words if found is not None and found.where == "escalate" else None


def tool_error(message: Any) -> str | None:
    """A short description when a tool-result message is an error, else None."""
    if not isinstance(message, Mapping) or message.get("role") != "tool":
        return None
    content = message.get("content")
    if not isinstance(content, str):
        return None
    if any(marker in content for marker in _UNKNOWN_TOOL_MARKERS):
        return f"unknown tool {message.get('name') or '?'!s}"
    try:
        parsed = json.loads(content)
    except ValueError:
        return None
    if isinstance(parsed, Mapping) and parsed.get("error"):
        return f"{message.get('name') or 'tool'}: {str(parsed['error'])[:80]}"
    return None


def turn_messages(messages: Any, user_message: Any = None) -> list[Mapping[str, Any]]:
    """The messages of the latest turn: everything after the user's message of the turn
    (`user_message`; else the last user message). Hermes adds user-role messages of its own
    within a turn ("[Tool loop warning: ...]"): they do not start a new turn."""
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        return []
    rows = [m for m in messages if isinstance(m, Mapping)]
    users = [i for i, m in enumerate(rows) if m.get("role") == "user"]
    if isinstance(user_message, str) and user_message.strip():
        mine = [i for i in users if _text(rows[i].get("content")) == user_message.strip()]
        users = mine or users
    return rows[users[-1] + 1 :] if users else rows


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return " ".join(
            str(p.get("text")) for p in content if isinstance(p, Mapping) and p.get("text")
        ).strip()
    return ""


@dataclass(frozen=True)
class Failure:
    """One failed local attempt, as reported to hroute."""

    reason: str
    detail: str


def failed_attempt(
    result: Any,
    seconds: float,
    settings: Settings,
    *,
    user_message: Any = None,
    previous_response: str | None = None,
    previous_message: Any = None,
) -> Failure | None:
    """Whether a turn (Hermes' `run_conversation` result) was a failed local attempt, and why.

    No progress is the same answer to the same request (`previous_message` and
    `previous_response`: the last turn's), or a loop of the same tool call within the turn;
    "Done." to three different requests is three answers."""
    asked = user_request(user_message, settings)
    if asked:
        return Failure("user_request", f"the user asked for it ({asked!r})")
    if settings.turn_timeout_s is not None and seconds > settings.turn_timeout_s:
        return Failure(
            "task_timeout", f"the turn took {seconds:.0f}s (limit {settings.turn_timeout_s:g}s)"
        )
    result = result if isinstance(result, Mapping) else {}
    error = str(result.get("error") or "")
    messages = turn_messages(result.get("messages"), user_message)
    errors = [e for e in map(tool_error, messages) if e]
    if len(errors) >= settings.tool_failures or "invalid tool call" in error.lower():
        shown = "; ".join(dict.fromkeys(errors)) or error
        return Failure("repeated_tool_failure", f"{len(errors)} tool errors this turn ({shown})")
    response = result.get("final_response")
    text = response.strip() if isinstance(response, str) else ""
    if not text or result.get("failed"):
        return Failure("invalid_output", error[:200] or "the turn ended without an answer")
    if result.get("completed") is False:
        return Failure("no_progress", error[:200] or "Hermes stopped the turn unfinished")
    if (
        previous_response is not None
        and text == previous_response.strip()
        and _same_request(user_message, previous_message)
    ):
        return Failure("no_progress", "the same answer to the same request as the previous turn")
    loop = _tool_loop(messages)
    if loop:
        return Failure("no_progress", loop)
    return None


TOOL_LOOP = 3  # the same tool call (name and arguments) this many times in one turn


def _same_request(message: Any, previous: Any) -> bool:
    if not isinstance(message, str) or not isinstance(previous, str):
        return False
    return " ".join(message.split()).lower() == " ".join(previous.split()).lower()


def _tool_loop(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """`the same tool call N times` when the turn repeated one call `TOOL_LOOP` times."""
    seen: dict[tuple[str, str], int] = {}
    for message in messages:
        if message.get("role") != "assistant":
            continue
        for call in message.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(fn, Mapping):
                continue
            key = (str(fn.get("name")), str(fn.get("arguments")))
            seen[key] = seen.get(key, 0) + 1
            if seen[key] >= TOOL_LOOP:
                return f"the same tool call {key[0]}({key[1][:60]}) {seen[key]} times this turn"
    return None


def closest_name(name: str, known: Sequence[str]) -> str | None:
    """The configured name `name` was most likely meant to be (`Coding` -> `coding`)."""
    folded = {k.lower(): k for k in known}
    if name.lower() in folded:
        return folded[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.6)
    return folded[close[0]] if close else None


def missing_profile(name: str, known: Sequence[str]) -> str:
    """What the plugin says when hroute has no profile `name`."""
    closest = closest_name(name, known)
    return (
        f"hroute: profile {name!r} does not exist in hroute (it has: "
        f"{', '.join(known) or 'none'})"
        + (f"; did you mean {closest!r}?" if closest else "")
        + " Escalation is off until hroute.profile (or HROUTE_PROFILE) names one of them"
    )


# --- decisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do at the start of a turn of an escalated task.

    `action`: `switch` (activate fallback `index`), `stay` (already on it), `local` (stay on
    the local primary: nothing usable past it, or no matching fallback), `ask` (a paid backend
    needs the user's confirmation first), `none` (not escalated: Hermes as usual).
    """

    action: str
    why: str = ""
    index: int | None = None
    url: str | None = None
    help: tuple[str, ...] = field(default=())


def decide(
    answer: Mapping[str, Any] | None,
    chain_urls: Sequence[str | None],
    current_url: str | None,
    on_fallback: bool,
    settings: Settings,
    *,
    confirmed: bool = False,
) -> Decision:
    """From hroute's answer to `route(profile, task=session)`, what the agent does this turn.

    `chain_urls` are the normalised `base_url`s of Hermes' fallback entries, `current_url` the
    agent's, `confirmed` says the user already allowed paid backends for this task.
    """
    if not isinstance(answer, Mapping) or not answer.get("escalated"):
        note = str(answer.get("note") or "") if isinstance(answer, Mapping) else ""
        return Decision("none", note)
    why = str(answer["escalated"])
    chosen = answer.get("backend")
    if chosen is None:
        helps = tuple(str(h) for h in answer.get("help") or ())
        paid_blocked = any("allow_paid" in h for h in helps)
        if paid_blocked and settings.paid == "confirm" and not confirmed:
            return Decision("ask", why, help=helps)
        reasons = "; ".join(
            f"{c.get('backend')}: {c.get('reason')}"
            for c in answer.get("chain") or ()
            if isinstance(c, Mapping) and not c.get("usable") and c.get("reason") != why
        )
        why = f"{why}, but no cloud backend may be used ({reasons})"
        if paid_blocked and settings.paid == "deny":
            why += "; past its budget a paid model needs hroute.paid: allow (or confirm)"
        return Decision("local", why, help=helps)
    url = answer.get("base_url")
    if url not in chain_urls:
        return Decision(
            "local", f"{why}, but no Hermes fallback has hroute's base_url {url} for {chosen}"
        )
    if on_fallback and current_url == url:
        return Decision("stay", why, chain_urls.index(url), url)
    return Decision("switch", why, chain_urls.index(url), url)

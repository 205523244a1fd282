"""The one-line stories events become on stderr and in the journal's MESSAGE."""

from __future__ import annotations

import logging

import pytest

from hroute.systemd.logs import describe, log_event


def test_a_transition_names_both_states_and_why() -> None:
    event = {"event": "backend_down", "backend": "b", "old": "healthy", "new": "unhealthy",
             "reason": "connection", "detail": "refused"}  # fmt: skip
    assert describe(event) == "b: healthy -> unhealthy (connection: refused)"


def test_a_new_reason_for_the_same_state_is_not_told_as_a_change() -> None:
    event = {"event": "backend_down", "backend": "b", "old": "unhealthy", "new": "unhealthy",
             "reason": "hang", "detail": "pid 7 is alive but 3 probes got no answer"}  # fmt: skip
    assert describe(event) == (
        "b: still unhealthy, now (hang: pid 7 is alive but 3 probes got no answer)"
    )


def test_restart_and_fatal_tell_their_detail() -> None:
    detail = "pid 7 exited with code 2 after 0.1s; restarting in 1s"
    assert describe({"event": "restart", "backend": "b", "reason": "exited", "detail": detail}) == (
        f"b: {detail}"
    )
    assert describe({"event": "fatal", "backend": "b", "detail": "giving up"}) == "b: giving up"


@pytest.mark.parametrize(
    ("event", "level"),
    [
        ({"event": "restart", "reason": "hang"}, logging.WARNING),
        ({"event": "restart", "reason": "manual"}, logging.INFO),
        ({"event": "fatal", "reason": "exited"}, logging.ERROR),
        ({"event": "backend_up"}, logging.INFO),
    ],
)
def test_levels(event: dict, level: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="hroute"):
        log_event({"backend": "b", **event})
    assert [r.levelno for r in caplog.records] == [level]


def test_a_change_names_every_backend_it_holds() -> None:
    event = {"event": "cooldown", "backend": "qwen", "server": "ollama", "scope": "server",
             "held": ["qwen", "llama3", "or-a"], "reason": "server_error", "cooldown_s": 30.0}  # fmt: skip
    assert describe(event) == "ollama (qwen, llama3, or-a): cooling down for 30s (server_error)"
    event = {"event": "cooldown", "backend": "llama3", "server": "ollama", "scope": "model",
             "model": "llama3:8b", "held": ["llama3"], "reason": "model_not_found",
             "detail": "model 'llama3:8b' is not installed (installed: qwen3.6:9b)"}  # fmt: skip
    assert describe(event) == (
        "ollama model llama3:8b (llama3): cooling down until a probe finds it "
        "(model_not_found: model 'llama3:8b' is not installed (installed: qwen3.6:9b))"
    )


def test_up_reads_like_the_other_transitions() -> None:
    event = {"event": "backend_up", "backend": "qwen", "old": "unknown", "new": "healthy",
             "reason": None, "detail": "ok"}  # fmt: skip
    assert describe(event) == "qwen: unknown -> healthy"
    event["detail"] = "ok (slots endpoint disabled: no hang check)"
    assert (
        describe(event) == "qwen: unknown -> healthy (ok (slots endpoint disabled: no hang check))"
    )


def test_repeated_error_lines_are_counted_not_written() -> None:
    from hroute.systemd.logs import RepeatFilter

    f = RepeatFilter(burst=3, window_s=3600)

    def rec(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("asyncio", level, __file__, 1, msg, None, None)

    kept = [f.filter(rec("socket.accept() out of system resource")) for _ in range(100)]
    assert kept.count(True) == 3
    assert f.filter(rec("another error"))  # another kind has its own budget
    assert all(f.filter(rec("info line", logging.INFO)) for _ in range(100))
    f._seen[("asyncio", "socket.accept() out of system resource")][0] -= 3600  # window over
    first = rec("socket.accept() out of system resource")
    assert f.filter(first) and "97 more like this left out" in first.getMessage()


def test_a_repeated_identical_event_line_is_told_at_most_once_a_minute() -> None:
    """Issue 20: a loop (a 429 whose reset ended each cooldown at once) logged thousands of
    identical WARNING lines. One identical event line a minute; the next says how many were
    left out. A different line (another backend, another reason) has its own minute."""
    from hroute.systemd.logs import RepeatFilter, describe

    t = [0.0]
    f = RepeatFilter(now=lambda: t[0])
    event = {
        "event": "cooldown",
        "backend": "cloud",
        "reason": "rate_limit",
        "cooldown_s": 0.0,
        "detail": "HTTP 429",
    }

    def rec(ev: dict) -> logging.LogRecord:
        r = logging.LogRecord("hroute", logging.WARNING, __file__, 1, describe(ev), None, None)
        r.hroute_event = ev
        return r

    kept = []
    for _ in range(600):  # ten a second for a minute
        kept.append(f.filter(rec(event)))
        t[0] += 0.1
    assert kept.count(True) == 1
    assert f.filter(rec({**event, "backend": "other"}))  # another line: its own budget
    t[0] += 0.1
    again = rec(event)
    assert f.filter(again) and "599 more like this left out" in again.getMessage()
    info = {"event": "cooldown_end", "backend": "cloud", "reason": "rate_limit", "scope": "server"}
    assert [f.filter(rec(info)) for _ in range(5)].count(True) == 1  # INFO events too

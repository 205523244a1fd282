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

"""Text from outside reaching the daemon's own stderr and the CLI's terminal output, which
need a process. The API's cases (raw keys, numbers, names, task ids, garbage) run in
process, in tests/middle/test_daemon_input.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.faults import config, hroute_cli, still_answers, unprobed
from tests.support.procs import free_port

pytestmark = [pytest.mark.faults, pytest.mark.system]


def test_detail_cannot_forge_log_lines_or_reach_terminals(shared: Daemon) -> None:
    forged = "boom\nCRITICAL hroute: root password is hunter2\x1b[2J\x1b]0;pwned\x07\r\u2028x"
    ok = shared.client().report("a", outcome="failure", reason="server_error", detail=forged)
    assert ok
    line = shared.wait_for_log("a: cooling down")
    assert not any(ln.startswith("CRITICAL") for ln in shared.lines)
    assert "\x1b" not in shared.log and "\x07" not in shared.log and "\u2028" not in shared.log
    assert "boom\\nCRITICAL" in line
    detail = next(e for e in shared.get("/v1/events")[1]["events"] if "boom" in e.get("detail", ""))
    assert "\x1b" not in detail["detail"] and "\n" not in detail["detail"]
    assert "\n" not in shared.backend("a")["detail"] and "\x1b" not in shared.backend("a")["detail"]
    still_answers(shared)


def test_text_from_clients_never_reaches_a_terminal_raw(tmp_path: Path) -> None:
    # A plugin's `version` is shown by `hroute status` when a guard is off.
    evil = "\x1b]0;pwned\x07\x1b[2J\x1b[31m9.9"
    client = {"kind": "hermes", "pid": 4242, "isolation": "host", "guards": {"restore": "off"}}
    with Daemon(tmp_path, config({"b": unprobed(free_port())})) as d:
        body = {"backend": "b", "outcome": "success", "client": {**client, "version": evil}}
        status, answer = d.client().request("POST", "/v1/reports", body)
        assert status == 202, answer
        shown = {
            "status": hroute_cli(d, "status"),
            "events": hroute_cli(d, "events"),
            "watch": hroute_cli(d, "status", "--watch", "--count", "1"),
        }
        assert "hermes" in shown["status"] and "9.9" in shown["status"], shown["status"]
        for what, text in shown.items():
            assert "\x1b" not in text and "\x07" not in text, (what, text)
        still_answers(d)

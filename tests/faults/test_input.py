"""Secrets and text from outside: refused or made harmless, never stored or echoed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hroute.client import fingerprint
from tests.support.daemon import Daemon, wait_until
from tests.support.faults import (
    config,
    files_text,
    hroute_cli,
    post_raw_json,
    still_answers,
    unprobed,
)
from tests.support.procs import free_port

pytestmark = [pytest.mark.faults, pytest.mark.system]

RAW_KEY = "sk-live-0123456789abcdefSECRET"


def test_raw_key_as_credential_is_refused_and_never_kept(shared: Daemon) -> None:
    body = {"backend": "a", "outcome": "failure", "reason": "rate_limit", "credential": RAW_KEY}
    status, answer = shared.client().request("POST", "/v1/reports", body)
    assert status == 400 and "credential" in answer["error"]["message"]
    assert RAW_KEY not in str(answer)
    assert RAW_KEY not in str(shared.get("/v1/events")[1])
    assert RAW_KEY not in files_text(shared)
    still_answers(shared)


def test_raw_key_in_a_usable_query_is_refused_not_echoed(shared: Daemon) -> None:
    status, answer = shared.get(f"/v1/usable?backend=a&credential={RAW_KEY}")
    assert status == 400 and RAW_KEY not in str(answer)
    still_answers(shared)


def test_fingerprint_is_the_documented_form_and_cools_only_that_key(shared: Daemon) -> None:
    fp = fingerprint("sk-some-pool-key-1")
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", fp)
    body = {"backend": "b", "outcome": "failure", "reason": "rate_limit", "credential": fp}
    status, _ = shared.client().request("POST", "/v1/reports", body)
    assert status == 202
    assert shared.client().usable("b", credential=fp).usable is False
    assert shared.client().usable("b", credential=fingerprint("another")).usable is True
    still_answers(shared)


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


def test_long_detail_is_cut(shared: Daemon) -> None:
    assert shared.client().report("b", outcome="failure", reason="timeout", detail="y" * 2000)
    events = shared.get("/v1/events")[1]["events"]
    longest = max(len(e.get("detail", "")) for e in events)
    assert longest <= 300
    still_answers(shared)


def test_free_text_reasons_are_refused_and_make_no_metric_series(shared: Daemon) -> None:
    before = shared.get_text("/metrics").count("hroute_reports_total{")
    for i in range(50):
        status, answer = shared.client().request(
            "POST", "/v1/reports", {"backend": "a", "outcome": "failure", "reason": f"why-{i}"}
        )
        assert status == 400 and f"why-{i}" not in str(answer)
    metrics = shared.get_text("/metrics")
    assert "why-" not in metrics
    assert metrics.count("hroute_reports_total{") == before
    still_answers(shared)


def test_hermes_finer_reason_is_taken_and_labelled_by_its_class(shared: Daemon) -> None:
    assert shared.client().report("b", outcome="failure", reason="thinking_signature")
    metrics = shared.get_text("/metrics")
    assert 'reason="format_error"' in metrics and "thinking_signature" not in metrics
    still_answers(shared)


@pytest.mark.parametrize(
    "text",
    [
        '{"backend":"a","outcome":"failure","reason":"rate_limit","retry_after_s":true}',
        '{"backend":"a","outcome":"failure","reason":"rate_limit","retry_after_s":"30"}',
        '{"backend":"a","outcome":"failure","reason":"rate_limit","retry_after_s":NaN}',
        '{"backend":"a","outcome":"failure","reason":"rate_limit","retry_after_s":Infinity}',
        '{"backend":"a","outcome":"failure","reason":"server_error","status_code":true}',
    ],
    ids=["bool", "string", "nan", "infinity", "status-bool"],
)
def test_numbers_must_be_numbers(shared: Daemon, text: str) -> None:
    status, answer = post_raw_json(shared, "/v1/reports", text)
    assert status == 400, answer
    still_answers(shared)


def test_task_ids_with_control_characters_are_refused(shared: Daemon) -> None:
    for task in ("t%0ACRITICAL%20forged", "t%1B%5B31m", "x" * 300):
        status, answer = shared.client().request(
            "POST", f"/v1/tasks/{task}/failures", {"reason": "no_progress"}
        )
        assert status == 400, answer
    assert "\x1b" not in shared.log and not any(ln.startswith("CRITICAL") for ln in shared.lines)
    still_answers(shared)


def test_garbage_on_the_socket_gets_an_error_not_a_crash(shared: Daemon) -> None:
    from tests.support.faults import raw_request

    for junk in (b"\x00\xff" * 100 + b"\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/reports"):
        raw_request(shared.socket, junk, timeout_s=2)
    wait_until(lambda: shared.proc.poll() is None, 1)
    still_answers(shared)


def test_a_status_code_without_a_reason_is_classified_as_a_probe_would_be(tmp_path: Path) -> None:
    # The API documents `status_code`: a 429 alone is a rate limit on that key, not "unknown".
    with Daemon(tmp_path, config({"b": unprobed(free_port())})) as d:
        _status_code_only(d)


def _status_code_only(shared: Daemon) -> None:
    fp = fingerprint("status-code-only")
    body = {"backend": "b", "outcome": "failure", "status_code": 429, "credential": fp}
    status, answer = shared.client().request("POST", "/v1/reports", body)
    assert status == 202, answer
    assert shared.client().usable("b", credential=fp).usable is False
    assert shared.client().usable("b", credential=fingerprint("other-key")).usable is True
    assert 'reason="rate_limit"' in shared.get_text("/metrics")
    # A 400 blames the request, as a probe's would: the backend stays usable.
    body = {"backend": "b", "outcome": "failure", "status_code": 400, "credential": fp}
    status, answer = shared.client().request("POST", "/v1/reports", body)
    assert status == 202 and answer["reason"] != "unknown", answer
    still_answers(shared)


def test_names_in_reports_are_bounded(shared: Daemon) -> None:
    # 256 reports with 60 KB model names made a 30 MB snapshot and state file.
    huge = "m" * 60_000
    for field in ("model", "backend", "base_url", "provider"):
        body = {"backend": "a", "outcome": "failure", "reason": "timeout", field: huge}
        status, answer = shared.client().request("POST", "/v1/reports", body)
        assert status == 400, (field, answer)
        assert field in answer["error"]["message"] and "256" in answer["error"]["message"]
        assert huge not in str(answer)
    ok = {"backend": "a", "outcome": "success", "model": "m" * 256}
    assert shared.client().request("POST", "/v1/reports", ok)[0] == 202
    assert len(shared.socket.with_suffix(".snapshot").read_bytes()) < 1_000_000
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

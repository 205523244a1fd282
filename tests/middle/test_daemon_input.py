"""Hostile and broken input through the whole daemon in process: secrets refused and never
kept, outside text made harmless, numbers that must be numbers, names and state bounded.
Each case ends by checking the daemon still answers. (The subprocess fault matrix in
tests/faults keeps what needs a process: signals, descriptors, users, terminals.)"""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

from hroute.client import fingerprint
from hroute.core.cooldowns import MAX_SCOPES as MAX_CREDENTIALS
from hroute.core.snapshot_format import SnapshotFile
from tests.support.inprocess import InProcessDaemon

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

CONFIG = """
defaults:
  probe: {interval_s: 30, timeout_s: 0.5, fall: 1, rise: 1, jitter: 0}
  cooldown: {base_s: 30, max_s: 300}
backends:
  a: {kind: openai, base_url: 'http://127.0.0.1:9', probe: {enabled: false}}
  b: {kind: openai, base_url: 'http://127.0.0.1:10', probe: {enabled: false}}
profiles:
  p: {chain: [a, b]}
"""

RAW_KEYS = [
    "sk-live-0123456789abcdefSECRET",
    "sk-ant-api03-0123456789abcdefghijklmnop",
    "0123456789abcdef0123456789abcdef",
    "sha256:0123",  # a fingerprint's prefix with too few digits is not one
    "Bearer sk-or-v1-0123456789abcdef",
]


@pytest.fixture
async def daemon(tmp_path: Path):
    async with InProcessDaemon(tmp_path, CONFIG) as d:
        yield d
        await d.still_answers()


@pytest.mark.parametrize("key", RAW_KEYS)
async def test_a_raw_key_as_credential_is_refused_and_never_kept(daemon, key) -> None:
    body = {"backend": "a", "reason": "rate_limit", "credential": key}
    status, answer = await daemon.report(**body)
    assert status == 400 and "credential" in answer["error"]["message"]
    assert key not in str(answer)
    assert key not in str(await daemon.events())
    assert key not in daemon.files_text()
    assert (await daemon.usable("a"))["usable"] is True


@pytest.mark.parametrize("key", RAW_KEYS[:3])
async def test_a_raw_key_in_a_usable_query_is_refused_not_echoed(daemon, key) -> None:
    status, answer = await daemon.get(f"/v1/usable?backend=a&credential={key}")
    assert status == 400 and key not in str(answer)
    assert key not in daemon.log


async def test_a_fingerprint_cools_only_that_key_and_only_for_its_time(daemon) -> None:
    fp = fingerprint("sk-some-pool-key-1")
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", fp)
    status, _ = await daemon.report("b", reason="rate_limit", credential=fp, retry_after_s=40)
    assert status == 202
    assert (await daemon.usable("b", credential=fp))["usable"] is False
    assert (await daemon.usable("b", credential=fingerprint("another")))["usable"] is True
    assert (await daemon.usable("b"))["usable"] is True  # callers that name no key
    await daemon.clock.advance(41)
    assert (await daemon.usable("b", credential=fp))["usable"] is True


FORGED = "boom\nCRITICAL hroute: root password is hunter2\x1b[2J\x1b]0;pwned\x07\r\u2028x"


async def test_detail_cannot_forge_log_lines_or_reach_terminals(daemon) -> None:
    status, _ = await daemon.report("a", reason="server_error", detail=FORGED)
    assert status == 202
    line = await daemon.wait_for_log("a: cooling down")
    assert "boom\\nCRITICAL" in line
    assert not any(ln.startswith("CRITICAL") for ln in daemon.log.splitlines())
    for bad in ("\x1b", "\x07", "\u2028"):
        assert bad not in daemon.log
    [event] = [e for e in await daemon.events() if "boom" in e.get("detail", "")]
    assert "\x1b" not in event["detail"] and "\n" not in event["detail"]
    shown = (await daemon.backend("a"))["detail"]
    assert "\n" not in shown and "\x1b" not in shown


@pytest.mark.parametrize("length", [301, 2000])
async def test_a_long_detail_is_cut(daemon, length) -> None:
    status, _ = await daemon.report("b", reason="timeout", detail="y" * length)
    assert status == 202
    assert max(len(e.get("detail", "")) for e in await daemon.events()) <= 300


async def test_a_detail_past_the_limit_is_refused(daemon) -> None:
    status, answer = await daemon.report("b", reason="timeout", detail="y" * 2001)
    assert status == 400 and "detail" in answer["error"]["message"]


async def test_free_text_reasons_are_refused_and_make_no_metric_series(daemon) -> None:
    before = (await daemon.get_text("/metrics")).count("hroute_reports_total{")
    for i in range(20):
        status, answer = await daemon.report("a", reason=f"why-{i}")
        assert status == 400 and f"why-{i}" not in str(answer)
    metrics = await daemon.get_text("/metrics")
    assert "why-" not in metrics
    assert metrics.count("hroute_reports_total{") == before


async def test_a_finer_hermes_reason_is_taken_and_labelled_by_its_class(daemon) -> None:
    status, _ = await daemon.report("b", reason="thinking_signature")
    assert status == 202
    metrics = await daemon.get_text("/metrics")
    assert 'reason="format_error"' in metrics and "thinking_signature" not in metrics


@pytest.mark.parametrize(
    "text",
    [
        '{"backend":"a","outcome":"failure","reason":"rate_limit","retry_after_s":true}',
        '{"backend":"a","outcome":"failure","reason":"rate_limit","retry_after_s":"30"}',
        '{"backend":"a","outcome":"failure","reason":"rate_limit","retry_after_s":NaN}',
        '{"backend":"a","outcome":"failure","reason":"rate_limit","retry_after_s":Infinity}',
        '{"backend":"a","outcome":"failure","reason":"rate_limit","retry_after_s":-1}',
        '{"backend":"a","outcome":"failure","reason":"rate_limit","retry_after_s":1e9}',
        '{"backend":"a","outcome":"failure","reason":"server_error","status_code":true}',
        '{"backend":"a","outcome":"failure","reason":"server_error","status_code":"503"}',
        '{"backend":"a","outcome":"failure","reason":"server_error","status_code":99}',
        '{"backend":"a","outcome":"failure","reason":"server_error","status_code":503.5}',
    ],
    ids=[
        "bool",
        "string",
        "nan",
        "infinity",
        "negative",
        "past-a-day",
        "status-bool",
        "status-string",
        "status-too-small",
        "status-fraction",
    ],
)
async def test_numbers_must_be_numbers_in_range(daemon, text: str) -> None:
    status, answer = await daemon.post_raw_json("/v1/reports", text)
    assert status == 400, answer
    assert (await daemon.usable("a"))["usable"] is True


@pytest.mark.parametrize(
    "text",
    ["{not json", "[1, 2]", '"a string"', "null", '{"backend": "a"}', '{"outcome": "maybe"}'],
    ids=["not-json", "array", "string", "null", "no-outcome", "bad-outcome"],
)
async def test_bodies_that_are_not_reports_are_refused(daemon, text: str) -> None:
    status, answer = await daemon.post_raw_json("/v1/reports", text)
    assert status == 400 and "error" in answer
    assert await daemon.events("cooldown") == []


@pytest.mark.parametrize("task", ["t%0ACRITICAL%20forged", "t%1B%5B31m", "x" * 300, "t%00"])
async def test_task_ids_with_control_characters_or_too_long_are_refused(daemon, task) -> None:
    status, answer = await daemon.post(f"/v1/tasks/{task}/failures", {"reason": "no_progress"})
    assert status == 400, answer
    assert "\x1b" not in daemon.log
    assert not any(ln.startswith("CRITICAL") for ln in daemon.log.splitlines())


@pytest.mark.parametrize(
    "junk",
    [b"\x00\xff" * 100 + b"\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"POST /v1/reports"],
    ids=["binary", "http-9", "cut-short"],
)
async def test_garbage_on_the_socket_gets_an_error_not_a_crash(daemon, junk: bytes) -> None:
    answer = await daemon.raw(junk, eof=True)
    assert answer == b"" or re.match(rb"HTTP/1\.1 (4\d\d|505) ", answer), answer


async def test_a_status_code_without_a_reason_is_classified_as_a_probe_would_be(daemon) -> None:
    fp = fingerprint("status-code-only")
    status, answer = await daemon.report("b", status_code=429, credential=fp)
    assert status == 202, answer
    assert (await daemon.usable("b", credential=fp))["usable"] is False
    assert (await daemon.usable("b", credential=fingerprint("other-key")))["usable"] is True
    assert 'reason="rate_limit"' in await daemon.get_text("/metrics")
    # A 400 blames the request, as a probe's would: the backend stays usable.
    status, answer = await daemon.report("a", status_code=400, credential=fp)
    assert status == 202 and answer["reason"] != "unknown", answer
    assert (await daemon.usable("a", credential=fp))["usable"] is True


@pytest.mark.parametrize("field", ["model", "backend", "base_url", "provider"])
async def test_names_in_reports_are_bounded(daemon, field: str) -> None:
    # 256 reports with 60 KB model names made a 30 MB snapshot and state file.
    huge = "m" * 60_000
    body = {"backend": "a", "outcome": "failure", "reason": "timeout", field: huge}
    status, answer = await daemon.post("/v1/reports", body)
    assert status == 400, answer
    assert field in answer["error"]["message"] and "256" in answer["error"]["message"]
    assert huge not in str(answer)


async def test_a_name_at_the_bound_is_taken(daemon) -> None:
    status, _ = await daemon.post(
        "/v1/reports", {"backend": "a", "outcome": "success", "model": "m" * 256}
    )
    assert status == 202


async def test_distinct_credentials_are_bounded(daemon) -> None:
    def burst() -> None:
        client = daemon.client()
        for i in range(MAX_CREDENTIALS + 20):
            fp = fingerprint(f"key-{i}")
            assert client.report("a", reason="rate_limit", credential=fp, retry_after_s=600)

    await anyio.to_thread.run_sync(burst)
    assert (await daemon.backend("a"))["credential_cooldowns"] <= MAX_CREDENTIALS
    last = fingerprint(f"key-{MAX_CREDENTIALS + 19}")
    assert (await daemon.usable("a", credential=last))["usable"] is False  # the newest kept
    snapshot = daemon.socket.with_suffix(".snapshot")
    await daemon.until(
        lambda: len(SnapshotFile(snapshot.read_bytes()).backend("a")["creds"]) > 0,
        advance_s=1,
        what="the snapshot to show the cooled keys",
    )
    assert len(SnapshotFile(snapshot.read_bytes()).backend("a")["creds"]) <= MAX_CREDENTIALS


async def test_distinct_task_ids_are_all_taken(daemon) -> None:
    def burst() -> None:
        client = daemon.client()
        for i in range(300):
            status, _ = client.request(
                "POST", f"/v1/tasks/task-{i}/failures", {"reason": "no_progress"}
            )
            assert status == 202

    await anyio.to_thread.run_sync(burst)
    status, answer = await daemon.post("/v1/tasks/task-0/failures", {"reason": "no_progress"})
    assert status == 202 and answer["failures"] == 2, answer

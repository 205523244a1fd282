"""Hot reload by SIGHUP and `hroute reload`, under a query storm, and durable state across
kill -9: what needs a process. The watcher's cases (write in place, rename, symlink swap,
rejected and deleted files) run in process, in tests/middle/test_daemon_reload.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_until

pytestmark = pytest.mark.system

HEAD = """defaults:
  probe: {interval_s: 30, timeout_s: 0.5, fall: 1, rise: 1, jitter: 0}
  cooldown: {base_s: 30, max_s: 300}
"""


def cfg(backends: dict[str, int], profile: list[str] | None = None) -> str:
    lines = [HEAD, "backends:"]
    lines += [
        f"  {n}: {{kind: openai, base_url: 'http://127.0.0.1:{port}', probe: {{enabled: false}}}}"
        for n, port in backends.items()
    ]
    if profile:
        lines.append(f"profiles:\n  p: {{chain: [{', '.join(profile)}]}}")
    return "\n".join(lines) + "\n"


def names(d: Daemon) -> set[str]:
    return {b["name"] for b in d.get("/v1/backends")[1]["backends"]}


def test_hroute_reload_and_sighup(tmp_path: Path) -> None:
    with Daemon(tmp_path, cfg({"a": 9})) as d:
        cli = [sys.executable, "-m", "hroute.cli", "--socket", str(d.socket), "reload"]
        ok = subprocess.run(cli, capture_output=True, text=True, timeout=20, env=d.env)
        assert ok.returncode == 0 and "reloaded" in ok.stdout
        # Bad file: `hroute reload` fails and prints why; the API says 422.
        bad = "backends:\n  a: {kind: openai, base_url: 'http://127.0.0.1:9', bogus: 1}\n"
        d.config_path.write_text(bad)
        d.wait_for_log("config rejected")
        failed = subprocess.run(cli, capture_output=True, text=True, timeout=20, env=d.env)
        assert failed.returncode == 1 and "backends.a.bogus (line 2)" in failed.stderr
        status, body = d.client().request("POST", "/v1/reload")
        assert status == 422 and body["error"]["code"] == "config_rejected"
        # SIGHUP applies a good file.
        d.config_path.write_text(cfg({"a": 9, "h": 15}))
        wait_until(lambda: names(d) == {"a", "h"}, what="the watcher")  # the watcher may win...
        d.config_path.write_text(cfg({"a": 9, "h": 15}).replace("interval_s: 30", "interval_s: 29"))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log("(SIGHUP)")  # ...but SIGHUP reloads too
        metrics = d.get_text("/metrics")
        assert 'hroute_config_reloads_total{result="rejected"} 3.0' in metrics
        assert 'hroute_config_reloads_total{result="applied"}' in metrics


def test_query_storm_during_reloads_never_errs_nor_mixes(tmp_path: Path) -> None:
    a = cfg({"a1": 9, "a2": 10}, ["a1", "a2"])
    b = cfg({"b1": 11, "b2": 12}, ["b1", "b2"])
    with Daemon(tmp_path, a) as d:
        errors: list[str] = []
        seen: set[str] = set()
        stop = threading.Event()

        def storm() -> None:
            client = d.client(budget_s=10)
            while not stop.is_set():
                try:
                    status, body = client.request("GET", "/v1/route?profile=p")
                    chain = {c["backend"][0] for c in body["chain"]}
                    if status != 200 or len(chain) != 1:
                        errors.append(f"{status} {body}")
                    seen.update(chain)
                    status, body = client.request("GET", "/v1/backends")
                    if status != 200 or len({x["name"][0] for x in body["backends"]}) != 1:
                        errors.append(f"{status} {body}")
                except Exception as exc:
                    errors.append(repr(exc))

        threads = [threading.Thread(target=storm) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(10):
                d.config_path.write_text(b if i % 2 == 0 else a)
                want = {"b1", "b2"} if i % 2 == 0 else {"a1", "a2"}
                wait_until(lambda w=want: names(d) == w, 30, what=f"reload {i}")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        assert errors == []
        assert seen == {"a", "b"}


def test_cooldown_survives_kill_9_during_a_report_storm(tmp_path: Path) -> None:
    text = cfg({"cloud": 9, "other": 10})
    d = Daemon(tmp_path, text).start()
    try:
        client = d.client()
        assert client.report("cloud", outcome="failure", reason="rate_limit", retry_after_s=600)
        stop = threading.Event()

        def storm() -> None:
            c = d.client(budget_s=0.5)
            i = 0
            while not stop.is_set():
                c.report("other", outcome="failure", reason="rate_limit", retry_after_s=1 + i % 50)
                c.report("other", outcome="success")
                i += 1

        t = threading.Thread(target=storm)
        t.start()
        wait_until(lambda: (d.state_dir / "state.json").exists(), what="the state file")
        # The saved file knows both cooldowns (records are saved by identity, not name).
        wait_until(
            lambda: (d.state_dir / "state.json").read_text().count('"rate_limit"') >= 2,
            what="the storm's cooldown to be saved",
        )
        d.stop(signal.SIGKILL)
        stop.set()
        t.join(10)
    finally:
        d.stop()
    saved = json.loads((d.state_dir / "state.json").read_text())  # never torn
    assert saved["format"] == "hroute-state/1"
    again = Daemon(tmp_path, text).start()
    try:
        cloud = again.backend("cloud")
        assert cloud["usable"] is False and cloud["reason"] == "rate_limit"
        assert 500 < cloud["cooldown_remaining_s"] <= 600
        again.wait_for_log("restored health of 2 backends")
    finally:
        again.stop()

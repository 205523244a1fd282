"""Hot reload through the real watcher, SIGHUP and the API; durable state across kill -9."""

from __future__ import annotations

import json
import os
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


def test_write_in_place_adds_a_backend_and_keeps_health_of_the_unchanged(tmp_path: Path) -> None:
    with Daemon(tmp_path, cfg({"a": 9})) as d:
        d.client().report("a", outcome="failure", reason="rate_limit", retry_after_s=300)
        before = d.backend("a")["cooldown_remaining_s"]
        d.config_path.write_text(cfg({"a": 9, "b": 10}).replace("base_s: 30", "base_s: 31"))
        wait_until(lambda: names(d) == {"a", "b"}, what="backend b to appear")
        line = d.wait_for_log("reloaded: +1 backend, -0, 0 changed, 0 restarts")
        assert "file changed" in line
        a = d.backend("a")
        assert a["usable"] is False and a["reason"] == "rate_limit"
        # The same cooldown, still running (60: the most a test may last, never a busy machine)
        assert 0 < before - a["cooldown_remaining_s"] < 60


def test_changed_identity_starts_fresh(tmp_path: Path) -> None:
    with Daemon(tmp_path, cfg({"a": 9})) as d:
        d.client().report("a", outcome="failure", reason="server_error")
        assert d.backend("a")["usable"] is False
        d.config_path.write_text(cfg({"a": 11}))
        wait_until(lambda: d.backend("a")["usable"], what="a fresh record for the new URL")


def test_write_and_rename_is_seen(tmp_path: Path) -> None:
    with Daemon(tmp_path, cfg({"a": 9})) as d:
        tmp = d.config_path.with_name(".hroute.yaml.swp")
        tmp.write_text(cfg({"a": 9, "c": 12}))
        os.replace(tmp, d.config_path)
        wait_until(lambda: names(d) == {"a", "c"}, what="the renamed file to be applied")


def test_symlink_swap_is_seen(tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    (releases / "v1.yaml").write_text(cfg({"a": 9}))
    (releases / "v2.yaml").write_text(cfg({"a": 9, "v2": 13}))
    d = Daemon(tmp_path, "")
    d.config_path.unlink()
    d.config_path.symlink_to(releases / "v1.yaml")
    with d:
        assert names(d) == {"a"}
        new_link = tmp_path / ".next"
        new_link.symlink_to(releases / "v2.yaml")
        os.replace(new_link, d.config_path)  # what config-management tools do
        wait_until(lambda: names(d) == {"a", "v2"}, what="the swapped symlink to be applied")


def test_garbage_and_deleted_files_keep_the_last_good_config(tmp_path: Path) -> None:
    with Daemon(tmp_path, cfg({"a": 9})) as d:
        d.config_path.write_text(cfg({"a": 9}) + "  b: {kind: nonsense, base_url: 'http://x'}\n")
        line = d.wait_for_log("config rejected")
        assert "backends.b.kind (line 7)" in d.log and "valid:" in d.log
        assert "ERROR" in line
        d.config_path.unlink()
        wait_until(lambda: d.log.count("config rejected") >= 2, what="the deletion to be rejected")
        assert "file not found" in d.log
        assert names(d) == {"a"} and d.client().usable("a").usable
        metrics = d.client().request("GET", "/v1/version")  # still serving
        assert metrics[0] == 200
        events = [e["event"] for e in d.get("/v1/events")[1]["events"]]
        assert events.count("config_rejected") >= 2
        d.config_path.write_text(cfg({"a": 9, "back": 14}))
        wait_until(lambda: names(d) == {"a", "back"}, what="a good file to be applied again")


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
                except Exception as exc:  # noqa: BLE001
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

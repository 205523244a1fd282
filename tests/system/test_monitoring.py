"""The shipped alerting rules and dashboard: promtool, a real Prometheus, the daemon's metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.daemon import Daemon, wait_until
from tests.support.procs import free_port
from tests.support.prometheus import require_binary

pytestmark = pytest.mark.system

MONITORING = Path(__file__).resolve().parents[2] / "packaging" / "monitoring"
RULES = MONITORING / "hroute-alerts.yml"
RULE_TESTS = MONITORING / "hroute-alerts.test.yml"
DASHBOARD = MONITORING / "hroute-dashboard.json"
FAKE_LLAMA = str(Path(__file__).resolve().parents[1] / "support" / "fake_llama.py")


def daemon_config(llama_port: int, metrics_port: int | None = None) -> str:
    """Every kind of metric present: a supervised server, a paid backend, budgets, cluster."""
    command = [sys.executable, FAKE_LLAMA, "--port", str(llama_port)]
    daemon = f"daemon: {{metrics_listen: '127.0.0.1:{metrics_port}'}}\n" if metrics_port else ""
    return daemon + "\n".join(
        [
            "backends:",
            "  loc:",
            "    kind: llama-server",
            f"    base_url: 'http://127.0.0.1:{llama_port}'",
            "    probe: {interval_s: 0.2, timeout_s: 0.5, fall: 1, rise: 1, jitter: 0}",
            f"    supervise: {json.dumps({'command': command, 'stop_timeout_s': 2})}",
            "  paid:",
            "    kind: openai",
            "    base_url: 'http://127.0.0.1:9/v1'",
            "    probe: {enabled: false}",
            "    price: {input_per_mtok: 1, output_per_mtok: 2}",
            "profiles:",
            "  coding: {chain: [loc, paid]}",
            "budgets: {daily_usd: 5, per_backend_daily_usd: {paid: 2}}",
            # Nobody listens there: the cluster's metrics are exported, as disconnected.
            "cluster: {redis_url: 'unix:///nonexistent/hroute-test-redis.sock'}",
            "",
        ]
    )


def test_promtool_checks_the_rules() -> None:
    promtool = require_binary("promtool")
    out = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    promtool = require_binary("promtool")
    out = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=MONITORING,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The rule tests mean something: a rule that never fires makes them fail."""
    promtool = require_binary("promtool")
    broken = RULES.read_text().replace("for: 10m", "for: 1000m", 1)
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    out = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "HrouteBackendDown" in out.stdout + out.stderr


def metric_names(text: str) -> set[str]:
    """Names with samples, and those announced by # HELP (a labelled counter with no samples
    yet), with a histogram's series."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def referenced_metrics() -> set[str]:
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    return {m for e in exprs for m in re.findall(r"\bhroute_[a-z_]+", e)}


def test_rules_and_dashboard_name_only_metrics_the_daemon_exports(tmp_path: Path) -> None:
    referenced = referenced_metrics()
    assert {"hroute_process_restarts_total", "hroute_budget_daily_limit_usd"} <= referenced
    with Daemon(tmp_path, daemon_config(free_port())) as d:
        wait_until(
            lambda: d.backend("loc")["process"]["state"] == "running", 15, what="loc running"
        )
        exported = metric_names(d.get_text("/metrics"))
    assert referenced - exported == set(), f"not exported: {referenced - exported}"


def test_dashboard_is_importable_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert set(p["gridPos"]) == {"x", "y", "w", "h"}
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            body = json.load(r)
    except OSError:
        return []
    return body["data"]["result"] if body.get("status") == "success" else []


@pytest.mark.timeout(90)
def test_a_real_prometheus_scrapes_the_daemon_and_loads_the_rules(tmp_path: Path) -> None:
    prometheus = require_binary("prometheus")
    metrics_port, prom_port = free_port(), free_port()
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "hroute",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    with Daemon(tmp_path, daemon_config(free_port(), metrics_port)) as d:
        d.wait_state("loc", "healthy", 15)
        log = (tmp_path / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--web.enable-lifecycle",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            result = wait_until(
                lambda: query(prom_port, 'hroute_backend_usable{job="hroute",backend="loc"}'),
                45,
                interval_s=0.2,
                what="prometheus to have scraped hroute_backend_usable",
            )
            assert result[0]["value"][1] == "1"
            assert result[0]["metric"]["instance"] == f"127.0.0.1:{metrics_port}"
            limit = query(prom_port, 'hroute_budget_daily_limit_usd{backend="paid"}')
            assert limit and limit[0]["value"][1] == "2"
            with urllib.request.urlopen(
                f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=2
            ) as r:
                groups = json.load(r)["data"]["groups"]
            names = {rule["name"] for g in groups for rule in g["rules"]}
            assert {"HrouteBackendDown", "HrouteNotScraped", "HrouteBudgetNearLimit"} <= names
            assert all(rule["health"] != "err" for g in groups for rule in g["rules"])
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()


@pytest.mark.timeout(240)
def test_make_install_carries_them_and_uninstall_removes_them(tmp_path: Path) -> None:
    """install.sh (what `make install` and the .deb run) puts them under share/hroute."""
    promtool = require_binary("promtool")
    repo = MONITORING.parents[1]
    env = {**os.environ, "DESTDIR": str(tmp_path / "stage"), "PREFIX": "/usr"}
    script = str(repo / "packaging" / "install.sh")
    done = subprocess.run([script, "install"], env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-2000:]
    venv = tmp_path / "stage" / "usr" / "lib" / "hroute"
    assert list(venv.glob("lib/python3*/site-packages/redis/asyncio")), "no hroute[cluster]"
    installed = tmp_path / "stage" / "usr" / "share" / "hroute" / "monitoring"
    assert sorted(p.name for p in installed.iterdir()) == [
        "hroute-alerts.test.yml",
        "hroute-alerts.yml",
        "hroute-dashboard.json",
    ]
    out = subprocess.run(
        [promtool, "test", "rules", "hroute-alerts.test.yml"],
        cwd=installed,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    done = subprocess.run(
        [script, "uninstall"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not installed.parent.exists()

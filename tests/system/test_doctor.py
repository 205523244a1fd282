"""`hroute doctor` against real misconfigurations: a user outside the socket's group, a Hermes
without the plugin, a base_url that is a near miss. Real daemon, real users, real Pythons."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon
from tests.support.fakebackend import FakeBackend
from tests.support.procs import free_port
from tests.support.users import as_nobody, installed_for_everyone, shared_tmpdir, throwaway_group

pytestmark = pytest.mark.system

# A Hermes of the 0.22 kind: restore and fallback as the plugin knows them, auxiliary moved.
FAKE_HERMES_MODULES = {
    "agent/__init__.py": "",
    "agent/agent_runtime_helpers.py": "def restore_primary_runtime(agent):\n    return True\n",
    "agent/chat_completion_helpers.py": (
        "def try_activate_fallback(agent, reason=None, reset_at=None):\n    return False\n"
        "def _fallback_entry_key(entry):\n    return entry\n"
    ),
    "agent/auxiliary_client.py": "def _resolve_auto_route(main_runtime, task):\n    return None\n",
}


def hroute(*args: str) -> list[str]:
    return [sys.executable, "-m", "hroute.cli", *args]


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=45, env=env)


def lines(out: str) -> dict[str, str]:
    """`check: message` by check name (FAIL/ok/... kept in front)."""
    found = {}
    for line in out.splitlines():
        if ": " in line and not line.startswith(" "):
            mark, rest = line[:4].strip(), line[5:]
            name, _, message = rest.partition(": ")
            found[name] = f"{mark} {message}"
    return found


def config(url: str, dead_port: int) -> str:
    return "\n".join(
        [
            "backends:",
            f"  local: {{kind: openai, base_url: '{url}', probe: {{interval_s: 0.2, jitter: 0}}}}",
            f"  spare: {{kind: openai, base_url: 'http://127.0.0.1:{dead_port}', "
            "probe: {interval_s: 0.2, fall: 1, jitter: 0}}",
            "profiles:",
            "  coding: {chain: [local, spare]}",
            "",
        ]
    )


def hermes_home(tmp: Path, base_url: str, *, enabled: bool = True, **extra: Any) -> Path:
    home = tmp / "hermes"
    home.mkdir(exist_ok=True)
    doc = {
        "model": {"provider": "custom", "base_url": base_url, "default": "m"},
        "plugins": {"enabled": ["hroute"] if enabled else []},
        **extra,
    }
    (home / "config.yaml").write_text(json.dumps(doc))  # JSON is YAML
    return home


def fake_hermes(bindir: Path, python: str) -> dict[str, str]:
    """A `hermes` on PATH whose #! names `python`; the environment that finds it."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "hermes"
    script.write_text(f"#!{python}\nprint('hermes')\n")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    with FakeBackend(kind="openai", models=["m"]) as fb:
        yield fb


@pytest.fixture
def daemon(tmp_path: Path, backend: FakeBackend) -> Iterator[Daemon]:
    with Daemon(tmp_path, config(backend.base_url, free_port())) as d:
        d.wait_state("local", "healthy")
        d.wait_state("spare", "unhealthy")
        yield d


def test_a_good_setup_passes_and_says_which_guards_are_on(
    tmp_path: Path, daemon: Daemon, backend: FakeBackend
) -> None:
    # Hermes' URL spelt another way (localhost, /v1/) is still the same backend.
    home = hermes_home(tmp_path, f"http://localhost:{backend.port}/v1/")
    modules = tmp_path / "fake-hermes"
    for rel, text in FAKE_HERMES_MODULES.items():
        (modules / rel).parent.mkdir(parents=True, exist_ok=True)
        (modules / rel).write_text(text)
    env = fake_hermes(tmp_path / "bin", sys.executable)
    env["PYTHONPATH"] = str(modules)
    env["HROUTE_SOCKET"] = str(daemon.socket)  # as Hermes' plugin would be told
    out = run(
        hroute("--socket", str(daemon.socket), "doctor", "--config", str(daemon.config_path))
        + ["--hermes-home", str(home)],
        env,
    )
    found = lines(out.stdout)
    assert found["config"].startswith("ok"), out.stdout
    assert found["daemon"].startswith("ok"), out.stdout
    assert found["snapshot"].startswith("ok"), out.stdout
    assert found["hermes primary"].startswith("ok") and "backend local" in found["hermes primary"]
    assert "hermes socket" not in found
    assert found["hermes plugin enabled"].startswith("ok")
    assert found["hermes plugin installed"].startswith("ok"), out.stdout
    assert found["hermes guard restore"].startswith("ok")
    assert found["hermes guard fallback"].startswith("ok")
    guard = found["hermes guard auxiliary"]
    assert guard.startswith("warn") and "agent.auxiliary_client has no _resolve_auto" in guard
    assert found["backend local"].startswith("ok healthy")
    assert "nothing answers at http://127.0.0.1:" in found["backend spare"]
    assert out.returncode == 0, out.stdout
    assert out.stdout.rstrip().endswith("all checks passed")


def test_a_near_miss_url_is_not_monitored_and_names_the_closest(
    tmp_path: Path, daemon: Daemon, backend: FakeBackend
) -> None:
    near = f"http://localhost:{backend.port + 1}/v1"
    home = hermes_home(
        tmp_path,
        backend.base_url,
        fallback_providers=[{"provider": "custom", "base_url": near, "model": "m"}],
    )
    out = run(
        hroute("--socket", str(daemon.socket), "doctor", "--config", str(daemon.config_path))
        + ["--hermes-home", str(home), "--hermes-python", sys.executable, "--json"],
        {k: v for k, v in os.environ.items() if k != "HROUTE_SOCKET"},
    )
    assert out.returncode == 1, out.stdout
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    by_name = {c["check"]: c for c in doc["checks"]}
    miss = by_name["hermes fallback 1"]
    assert miss["status"] == "fail"
    assert f"{near} is not monitored" in miss["message"]
    assert f"closest configured URL: {backend.base_url}" in miss["message"]
    assert by_name["hermes primary"]["status"] == "ok"
    # --socket names a socket the plugin, on the default path, would not ask.
    assert by_name["hermes socket"]["status"] == "warn"
    assert by_name["hermes socket"]["fix"] == f"run hermes with HROUTE_SOCKET={daemon.socket}"


def test_plugin_not_enabled_and_not_installed_in_hermes_python(
    tmp_path: Path, daemon: Daemon, backend: FakeBackend
) -> None:
    venv = tmp_path / "bare-venv"  # a Python where hroute_hermes is not importable
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    env = fake_hermes(tmp_path / "bin", str(venv / "bin" / "python"))
    home = hermes_home(tmp_path, backend.base_url, enabled=False)
    out = run(
        hroute("--socket", str(daemon.socket), "doctor", "--config", str(daemon.config_path))
        + ["--hermes-home", str(home)],
        env,
    )
    assert out.returncode == 1
    found = lines(out.stdout)
    assert found["hermes plugin enabled"].startswith("FAIL")
    assert "-> hermes plugins enable hroute" in out.stdout
    installed = found["hermes plugin installed"]
    assert installed.startswith("FAIL") and str(venv / "bin" / "python") in installed
    assert "No module named 'hroute_hermes'" in installed
    assert f"-> {venv / 'bin' / 'python'} -m pip install hroute" in out.stdout


@pytest.fixture
def group() -> Iterator[str]:
    with throwaway_group() as name:
        yield name


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    with shared_tmpdir() as path:
        yield path


@pytest.mark.timeout(240)
def test_a_user_outside_the_sockets_group_is_told_to_join_it(
    shared_dir: Path, group: str, backend: FakeBackend
) -> None:
    hroute_for_all = str(installed_for_everyone(shared_dir))
    run_dir = shared_dir / "run"
    run_dir.mkdir()
    # As under systemd (RuntimeDirectory, Group=hroute): the socket and snapshot belong to it.
    shutil.chown(run_dir, group=group)
    run_dir.chmod(0o2755)
    with Daemon(shared_dir, config(backend.base_url, free_port())) as d:
        d.config_path.chmod(0o644)
        assert d.socket.stat().st_gid == run_dir.stat().st_gid
        argv = [hroute_for_all, "--socket", str(d.socket), "doctor", "--config"]
        argv += [str(d.config_path), "--hermes-home", str(shared_dir / "no-hermes-here")]

        outside = run(as_nobody(argv, shared_dir))
        found = lines(outside.stdout)
        assert outside.returncode == 1, outside.stdout + outside.stderr
        assert found["config"].startswith("ok"), outside.stdout + outside.stderr
        assert found["socket"] == f"FAIL user nobody may not open {d.socket}"
        assert f"-> add yourself to group {group}: sudo usermod -aG {group} $USER" in outside.stdout

        inside = run(as_nobody(argv, shared_dir, groups=group))
        found = lines(inside.stdout)
        assert found["daemon"].startswith("ok") and "(as nobody)" in found["daemon"], inside.stdout
        assert found["snapshot"].startswith("ok"), inside.stdout


@pytest.mark.hermes
def test_against_a_real_hermes_every_guard_is_active(
    tmp_path: Path, daemon: Daemon, backend: FakeBackend
) -> None:
    """Hermes Agent 0.19.0 from PyPI (make hermes-venv): the plugin is there, all guards on.

    Only read, never reinstalled: which checkout's plugin the cached venv holds does not
    matter to what doctor checks (importable, registered, what it would wrap)."""
    from tests.support.hermes import VERSIONS, hermes_venv

    hermes = next(h for h in VERSIONS if (h.package, h.version) == ("hermes-agent", "0.19.0"))
    HERMES_VERSION = hermes.version
    python = hermes_venv(hermes) / "bin" / "python"
    if not (hermes_venv(hermes) / ".hermes-installed").exists():
        why = f"no Hermes Agent venv at {hermes_venv(hermes)}: run `make hermes-venv`"
        if os.environ.get("HROUTE_REQUIRE_HERMES") == "1":
            pytest.fail(why)
        pytest.skip(why)
    env = fake_hermes(tmp_path / "bin", str(python))
    env["HROUTE_SOCKET"] = str(daemon.socket)
    home = hermes_home(tmp_path, backend.base_url)
    out = run(
        hroute("doctor", "--config", str(daemon.config_path), "--hermes-home", str(home)), env
    )
    found = lines(out.stdout)
    assert out.returncode == 0, out.stdout
    assert found["hermes plugin installed"].startswith(f"ok in {python} (hermes-agent ")
    for guard in ("restore", "fallback", "auxiliary"):
        assert found[f"hermes guard {guard}"] == f"ok active for hermes-agent {HERMES_VERSION}"

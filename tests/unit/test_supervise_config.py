"""The `supervise:` block: defaults, and errors that name the path, the line and the cause."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from hroute.config.model import load_config
from hroute.core.errors import ConfigError
from hroute.supervise.systemd_unit import UnitState, parse_unit_state, process_state


def backend(supervise: str, extra: str = "") -> str:
    return (
        "backends:\n"
        "  local:\n"
        "    kind: llama-server\n"
        "    base_url: http://127.0.0.1:8080\n"
        f"{extra}"
        f"    supervise: {supervise}\n"
    )


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(text, source="t.yaml")
    return info.value.problems


def test_defaults_are_the_documented_ones() -> None:
    s = (
        load_config(backend(f"{{command: [{json.dumps(sys.executable)}, -V]}}"))
        .backends["local"]
        .supervise
    )
    assert s is not None and s.mode == "child"
    assert (s.startup_timeout_s, s.stop_timeout_s, s.hang_restart_after) == (600, 20, 3)
    r = s.restart
    assert (r.backoff_initial_s, r.backoff_max_s, r.multiplier, r.reset_after_s) == (1, 60, 2, 120)
    assert (s.start_limit.burst, s.start_limit.interval_s) == (5, 300)


def test_missing_executable_is_named_with_its_line() -> None:
    [problem] = errors_of(backend("{command: [/opt/nowhere/llama-server, -m, x.gguf]}"))
    assert problem == (
        "backends.local.supervise.command (line 5): "
        "executable '/opt/nowhere/llama-server' does not exist"
    )


def test_file_without_execute_permission_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "server"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    [problem] = errors_of(backend(f"{{command: [{script}]}}"))
    assert f"'{script}' is not executable (mode -rw-r--r--)" in problem


def test_bare_name_is_looked_up_on_the_path_given_in_env(tmp_path: Path) -> None:
    exe = tmp_path / "my-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    ok = backend(f"{{command: [my-server], env: {{PATH: {json.dumps(str(tmp_path))}}}}}")
    assert load_config(ok).backends["local"].supervise.command == ["my-server"]
    [problem] = errors_of(backend("{command: [no-such-server-here], env: {PATH: /nonexistent}}"))
    assert "'no-such-server-here' not found on PATH" in problem


def test_relative_executable_is_resolved_against_cwd(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    exe = tmp_path / "bin" / "srv"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    config = load_config(backend(f"{{command: [./bin/srv], cwd: {json.dumps(str(tmp_path))}}}"))
    assert config.backends["local"].supervise.cwd == tmp_path


def test_mode_needs_its_own_field() -> None:
    [problem] = errors_of(backend("{mode: systemd}"))
    assert problem.startswith("backends.local.supervise (line 5)") and "unit is required" in problem
    [problem] = errors_of(backend("{mode: child}"))
    assert "command is required with mode child" in problem
    unit = load_config(backend("{mode: systemd, unit: llama-server.service}"))
    assert unit.backends["local"].supervise.unit == "llama-server.service"


def test_bad_values_are_rejected() -> None:
    problems = errors_of(
        backend(
            "{mode: forked, unit: x.service, restart: {backoff_initial_s: 10, backoff_max_s: 1},"
            " start_limit: {burst: 0}, hang_restart_after: 0, extra: 1}"
        )
    )
    text = "\n".join(problems)
    assert "supervise.mode" in text and "'child'" in text and "'systemd'" in text
    assert "backoff_max_s (1.0) must be >= backoff_initial_s (10.0)" in text
    assert "supervise.start_limit.burst" in text
    assert "supervise.hang_restart_after" in text
    assert "supervise.extra" in text and "unknown field" in text


def test_supervised_backend_must_be_probed() -> None:
    [problem] = errors_of(
        backend("{mode: systemd, unit: x.service}", extra="    probe: {enabled: false}\n")
    )
    assert "supervise needs probe.enabled" in problem


def test_systemctl_show_is_parsed_and_mapped() -> None:
    unit = parse_unit_state("ActiveState=active\nSubState=running\nMainPID=4242\n")
    assert unit == UnitState("active", "running", 4242)
    assert str(process_state(unit)) == "running"
    gone = parse_unit_state("MainPID=0\nActiveState=failed\nSubState=failed\n")
    assert gone.main_pid is None and str(process_state(gone)) == "fatal"
    assert str(process_state(UnitState("activating", "auto-restart", None))) == "starting"
    assert str(process_state(UnitState("inactive", "dead", None))) == "stopped"
    assert str(process_state(parse_unit_state(""))) == "stopped"

"""GPU-aware supervision as users run it, without a GPU: a fake sysfs tree, a kernel log file,
and a stand-in server that prints llama.cpp's out-of-memory line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.fake_gpu import fake_sysfs
from tests.support.procs import free_port
from tests.system.test_supervise import FAST_PROBE, events, fake, hroute, wait_process

pytestmark = pytest.mark.system

OOM_LINE = (
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 13563.00 MiB on device 0: "
    "cudaMalloc failed: out of memory"
)


def servers(*ports_and_commands: tuple[str, int, list[str]]) -> str:
    lines = ["backends:"]
    for name, port, command in ports_and_commands:
        block = {"command": command, "stop_timeout_s": 2}
        lines += [
            f"  {name}:",
            "    kind: llama-server",
            f"    base_url: 'http://127.0.0.1:{port}'",
            f"    probe: {json.dumps(FAST_PROBE)}",
            f"    supervise: {json.dumps(block)}",
        ]
    return "\n".join(lines) + "\n"


def gpu_env(tmp: Path, kmsg: Path | None = None) -> dict[str, str]:
    env = {"HROUTE_SYSFS_ROOT": str(fake_sysfs(tmp / "sys"))}
    if kmsg is not None:
        kmsg.write_text("6,1,1,-;Linux version 6.8.0\n")
        env["HROUTE_KMSG"] = str(kmsg)
    return env


def test_a_server_out_of_gpu_memory_exits_with_gpu_oom_and_says_why(tmp_path: Path) -> None:
    port = free_port()
    command = fake(port, "--say", OOM_LINE, "--crash-on-start", "1")
    with Daemon(tmp_path, servers(("loc", port, command)), env=gpu_env(tmp_path)) as d:
        [down] = wait_until(
            lambda: [e for e in events(d, "backend_down") if e.get("reason") == "gpu_oom"],
            what="backend_down gpu_oom",
        )
        assert "exited with code 1" in down["detail"]
        assert "asked for 13563 MiB" in down["detail"]
        assert "1.0 GiB of 16.0 GiB free on card0" in down["detail"]
        restart = next(e for e in events(d, "restart") if e.get("reason") == "gpu_oom")
        assert "restarting in 1s" in restart["detail"]  # backs off, even the first time
        assert wait_process(d, last_restart_reason="gpu_oom")["restarts"] >= 1


def test_gpu_telemetry_is_in_metrics_and_status(tmp_path: Path) -> None:
    port = free_port()
    with Daemon(tmp_path, servers(("loc", port, fake(port))), env=gpu_env(tmp_path)) as d:
        metrics = d.get_text("/metrics")
        for line in (
            'hroute_gpu_vram_used_bytes{gpu="card0"} 1.610612736e+10',
            'hroute_gpu_vram_total_bytes{gpu="card0"} 1.7179869184e+10',
            'hroute_gpu_busy_ratio{gpu="card0"} 0.87',
            'hroute_gpu_temperature_celsius{gpu="card0"} 64.0',
        ):
            assert line in metrics, metrics
        status = hroute(d, "status")
        assert "GPU card0 (0000:03:00.0): VRAM 15.0 of 16.0 GiB used, busy 87%, 64 °C" in (
            status.stdout
        )
        doctor = hroute(d, "doctor", "--config", str(d.config_path))
        assert "gpu card0: VRAM 15.0 of 16.0 GiB used, busy 87%, 64 °C" in doctor.stdout


def test_a_gpu_reset_in_the_kernel_log_restarts_every_supervised_server(tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    a, b = free_port(), free_port()
    cfg = servers(("loc", a, fake(a)), ("loc2", b, fake(b)))
    with Daemon(tmp_path, cfg, env=gpu_env(tmp_path, kmsg)) as d:
        first = {n: wait_process_of(d, n, state="running")["pid"] for n in ("loc", "loc2")}
        with kmsg.open("a") as f:  # one reset, several lines: each server restarts once
            f.write(
                "3,2001,5000000,-;amdgpu 0000:03:00.0: [drm:amdgpu_job_timedout [amdgpu]] "
                "*ERROR* ring gfx_0.0.0 timeout, signaled seq=10, emitted seq=12\n"
            )
            f.write("6,2002,5000100,-;amdgpu 0000:03:00.0: amdgpu: GPU reset begin!\n")
        for name in ("loc", "loc2"):
            p = wait_process_of(d, name, timeout_s=3, last_restart_reason="gpu_reset")
            assert p["pid"] != first[name]
        wait_until(lambda: all(wait_process_of(d, n)["state"] == "running" for n in first))
        started = [e for e in events(d, "process_started") if e.get("reason") == "gpu_reset"]
        assert sorted(e["backend"] for e in started) == ["loc", "loc2"]
        assert all(wait_process_of(d, n)["restarts"] == 1 for n in first)
        d.wait_for_log("GPU reset (kernel: amdgpu 0000:03:00.0: [drm:amdgpu_job_timedout")


def test_an_unreadable_kernel_log_is_said_once_and_supervision_goes_on(tmp_path: Path) -> None:
    port = free_port()
    env = gpu_env(tmp_path)
    env["HROUTE_KMSG"] = str(tmp_path / "no-such-kmsg")
    with Daemon(tmp_path, servers(("loc", port, fake(port))), env=env) as d:
        wait_process(d, state="running")
        line = d.wait_for_log("cannot read the kernel log")
        assert "a GPU reset will not restart supervised servers" in line
        assert d.log.count("cannot read the kernel log") == 1


def wait_process_of(d: Daemon, name: str, timeout_s: float = 10, **want: Any) -> dict[str, Any]:
    def matches() -> dict[str, Any] | None:
        p = d.backend(name)["process"]
        return p if all(p.get(k) == v for k, v in want.items()) else None

    return wait_until(matches, timeout_s, what=f"{name} process {want}")

"""The shipped systemd units: syntax, and the hardening score the README promises."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def test_service_exposure_is_at_most_2():
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", "hroute.service"],
        cwd=SYSTEMD,
        capture_output=True,
        text=True,
        timeout=30,
    )
    match = re.search(r"Overall exposure level for hroute.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_gpu_drop_in_only_loosens_what_a_gpu_server_needs():
    text = (SYSTEMD / "hroute.service.d/gpu.conf.example").read_text()
    settings = [line for line in text.splitlines() if line and not line.startswith(("#", "["))]
    assert "DeviceAllow=/dev/kfd rw" in settings
    assert "DeviceAllow=char-drm rw" in settings
    assert "SupplementaryGroups=render video" in settings
    assert not any(s.startswith(("User=", "ProtectSystem=")) for s in settings)
    # Reading the kernel log (GPU resets) is the one capability it grants.
    caps = [s for s in settings if s.startswith(("CapabilityBoundingSet=", "AmbientCapabilities="))]
    assert caps == ["CapabilityBoundingSet=CAP_SYSLOG", "AmbientCapabilities=CAP_SYSLOG"]
    assert "DeviceAllow=/dev/kmsg r" in settings and "ProtectKernelLogs=no" in settings


def test_socket_and_runtime_directory_agree():
    service = (SYSTEMD / "hroute.service").read_text()
    socket = (SYSTEMD / "hroute.socket").read_text()
    assert "ListenStream=/run/hroute/hroute.sock" in socket
    assert "SocketMode=0660" in socket and "SocketGroup=hroute" in socket
    assert "RuntimeDirectory=hroute\n" in service
    assert "RuntimeDirectoryPreserve=yes" in service


def test_nothing_hroute_started_outlives_the_unit():
    # mixed: SIGTERM to hroute (it stops its servers in order), then SIGKILL to whatever is
    # left in the cgroup, a daemonized helper in its own session included. `process` or
    # `none` would leave such helpers running after a stop.
    service = (SYSTEMD / "hroute.service").read_text()
    modes = re.findall(r"^KillMode=(\S+)$", service, re.M)
    assert modes in (["mixed"], ["control-group"]), modes
    assert "SendSIGKILL=no" not in service

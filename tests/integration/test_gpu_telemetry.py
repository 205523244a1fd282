"""GPU telemetry read from a fake sysfs tree and a fake /proc (no GPU, no privileges)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from hroute.core.gpu import GpuSample
from hroute.edges.gpu import GpuTelemetry
from tests.support.fake_gpu import VRAM_TOTAL, VRAM_USED, fake_sysfs


def test_amdgpu_cards_are_read_from_sysfs(tmp_path: Path) -> None:
    tel = GpuTelemetry.from_env({"HROUTE_SYSFS_ROOT": str(fake_sysfs(tmp_path / "sys"))})
    assert tel.samples() == [GpuSample("card0", "0000:03:00.0", VRAM_USED, VRAM_TOTAL, 0.87, 64.0)]
    assert GpuTelemetry(tmp_path / "nothing", use_nvml=False).samples() == []


def test_vram_holders_come_from_drm_fdinfo_once_per_client(tmp_path: Path) -> None:
    sysfs = fake_sysfs(tmp_path / "sys")
    proc = tmp_path / "proc"
    for pid, comm, fds in ((4857, "llama-server", 2), (99, "bash", 0)):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "fdinfo").mkdir()
        (proc / str(pid) / "comm").write_text(comm + "\n")
        os.symlink("/dev/null", proc / str(pid) / "fd" / "0")
        (proc / str(pid) / "fdinfo" / "0").write_text("pos:\t0\n")
        for fd in range(3, 3 + fds):  # two fds of one DRM client: counted once
            os.symlink("/dev/dri/renderD128", proc / str(pid) / "fd" / str(fd))
            (proc / str(pid) / "fdinfo" / str(fd)).write_text(
                "drm-driver:\tamdgpu\ndrm-pdev:\t0000:03:00.0\ndrm-client-id:\t7\n"
                "drm-memory-vram:\t12582912 KiB\n"
            )
    tel = GpuTelemetry(sysfs, proc, use_nvml=False)
    [holder] = tel.holders()
    assert (holder.pid, holder.command, holder.vram_bytes, holder.gpu) == (
        4857,
        "llama-server",
        12 * 1024**3,
        "card0",
    )


class FakeNvml:
    """The part of pynvml hroute calls, answering for one 141 GiB GPU with one process."""

    NVML_TEMPERATURE_GPU = 0

    class _Mem:
        used, total = 14 * 1024**3, 141 * 1024**3

    class _Util:
        gpu = 35

    class _Pci:
        busId = b"00000000:3B:00.0"

    class _Proc:
        pid, usedGpuMemory = 4857, 13 * 1024**3

    def nvmlDeviceGetCount(self) -> int:  # pynvml's names
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"handle{i}"

    def nvmlDeviceGetPciInfo(self, h: str) -> object:
        return self._Pci()

    def nvmlDeviceGetMemoryInfo(self, h: str) -> object:
        return self._Mem()

    def nvmlDeviceGetUtilizationRates(self, h: str) -> object:
        return self._Util()

    def nvmlDeviceGetTemperature(self, h: str, sensor: int) -> int:
        return 41

    def nvmlDeviceGetComputeRunningProcesses(self, h: str) -> list[object]:
        return [self._Proc()]


def test_nvidia_gpus_are_read_through_nvml(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "4857").mkdir(parents=True)
    (proc / "4857" / "comm").write_text("llama-server\n")
    tel = GpuTelemetry(tmp_path / "no-sysfs", proc, nvml=FakeNvml())
    [sample] = tel.samples()
    assert sample == GpuSample("nvidia0", "0000:3b:00.0", 14 * 1024**3, 141 * 1024**3, 0.35, 41.0)
    [holder] = tel.holders()
    assert (holder.pid, holder.command, holder.gpu, holder.pci) == (
        4857,
        "llama-server",
        "nvidia0",
        "0000:3b:00.0",
    )


class FakePynvmlModule(FakeNvml):
    """pynvml as `import pynvml` finds it: it must be initialised before any other call."""

    def __init__(self) -> None:
        self.started = False

    def nvmlInit(self) -> None:
        self.started = True

    def nvmlDeviceGetCount(self) -> int:
        assert self.started, "NVML called before nvmlInit"
        return 1


def test_the_first_reading_through_an_imported_pynvml_has_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a real H200 the first samples() and holders() came back empty-handed: the module
    # was looked up before it was imported and initialised, and the errors were swallowed.
    monkeypatch.setitem(sys.modules, "pynvml", FakePynvmlModule())
    tel = GpuTelemetry(tmp_path / "no-sysfs", tmp_path / "proc")
    [sample] = tel.samples()
    assert (sample.vram_used_bytes, sample.vram_total_bytes) == (14 * 1024**3, 141 * 1024**3)
    tel = GpuTelemetry(tmp_path / "no-sysfs", tmp_path / "proc")
    [holder] = tel.holders()
    assert holder.pid == 4857

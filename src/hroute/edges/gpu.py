"""The GPUs as the platform shows them to an unprivileged process, and the kernel's word on resets.

amdgpu from sysfs (`<root>/class/drm/card*/device/`, root from HROUTE_SYSFS_ROOT, default
/sys) and `/proc/*/fdinfo` (who holds VRAM, where readable); NVIDIA through NVML when
`nvidia-ml-py` is installed (the `gpu` extra). The kernel log (/dev/kmsg, or HROUTE_KMSG)
is followed for reset lines. What the files say is parsed in `hroute.core.gpu`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from hroute.core.clock import Clock
from hroute.core.gpu import (
    GpuReset,
    GpuSample,
    VramHolder,
    match_gpu_reset,
    normalize_pci,
    parse_fdinfo,
    sample_from_sysfs,
)

log = logging.getLogger("hroute.gpu")

KMSG_POLL_S = 0.2  # a plain file (tests, a journal export) is polled; /dev/kmsg is waited on
KMSG_RECORD_BYTES = 8192  # one /dev/kmsg read returns one record, at most this long


class GpuTelemetry:
    """Reads the GPUs now: `samples()` (cheap, each scrape) and `holders()` (scans /proc:
    on demand only, for doctor and an out-of-memory message)."""

    def __init__(
        self,
        sysfs_root: Path = Path("/sys"),
        proc_root: Path = Path("/proc"),
        *,
        nvml: Any = None,
        use_nvml: bool = True,
    ) -> None:
        self.sysfs_root, self.proc_root = sysfs_root, proc_root
        self._nvml = nvml  # the pynvml module, once initialised; tests hand in a fake
        self._nvml_tried = nvml is not None or not use_nvml

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GpuTelemetry:
        env = os.environ if env is None else env
        root = Path(env.get("HROUTE_SYSFS_ROOT") or "/sys")
        # A fake sysfs tree in tests comes without NVIDIA: do not mix in the host's GPUs.
        return cls(root, use_nvml="HROUTE_SYSFS_ROOT" not in env)

    def samples(self) -> list[GpuSample]:
        """Every GPU seen: amdgpu cards from sysfs, then NVIDIA ones from NVML."""
        return self._amdgpu_samples() + self._nvml_samples()

    def holders(self) -> list[VramHolder]:
        """Processes holding VRAM, where the platform says (other users' may be hidden)."""
        return self._fdinfo_holders() + self._nvml_holders()

    # --- amdgpu -------------------------------------------------------------------------

    def _cards(self) -> list[Path]:
        drm = self.sysfs_root / "class" / "drm"
        try:
            names = sorted(os.listdir(drm))
        except OSError:
            return []
        return [drm / n for n in names if n.startswith("card") and n[4:].isdigit()]

    def _amdgpu_samples(self) -> list[GpuSample]:
        out = []
        for card in self._cards():
            dev = card / "device"
            temp = None
            with contextlib.suppress(OSError):
                for hwmon in sorted(os.listdir(dev / "hwmon")):
                    temp = _read(dev / "hwmon" / hwmon / "temp1_input")
                    if temp is not None:
                        break
            sample = sample_from_sysfs(
                card.name,
                vram_used=_read(dev / "mem_info_vram_used"),
                vram_total=_read(dev / "mem_info_vram_total"),
                busy_percent=_read(dev / "gpu_busy_percent"),
                temp_millic=temp,
                uevent=_read(dev / "uevent"),
            )
            if sample is not None:
                out.append(sample)
        return out

    def _fdinfo_holders(self) -> list[VramHolder]:
        cards = {s.pci: s.name for s in self._amdgpu_samples() if s.pci}
        if not cards:
            return []
        out = []
        for pid in _pids(self.proc_root):
            seen: dict[tuple[str | None, str | None], int] = {}
            fd_dir = self.proc_root / str(pid) / "fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue  # gone, or another user's: the platform does not say
            for fd in fds:
                try:
                    if not os.readlink(fd_dir / fd).startswith("/dev/dri/"):
                        continue
                except OSError:
                    continue
                parsed = parse_fdinfo(_read(self.proc_root / str(pid) / "fdinfo" / fd) or "")
                if parsed is not None:
                    pci, client, vram = parsed
                    seen[(pci, client)] = vram  # fds of one DRM client share its memory
            by_card: dict[str | None, int] = {}
            for (pci, _), vram in seen.items():
                by_card[pci] = by_card.get(pci, 0) + vram
            comm = (_read(self.proc_root / str(pid) / "comm") or "").strip()
            for pci, vram in by_card.items():
                name = cards.get(pci) if pci else None
                out.append(VramHolder(pid, comm, vram, name or pci or "?", pci))
        return out

    # --- NVIDIA -------------------------------------------------------------------------

    def _nvml_module(self) -> Any:
        if self._nvml_tried:
            return self._nvml
        self._nvml_tried = True
        has_nvidia = os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")
        try:
            import pynvml  # type: ignore[import-not-found]
        except ImportError:
            if has_nvidia:
                log.info(
                    "no NVIDIA GPU telemetry: nvidia-ml-py is not installed "
                    "(pip install 'hroute[gpu]')"
                )
            return None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVML raises its own error types
            if has_nvidia:
                log.info("no NVIDIA GPU telemetry: NVML did not start (%s)", exc)
            return None
        self._nvml = pynvml
        return pynvml

    def _nvml_devices(self) -> list[tuple[str, str | None, Any]]:
        nvml = self._nvml_module()
        if nvml is None:
            return []
        out = []
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                pci = None
                with contextlib.suppress(Exception):
                    bus = nvml.nvmlDeviceGetPciInfo(handle).busId
                    pci = normalize_pci(bus.decode() if isinstance(bus, bytes) else bus)
                out.append((f"nvidia{i}", pci, handle))
        except Exception as exc:
            log.debug("NVML: %s", exc)
        return out

    def _nvml_samples(self) -> list[GpuSample]:
        devices = self._nvml_devices()  # imports and initialises NVML on the first call
        nvml = self._nvml
        out = []
        for name, pci, handle in devices:
            used = total = busy = temp = None
            with contextlib.suppress(Exception):
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                used, total = int(mem.used), int(mem.total)
            with contextlib.suppress(Exception):
                busy = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
            with contextlib.suppress(Exception):
                temp = float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
            out.append(GpuSample(name, pci, used, total, busy, temp))
        return out

    def _nvml_holders(self) -> list[VramHolder]:
        devices = self._nvml_devices()
        nvml = self._nvml
        out = []
        for name, pci, handle in devices:
            try:
                procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:  # a device that does not say
                continue
            for p in procs:
                used = getattr(p, "usedGpuMemory", None)
                if used is None:
                    continue
                comm = (_read(self.proc_root / str(p.pid) / "comm") or "").strip()
                out.append(VramHolder(int(p.pid), comm, int(used), name, pci))
        return out


def _read(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(65536)
    except OSError:
        return None


def _pids(proc_root: Path) -> list[int]:
    try:
        return [int(n) for n in os.listdir(proc_root) if n.isdigit()]
    except OSError:
        return []


async def follow_kernel_log(
    path: Path,
    on_reset: Callable[[GpuReset], None],
    clock: Clock,
    *,
    task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Call `on_reset` for each GPU reset line the kernel logs from now on.

    Without permission to read the log (kernel.dmesg_restrict and no CAP_SYSLOG), says so
    once and returns: supervision goes on, only resets go unnoticed.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        level = logging.WARNING if exc.errno in (errno.EPERM, errno.EACCES) else logging.INFO
        log.log(
            level,
            "cannot read the kernel log %s (%s): a GPU reset will not restart supervised "
            "servers; grant CAP_SYSLOG (see systemd/hroute.service.d/gpu.conf.example)",
            path,
            os.strerror(exc.errno or 0).lower() if exc.errno else exc,
        )
        task_status.started()
        return
    try:
        os.lseek(fd, 0, os.SEEK_END)  # only what happens from now on
        task_status.started()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            await _follow_file(fd, on_reset, clock)
        else:
            await _follow_kmsg(fd, on_reset)
    finally:
        os.close(fd)


async def _follow_kmsg(fd: int, on_reset: Callable[[GpuReset], None]) -> None:
    while True:
        await anyio.wait_readable(fd)
        try:
            record = os.read(fd, KMSG_RECORD_BYTES)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                continue  # records were overwritten before we read them: go on from here
            raise
        _seen(record.split(b"\n", 1)[0], on_reset)  # the message; not its " KEY=value" lines


async def _follow_file(fd: int, on_reset: Callable[[GpuReset], None], clock: Clock) -> None:
    pending = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            await clock.sleep(KMSG_POLL_S)
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        pending = pending[-KMSG_RECORD_BYTES:]
        for line in lines:
            _seen(line, on_reset)


def _seen(raw: bytes, on_reset: Callable[[GpuReset], None]) -> None:
    reset = match_gpu_reset(raw.decode("utf-8", "replace").rstrip("\n"))
    if reset is not None:
        on_reset(reset)

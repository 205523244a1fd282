"""What the GPU says, in values: telemetry read from sysfs/NVML, a child's out-of-memory line,
a kernel log line announcing a GPU reset. Pure: the text comes in, values go out.

`hroute.edges.gpu` reads the files (sysfs, /proc/*/fdinfo, the kernel log) and NVML; this
module only parses what they hold, so the parsing is table-tested without a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_LINE_CHARS = 4096  # a line longer than this is searched in its first part only
RESET_QUIET_S = 30.0  # a reset prints several lines: act on the first, then on none for a while

# llama.cpp (ggml-cuda, ggml-hip, ggml-backend) saying it could not get GPU memory. A buffer
# is a GPU's when named after a device (CUDA0, ROCm1): "CUDA_Host" or "compute" is host memory.
_DEVICE = r"(?:CUDA|ROCm|HIP|Vulkan|SYCL|MUSA|CANN)\d+"
_OOM = re.compile(
    r"cudaMalloc failed: out of memory"
    r"|hipErrorOutOfMemory"
    r"|CUDA error: out of memory"
    rf"|unable to allocate {_DEVICE} buffer"
    rf"|failed to allocate {_DEVICE} buffer",
    re.IGNORECASE,
)
_ASKED_MIB = re.compile(r"allocating\s+([0-9]+(?:\.[0-9]+)?)\s*MiB", re.IGNORECASE)
_ASKED_BYTES = re.compile(r"buffer of size\s+([0-9]+)", re.IGNORECASE)

# amdgpu: "amdgpu 0000:03:00.0: amdgpu: GPU reset begin!", "... *ERROR* ring gfx_0.0.0 timeout";
# NVIDIA: "NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off the bus."
_AMD_RESET = re.compile(
    r"GPU reset begin|amdgpu: GPU reset|ring \S+ timeout|GPU hang|GPU recovery", re.IGNORECASE
)
_XID = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9a-fA-F:.]+)\):\s*(\d+)")
# Xids after which the GPU is reset or its work is lost (NVIDIA's Xid catalogue): a process
# on it keeps answering /health while generation fails. Others (13, 31: one app's fault) are not.
RESET_XIDS = frozenset({8, 38, 43, 44, 48, 61, 62, 69, 74, 79, 92, 94, 95, 119, 120, 121, 154})
_PCI = re.compile(r"\b([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?)\b")

_KIB = 1024
_MIB = 1024 * 1024
_GIB = 1024 * 1024 * 1024


@dataclass(frozen=True)
class GpuSample:
    """One GPU now. Any value the platform did not give is None."""

    name: str  # card0 (amdgpu, the DRM card), nvidia0 (NVML index)
    pci: str | None = None  # 0000:03:00.0
    vram_used_bytes: int | None = None
    vram_total_bytes: int | None = None
    busy_ratio: float | None = None  # 0..1
    temperature_c: float | None = None

    @property
    def vram_free_bytes(self) -> int | None:
        if self.vram_used_bytes is None or self.vram_total_bytes is None:
            return None
        return max(0, self.vram_total_bytes - self.vram_used_bytes)

    def as_dict(self) -> dict[str, object]:
        return {
            "gpu": self.name,
            "pci": self.pci,
            "vram_used_bytes": self.vram_used_bytes,
            "vram_total_bytes": self.vram_total_bytes,
            "busy_ratio": self.busy_ratio,
            "temperature_c": self.temperature_c,
        }


@dataclass(frozen=True)
class VramHolder:
    """A process holding VRAM on one GPU (NVML's running processes; amdgpu fdinfo)."""

    pid: int
    command: str
    vram_bytes: int
    gpu: str
    pci: str | None = None


@dataclass(frozen=True)
class GpuOom:
    """A child's line saying it could not allocate GPU memory."""

    line: str
    asked_bytes: int | None  # from llama.cpp's "allocating N MiB" / "buffer of size N"


@dataclass(frozen=True)
class GpuReset:
    """A kernel log line saying a GPU was (or is being) reset, or lost its work."""

    line: str
    pci: str | None  # the card it names; None: unknown, so every GPU


# --- sysfs and fdinfo ------------------------------------------------------------------


def parse_int(text: str | None) -> int | None:
    """A sysfs number (`"17163091968\\n"`), or None for absent or garbled text."""
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def sample_from_sysfs(
    name: str,
    *,
    vram_used: str | None,
    vram_total: str | None,
    busy_percent: str | None,
    temp_millic: str | None,
    uevent: str | None = None,
) -> GpuSample | None:
    """An amdgpu card from its sysfs files' text; None when it is not one (no VRAM total)."""
    total = parse_int(vram_total)
    if total is None:
        return None
    busy = parse_int(busy_percent)
    temp = parse_int(temp_millic)
    return GpuSample(
        name=name,
        pci=pci_from_uevent(uevent),
        vram_used_bytes=parse_int(vram_used),
        vram_total_bytes=total,
        busy_ratio=None if busy is None else min(max(busy, 0), 100) / 100,
        temperature_c=None if temp is None else temp / 1000,
    )


def pci_from_uevent(text: str | None) -> str | None:
    for line in (text or "").splitlines():
        if line.startswith("PCI_SLOT_NAME="):
            return normalize_pci(line.partition("=")[2])
    return None


def parse_fdinfo(text: str) -> tuple[str | None, str | None, int] | None:
    """(pci, client id, VRAM bytes) from a DRM fd's fdinfo, or None when it holds no VRAM."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    vram = fields.get("drm-memory-vram")
    if vram is None:
        return None
    number, _, unit = vram.partition(" ")
    try:
        amount = int(number) * {"": 1, "KiB": _KIB, "MiB": _MIB, "GiB": _GIB}.get(unit, 1)
    except ValueError:
        return None
    if amount <= 0:
        return None
    pdev = fields.get("drm-pdev")
    return (normalize_pci(pdev) if pdev else None, fields.get("drm-client-id"), amount)


def normalize_pci(text: str) -> str:
    """`0000:03:00.0`: lower case, a four-digit domain (NVML writes `00000000:3B:00.0`)."""
    text = text.strip().lower()
    if text.count(":") < 2:
        return f"0000:{text}"
    domain, rest = text.split(":", 1)
    return f"{domain[-4:]:0>4}:{rest}"


def same_card(a: str | None, b: str | None) -> bool:
    """Whether two PCI addresses name one card (NVRM writes `0000:3b:00`, no function)."""
    if a is None or b is None:
        return False
    a, b = normalize_pci(a), normalize_pci(b)
    return a.split(".")[0] == b.split(".")[0]


# --- a child's output and the kernel log ------------------------------------------------


def match_gpu_oom(line: str) -> GpuOom | None:
    """The out-of-memory line of llama.cpp on CUDA or ROCm, or None."""
    line = line[:MAX_LINE_CHARS]
    if _OOM.search(line) is None:
        return None
    asked: int | None = None
    if (mib := _ASKED_MIB.search(line)) is not None:
        asked = int(float(mib.group(1)) * _MIB)
    elif (size := _ASKED_BYTES.search(line)) is not None:
        asked = int(size.group(1))
    return GpuOom(line.strip(), asked)


def asked_in(lines: Iterable[str]) -> int | None:
    """The allocation llama.cpp reported asking for in the lines before its failure."""
    asked = None
    for line in lines:
        if (mib := _ASKED_MIB.search(line[:MAX_LINE_CHARS])) is not None:
            asked = int(float(mib.group(1)) * _MIB)
    return asked


def match_gpu_reset(line: str) -> GpuReset | None:
    """A kernel log line (a /dev/kmsg record or plain text) announcing a GPU reset, or None."""
    line = line[:MAX_LINE_CHARS]
    message = line.split(";", 1)[1] if _is_kmsg_record(line) else line
    xid = _XID.search(message)
    if xid is not None:
        if int(xid.group(2)) not in RESET_XIDS:
            return None
        return GpuReset(message.strip(), normalize_pci(xid.group(1)))
    if _AMD_RESET.search(message) is None:
        return None
    pci = _PCI.search(message)
    return GpuReset(message.strip(), normalize_pci(pci.group(1)) if pci else None)


def _is_kmsg_record(line: str) -> bool:
    head = line.split(";", 1)[0]
    return ";" in line and head.count(",") >= 2 and head.split(",", 1)[0].isdigit()


class ResetDebounce:
    """One reset prints several lines (ring timeout, reset begin, reset succeeded): restart
    the servers once per card, not once per line."""

    def __init__(self, quiet_s: float = RESET_QUIET_S) -> None:
        self.quiet_s = quiet_s
        self._last: dict[str | None, float] = {}

    def fresh(self, reset: GpuReset, now: float) -> bool:
        """True for the first line of a reset on its card (None: any card)."""
        keys = [reset.pci, None] if reset.pci else list(self._last) or [None]
        if any(now - self._last.get(k, -1e18) < self.quiet_s for k in keys):
            return False
        self._last[reset.pci] = now
        return True


# --- words for operators ---------------------------------------------------------------


def gib(n: int) -> str:
    return f"{n / _GIB:.1f} GiB"


def describe_sample(s: GpuSample) -> str:
    """`card0 (0000:03:00.0): VRAM 15.3 of 16.0 GiB used, busy 87%, 64 °C`."""
    parts = []
    if s.vram_total_bytes is not None:
        used = "?" if s.vram_used_bytes is None else f"{s.vram_used_bytes / _GIB:.1f}"
        parts.append(f"VRAM {used} of {gib(s.vram_total_bytes)} used")
    if s.busy_ratio is not None:
        parts.append(f"busy {s.busy_ratio * 100:.0f}%")
    if s.temperature_c is not None:
        parts.append(f"{s.temperature_c:.0f} °C")
    where = f" ({s.pci})" if s.pci else ""
    return f"{s.name}{where}: " + (", ".join(parts) or "no readings")


def sample_from_dict(d: dict[str, object]) -> GpuSample:
    """The inverse of `GpuSample.as_dict` (what `GET /v1/backends` carries)."""

    def num(key: str) -> float | None:
        value = d.get(key)
        return float(value) if isinstance(value, int | float) else None

    used, total = num("vram_used_bytes"), num("vram_total_bytes")
    pci = d.get("pci")
    return GpuSample(
        str(d.get("gpu", "?")),
        pci if isinstance(pci, str) else None,
        None if used is None else int(used),
        None if total is None else int(total),
        num("busy_ratio"),
        num("temperature_c"),
    )


def gpu_lines(gpus: Iterable[dict[str, object]]) -> list[str]:
    """`GPU card0 (0000:03:00.0): VRAM ...`, one line a GPU, for `status` and `top`."""
    return ["GPU " + describe_sample(sample_from_dict(g)) for g in gpus]


def describe_holders(holders: Iterable[VramHolder], ours: Iterable[int]) -> str:
    """`pid 4857 (llama-server, not hroute's) 12.0 GiB on card0; ...`, largest first."""
    mine = set(ours)
    words = []
    for h in sorted(holders, key=lambda h: -h.vram_bytes):
        whose = "hroute's" if h.pid in mine else "not hroute's"
        words.append(f"pid {h.pid} ({h.command or '?'}, {whose}) {gib(h.vram_bytes)} on {h.gpu}")
    return "; ".join(words)


def describe_oom(
    oom: GpuOom,
    samples: Iterable[GpuSample],
    holders: Iterable[VramHolder],
    ours: Iterable[int],
) -> str:
    """Why a start failed for want of VRAM: what was asked, what is free, who holds the rest."""
    asked = "" if oom.asked_bytes is None else f"asked for {oom.asked_bytes / _MIB:.0f} MiB; "
    free = [
        f"{gib(f)} of {gib(s.vram_total_bytes)} free on {s.name}"
        for s in samples
        if (f := s.vram_free_bytes) is not None and s.vram_total_bytes is not None
    ]
    held = describe_holders(holders, ours)
    said = asked + (", ".join(free) if free else "free VRAM unknown: no GPU telemetry")
    if held:
        said += f"; held by {held}"
    return f"could not allocate GPU memory ({said})"

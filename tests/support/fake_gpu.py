"""A fake sysfs tree with one amdgpu card (HROUTE_SYSFS_ROOT points at it) and a kernel log file."""

from __future__ import annotations

from pathlib import Path

GIB = 1024**3
VRAM_USED = 15 * GIB
VRAM_TOTAL = 16 * GIB


def fake_sysfs(root: Path, *, used: int = VRAM_USED, total: int = VRAM_TOTAL) -> Path:
    """`<root>/class/drm/card0/device/...` as amdgpu writes it, plus a connector to skip."""
    dev = root / "class" / "drm" / "card0" / "device"
    (dev / "hwmon" / "hwmon3").mkdir(parents=True)
    (dev / "mem_info_vram_used").write_text(f"{used}\n")
    (dev / "mem_info_vram_total").write_text(f"{total}\n")
    (dev / "gpu_busy_percent").write_text("87\n")
    (dev / "hwmon" / "hwmon3" / "temp1_input").write_text("64000\n")
    (dev / "uevent").write_text("DRIVER=amdgpu\nPCI_SLOT_NAME=0000:03:00.0\n")
    (root / "class" / "drm" / "card0-DP-1").mkdir()
    return root

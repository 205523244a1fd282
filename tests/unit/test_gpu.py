"""GPU telemetry, out-of-memory lines and kernel reset lines, parsed without a GPU."""

from __future__ import annotations

import pytest

from hroute.core.gpu import (
    GpuOom,
    GpuReset,
    GpuSample,
    ResetDebounce,
    VramHolder,
    describe_oom,
    describe_sample,
    match_gpu_oom,
    match_gpu_reset,
    parse_fdinfo,
    same_card,
    sample_from_sysfs,
)

MIB = 1024 * 1024
GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("line", "asked"),
    [
        (
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 13563.00 MiB on device 0: "
            "cudaMalloc failed: out of memory",
            13563 * MIB,
        ),
        ("alloc_tensor_range: failed to allocate CUDA0 buffer of size 14221836288", 14221836288),
        ("llama_model_load: error loading model: unable to allocate ROCm0 buffer", None),
        ("ggml_cuda_compute_forward: hipErrorOutOfMemory", None),
        ("ALLOC_TENSOR_RANGE: FAILED TO ALLOCATE ROCM1 BUFFER OF SIZE 1048576", MIB),
        ("CUDA error: out of memory", None),
    ],
)
def test_llama_cpp_gpu_out_of_memory_lines_are_recognised(line: str, asked: int | None) -> None:
    assert match_gpu_oom(line) == GpuOom(line, asked)


@pytest.mark.parametrize(
    "line",
    [
        "llama_init_from_model: failed to allocate compute buffers",  # host memory
        "failed to allocate CUDA_Host buffer of size 123",  # pinned host memory
        "main: model loaded",
        "ggml_cuda_init: found 1 CUDA devices",
        "x" * 10_000 + " cudaMalloc failed: out of memory",  # past the bound: not searched
    ],
)
def test_other_lines_are_not_gpu_oom(line: str) -> None:
    assert match_gpu_oom(line) is None


@pytest.mark.parametrize(
    ("line", "pci"),
    [
        ("6,1234,99887766,-;amdgpu 0000:03:00.0: amdgpu: GPU reset begin!", "0000:03:00.0"),
        (
            "3,2001,123,-;amdgpu 0000:0C:00.0: [drm:amdgpu_job_timedout [amdgpu]] *ERROR* "
            "ring gfx_0.0.0 timeout, signaled seq=1, emitted seq=3",
            "0000:0c:00.0",
        ),
        ("[drm:amdgpu_job_timedout [amdgpu]] *ERROR* ring gfx timeout", None),
        ("amdgpu: GPU reset(2) succeeded!", None),
        (
            "4,55,66,-;NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.",
            "0000:3b:00",
        ),
    ],
)
def test_kernel_reset_lines_name_their_card(line: str, pci: str | None) -> None:
    reset = match_gpu_reset(line)
    assert reset is not None and reset.pci == pci


@pytest.mark.parametrize(
    "line",
    [
        "NVRM: Xid (PCI:0000:3b:00): 13, pid=1234, Graphics Exception",  # one app's fault
        "6,1,2,-;amdgpu 0000:03:00.0: amdgpu: SMU is initialized successfully!",
        "usb 1-1: reset high-speed USB device number 2",
    ],
)
def test_other_kernel_lines_are_not_resets(line: str) -> None:
    assert match_gpu_reset(line) is None


def test_one_reset_of_many_lines_is_acted_on_once_per_card() -> None:
    d = ResetDebounce(quiet_s=30)
    a = GpuReset("ring gfx timeout", "0000:03:00.0")
    b = GpuReset("GPU reset begin!", "0000:03:00.0")
    other = GpuReset("GPU reset begin!", "0000:0c:00.0")
    assert d.fresh(a, 100.0) and not d.fresh(b, 100.1) and d.fresh(other, 100.2)
    assert not d.fresh(GpuReset("GPU reset begin!", None), 101.0)  # any card: just done
    assert d.fresh(b, 131.0)


def test_same_card_ignores_the_function_and_the_case() -> None:
    assert same_card("0000:3b:00", "0000:3B:00.0") and not same_card("0000:3b:00.0", None)
    assert not same_card("0000:03:00.0", "0000:0c:00.0")


def test_sysfs_values_become_a_sample() -> None:
    s = sample_from_sysfs(
        "card0",
        vram_used="16428357632\n",
        vram_total="17163091968\n",
        busy_percent="87\n",
        temp_millic="64000\n",
        uevent="DRIVER=amdgpu\nPCI_SLOT_NAME=0000:03:00.0\n",
    )
    assert s == GpuSample("card0", "0000:03:00.0", 16428357632, 17163091968, 0.87, 64.0)
    assert describe_sample(s) == "card0 (0000:03:00.0): VRAM 15.3 of 16.0 GiB used, busy 87%, 64 °C"
    assert (
        sample_from_sysfs(
            "card1", vram_used=None, vram_total=None, busy_percent="3", temp_millic=None
        )
        is None
    )  # not an amdgpu card (an iGPU without VRAM files, a connector)
    garbled = sample_from_sysfs(
        "card2", vram_used="?", vram_total="100", busy_percent="", temp_millic=None
    )
    assert garbled == GpuSample("card2", None, None, 100, None, None)


def test_fdinfo_names_the_card_the_client_and_its_vram() -> None:
    text = (
        "pos:\t0\nflags:\t02100002\ndrm-driver:\tamdgpu\ndrm-pdev:\t0000:03:00.0\n"
        "drm-client-id:\t42\ndrm-memory-vram:\t12582912 KiB\ndrm-memory-gtt:\t2048 KiB\n"
    )
    assert parse_fdinfo(text) == ("0000:03:00.0", "42", 12 * GIB)
    assert parse_fdinfo("pos:\t0\nflags:\t0100002\nmnt_id:\t25\n") is None  # not a DRM fd
    assert parse_fdinfo("drm-pdev:\t0000:03:00.0\ndrm-memory-vram:\t0 KiB\n") is None


def test_an_oom_message_says_what_was_asked_what_is_free_and_who_holds_the_rest() -> None:
    oom = GpuOom("cudaMalloc failed: out of memory", 13563 * MIB)
    sample = GpuSample("card0", "0000:03:00.0", 15 * GIB, 16 * GIB)
    holders = [
        VramHolder(4857, "llama-server", 12 * GIB, "card0"),
        VramHolder(100, "llama-server", 1 * GIB, "card0"),
    ]
    said = describe_oom(oom, [sample], holders, ours=[100])
    assert said == (
        "could not allocate GPU memory (asked for 13563 MiB; 1.0 GiB of 16.0 GiB free on card0; "
        "held by pid 4857 (llama-server, not hroute's) 12.0 GiB on card0; "
        "pid 100 (llama-server, hroute's) 1.0 GiB on card0)"
    )
    bare = describe_oom(GpuOom("hipErrorOutOfMemory", None), [], [], ours=[])
    assert bare == "could not allocate GPU memory (free VRAM unknown: no GPU telemetry)"


def test_nvml_bus_ids_are_written_like_the_kernels() -> None:
    from hroute.core.gpu import normalize_pci

    assert normalize_pci("00000000:3B:00.0") == "0000:3b:00.0"
    assert normalize_pci("03:00.0") == "0000:03:00.0"

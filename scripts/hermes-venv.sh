#!/usr/bin/env bash
# A virtualenv with a real Hermes Agent from PyPI and this checkout's hroute (with its Hermes
# plugin) installed, for the "Real Hermes" tests and bench/bench_hermes_plugin.py. Cached
# outside the checkout, keyed by the Hermes version.
#
#   py=$(scripts/hermes-venv.sh)   # stdout: only the venv's python
#
# All progress goes to stderr. Idempotent: Hermes is installed once (about 240 MB, a minute or
# two); hroute is (re)installed, editable, whenever the checkout path or its pyproject.toml
# changed, so the `hermes_agent.plugins` entry point always names this checkout's plugin.
# Safe to run concurrently: serialised by flock on a lock file in the cache dir.
#
# Environment:
#   HROUTE_CACHE          cache root (default: $HOME/.cache/hroute)
#   HROUTE_HERMES_VERSION hermes-agent version (default: 0.19.0, the one HERMES.md describes)
#   PYTHON                interpreter for the venv (default: python3; Hermes needs 3.11-3.13)
set -euo pipefail

HERMES_VERSION="${HROUTE_HERMES_VERSION:-0.19.0}"
CACHE_ROOT="${HROUTE_CACHE:-$HOME/.cache/hroute}"
VENV="$CACHE_ROOT/hermes-venv-$HERMES_VERSION"
PY="$VENV/bin/python"
LOCK="$CACHE_ROOT/.hermes-venv-$HERMES_VERSION.lock"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

log() { printf 'hermes-venv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v flock >/dev/null 2>&1 || die "flock is missing (Debian package: util-linux)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is missing (Debian package: coreutils)"

# What the hroute install must match: this checkout and its packaging metadata.
stamp_want="$REPO $(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"

mkdir -p "$CACHE_ROOT"
exec 9>"$LOCK"
if ! flock -n 9; then
    log "another run holds $LOCK; waiting for it"
    flock 9
fi

has_hermes() { "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("run_agent") is None)' >/dev/null 2>&1; }

if [[ ! -e "$VENV/.hermes-installed" ]] || ! has_hermes; then
    log "installing hermes-agent==$HERMES_VERSION into $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" 9>&-
    "$PY" -m pip install -q --disable-pip-version-check "hermes-agent==$HERMES_VERSION" >&2 9>&- \
        || die "pip install hermes-agent==$HERMES_VERSION failed"
    "$PY" -c 'import run_agent' >&2 || die "hermes-agent installed but run_agent does not import"
    touch "$VENV/.hermes-installed"
fi

if [[ "$(cat "$VENV/.hroute-installed" 2>/dev/null || true)" != "$stamp_want" ]]; then
    log "installing hroute (editable) from $REPO"
    "$PY" -m pip install -q --disable-pip-version-check -e "$REPO" >&2 9>&- \
        || die "pip install -e $REPO failed"
    printf '%s' "$stamp_want" >"$VENV/.hroute-installed"
fi

echo "$PY"

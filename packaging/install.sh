#!/usr/bin/env bash
# Install or uninstall hroute system-wide: `make install` / `make uninstall` run this.
#
#   packaging/install.sh install|uninstall
#
# Honours DESTDIR (staging root, e.g. for a package) and PREFIX (default /usr/local), and
# SYSCONFDIR, BINDIR, LIBDIR, SYSTEMDDIR, SYSUSERSDIR, DOCDIR, DATADIR, SYSTEM_PYTHON, PIP_ARGS.
#
# hroute runs from its own virtualenv in $LIBDIR/hroute on the system's Python 3.11, built
# from wheels at install time: Debian 12's python3-* packages are too old for it (pydantic 1,
# anyio 3) and a distribution upgrade must not change its dependencies under it.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD

action=${1:-}
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
BINDIR=${BINDIR:-$PREFIX/bin}
LIBDIR=${LIBDIR:-$PREFIX/lib}
SYSTEMDDIR=${SYSTEMDDIR:-$PREFIX/lib/systemd}
SYSUSERSDIR=${SYSUSERSDIR:-$PREFIX/lib/sysusers.d}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/hroute}
# Prometheus alerting rules and the Grafana dashboard (point rule_files / an import at them).
DATADIR=${DATADIR:-$PREFIX/share/hroute}
SYSTEM_PYTHON=${SYSTEM_PYTHON:-/usr/bin/python3}
PIP_ARGS=${PIP_ARGS:-}
VENV=$LIBDIR/hroute

UNITS=(hroute.service hroute.socket)
CONFIG=$SYSCONFDIR/hroute/hroute.yaml
MONITORING=(hroute-alerts.yml hroute-alerts.test.yml hroute-dashboard.json)

say() { echo "hroute $action: $*"; }

# The files this script puts in place, outside the virtualenv and the config.
installed_files() {
    echo "$BINDIR/hroute"
    for unit in "${UNITS[@]}"; do echo "$SYSTEMDDIR/system/$unit"; done
    echo "$SYSUSERSDIR/hroute.conf"
    echo "$SYSTEMDDIR/catalog/hroute.catalog"
    echo "$DOCDIR/README.md"
    echo "$DOCDIR/examples/gpu.conf.example"
    echo "$DOCDIR/examples/hroute.yaml"
    for f in "${MONITORING[@]}"; do echo "$DATADIR/monitoring/$f"; done
}

live_systemd() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

install_venv() {
    local python stage
    # The versioned interpreter: a later python3 would not find this venv's site-packages.
    python=$(readlink -f "$SYSTEM_PYTHON")
    stage=$DESTDIR$VENV
    rm -rf "$stage"
    "$python" -m venv --without-pip "$stage"
    # The system's pip (≥ 22.3: --python) installs into the venv, which then carries no pip
    # of its own; without one, the venv gets pip for the install and loses it after.
    local pip=("$python" -m pip --python "$stage/bin/python") own_pip=
    if ! "${pip[@]}" --version >/dev/null 2>&1; then
        "$stage/bin/python" -m ensurepip --default-pip >/dev/null
        pip=("$stage/bin/python" -m pip)
        own_pip=1
    fi
    # shellcheck disable=SC2086  # PIP_ARGS is a list of options
    "${pip[@]}" install --quiet --disable-pip-version-check --no-compile \
        --no-warn-script-location $PIP_ARGS "$SRC[cluster]"  # the package can join a cluster
    if [ -n "$own_pip" ]; then
        "${pip[@]}" uninstall --quiet --yes pip setuptools
    fi
    rm -f "$stage"/bin/activate* "$stage"/bin/Activate* "$stage"/bin/pip*
    if [ -n "$DESTDIR" ]; then
        # Scripts and pyvenv.cfg name the staging path; make them name the installed one.
        grep -rlI --null -F "$stage" "$stage/bin" "$stage/pyvenv.cfg" |
            xargs -0 -r sed -i "s|$stage|$VENV|g"
    fi
    # Byte-compile now, naming the installed paths: the service may not write under /usr.
    "$stage/bin/python" -m compileall -q -j 0 ${DESTDIR:+-s "$DESTDIR" -p /} "$stage/lib"
}

do_install() {
    local d=$DESTDIR
    say "environment in $d$VENV (from wheels, on $SYSTEM_PYTHON)"
    install_venv
    install -d "$d$BINDIR"
    cat >"$d$BINDIR/hroute" <<EOF
#!/bin/sh
# hroute from its own environment ($VENV). -I: no user site, no PYTHON* variables, no
# current directory on the path; -B: never write bytecode beside the installed files.
exec $VENV/bin/python -I -B -m hroute.cli "\$@"
EOF
    chmod 0755 "$d$BINDIR/hroute"
    install -d "$d$SYSTEMDDIR/system" "$d$SYSTEMDDIR/catalog" "$d$SYSUSERSDIR" "$d$DOCDIR/examples"
    for unit in "${UNITS[@]}"; do
        sed -e "s|/usr/bin/hroute|$BINDIR/hroute|g" \
            -e "s|/usr/share/doc/hroute|$DOCDIR|g" \
            -e "s|/etc/hroute|$SYSCONFDIR/hroute|g" \
            "systemd/$unit" >"$d$SYSTEMDDIR/system/$unit"
        chmod 0644 "$d$SYSTEMDDIR/system/$unit"
    done
    install -m 0644 packaging/sysusers.d/hroute.conf "$d$SYSUSERSDIR/hroute.conf"
    install -m 0644 packaging/catalog/hroute.catalog "$d$SYSTEMDDIR/catalog/hroute.catalog"
    install -m 0644 README.md "$d$DOCDIR/README.md"
    install -m 0644 systemd/hroute.service.d/gpu.conf.example "$d$DOCDIR/examples/"
    install -m 0644 etc/hroute/hroute.yaml "$d$DOCDIR/examples/hroute.yaml"
    install -d "$d$DATADIR/monitoring"
    for f in "${MONITORING[@]}"; do install -m 0644 "packaging/monitoring/$f" "$d$DATADIR/monitoring/$f"; done
    install -d "$d$SYSCONFDIR/hroute"
    if [ -e "$d$CONFIG" ]; then
        say "kept the existing $d$CONFIG"
    else
        install -m 0644 etc/hroute/hroute.yaml "$d$CONFIG"
    fi
    if [ -z "$DESTDIR" ]; then
        systemd-sysusers "$SYSUSERSDIR/hroute.conf" || say "warning: systemd-sysusers failed"
        journalctl --update-catalog || true
    fi
    if live_systemd; then
        systemctl daemon-reload
    fi
    say "done; start it with: systemctl enable --now hroute"
}

do_uninstall() {
    local d=$DESTDIR f
    if live_systemd; then
        systemctl disable --now hroute.service hroute.socket 2>/dev/null || true
    fi
    rm -rf "$d$VENV"
    while read -r f; do rm -f "$d$f"; done < <(installed_files)
    rmdir "$d$DOCDIR/examples" "$d$DOCDIR" 2>/dev/null || true
    rmdir "$d$DATADIR/monitoring" "$d$DATADIR" 2>/dev/null || true
    if [ -e "$d$CONFIG" ] && cmp -s etc/hroute/hroute.yaml "$d$CONFIG"; then
        rm -f "$d$CONFIG"
        rmdir "$d$SYSCONFDIR/hroute" 2>/dev/null || true
    elif [ -e "$d$CONFIG" ]; then
        say "kept $d$CONFIG: it differs from the example (your configuration)"
    fi
    if [ -z "$DESTDIR" ]; then
        journalctl --update-catalog || true
    fi
    if live_systemd; then
        systemctl daemon-reload
    fi
    say "done; the user hroute and /var/lib/hroute are kept (userdel hroute; rm -r /var/lib/hroute)"
}

case "$action" in
install) do_install ;;
uninstall) do_uninstall ;;
*)
    echo "usage: $0 install|uninstall" >&2
    exit 2
    ;;
esac

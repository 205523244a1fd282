#!/usr/bin/env bash
# Build dist/hroute_<version>-1_<arch>.deb: `make deb` runs this.
#
# The package is `make install DESTDIR=<stage> PREFIX=/usr` plus DEBIAN/ from
# packaging/debian/, put together with dpkg-deb: it carries its own virtualenv in
# /usr/lib/hroute (wheels from PyPI at build time, on Debian 12's python3.11), so it
# depends on no python3-* package. Installing it creates the user (systemd-sysusers) and
# enables nothing; purging it removes what it added.
#
#   OUT=dir   where the .deb goes (default dist/)
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-dist}
version=$(/usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
arch=$(dpkg --print-architecture)
python=$(readlink -f /usr/bin/python3)
pyname=$(basename "$python")
stage=build/deb/hroute_${version}_${arch}

rm -rf "$stage"
mkdir -p "$stage" "$OUT"
DESTDIR=$PWD/$stage PREFIX=/usr SYSCONFDIR=/etc SYSTEMDDIR=/usr/lib/systemd \
    SYSTEM_PYTHON=/usr/bin/python3 packaging/install.sh install

# Debian ships no bytecode: postinst compiles it, prerm removes it. Libraries from the wheels
# lose their debugging symbols, as in any package.
find "$stage/usr/lib/hroute" -name __pycache__ -prune -exec rm -rf {} +
if command -v strip >/dev/null; then
    find "$stage/usr/lib/hroute" -name '*.so*' -type f -exec strip --strip-unneeded {} +
fi

doc=$stage/usr/share/doc/hroute
install -m 0644 packaging/debian/copyright "$doc/copyright"
gzip -9n <packaging/debian/changelog >"$doc/changelog.Debian.gz"

install -d "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$script" "$stage/DEBIAN/$script"
done
install -m 0644 packaging/debian/conffiles "$stage/DEBIAN/conffiles"
installed_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@PYTHON@/$pyname/" \
    -e "s/@INSTALLED_SIZE@/$installed_kb/" packaging/debian/control >"$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums"

deb=$OUT/hroute_${version}-1_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"

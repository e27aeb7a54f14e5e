#!/bin/sh
# Fetch the IVOA UWS 1.1 schema (UWS.xsd) and the xlink schema it imports, for the tests.
#
#   scripts/get-uws-xsd.sh DEST_DIR
#
# They come from the Debian package python3-gavo (GAVO DaCHS ships the UWS 1.1 REC schema as
# gavo/resources/schemata/UWS.xsd). The package is downloaded with `apt-get download` (no
# installation, works without root) and unpacked with `dpkg-deb -x`. UWS.xsd imports xlink from
# a URL; the copy in DEST_DIR imports the local xlink.xsd instead, so validation needs no network.
# Nothing is done when DEST_DIR already holds both files. jobmill itself never runs this.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST_DIR" >&2
    exit 2
fi
dest=$1

if [ -s "$dest/UWS.xsd" ] && [ -s "$dest/xlink.xsd" ]; then
    exit 0
fi

for tool in apt-get dpkg-deb; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$0: '$tool' is not available (a Debian-based system is needed)" >&2
        exit 1
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
# apt's download sandbox user (_apt) must be able to write here.
chmod 0777 "$tmp"

download() {
    (cd "$tmp" && apt-get download python3-gavo) >"$tmp/apt.log" 2>&1
}

update_lists() {
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update >>"$tmp/apt.log" 2>&1
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n apt-get update >>"$tmp/apt.log" 2>&1
    else
        echo "$0: the package lists are stale and 'apt-get update' needs root" >&2
        return 1
    fi
}

if ! download; then
    if ! update_lists || ! download; then
        echo "$0: cannot download python3-gavo:" >&2
        cat "$tmp/apt.log" >&2
        exit 1
    fi
fi

deb=$(find "$tmp" -maxdepth 1 -name 'python3-gavo_*.deb' | head -n 1)
if [ -z "$deb" ]; then
    echo "$0: apt-get download left no python3-gavo package" >&2
    exit 1
fi
dpkg-deb -x "$deb" "$tmp/root"

schemata=$(find "$tmp/root" -type d -path '*/gavo/resources/schemata' | head -n 1)
if [ -z "$schemata" ] || [ ! -f "$schemata/UWS.xsd" ] || [ ! -f "$schemata/xlink.xsd" ]; then
    echo "$0: python3-gavo has no gavo/resources/schemata/UWS.xsd and xlink.xsd" >&2
    exit 1
fi

mkdir -p "$dest"
cp "$schemata/xlink.xsd" "$dest/xlink.xsd.part"
# Point the xlink import at the local copy.
sed 's#schemaLocation="[^"]*xlink\.xsd"#schemaLocation="xlink.xsd"#' \
    "$schemata/UWS.xsd" >"$dest/UWS.xsd.part"
if ! grep -q 'schemaLocation="xlink.xsd"' "$dest/UWS.xsd.part"; then
    echo "$0: could not point UWS.xsd's xlink import at the local copy" >&2
    rm -f "$dest/UWS.xsd.part" "$dest/xlink.xsd.part"
    exit 1
fi
mv "$dest/xlink.xsd.part" "$dest/xlink.xsd"
mv "$dest/UWS.xsd.part" "$dest/UWS.xsd"
echo "UWS.xsd and xlink.xsd are in $dest"

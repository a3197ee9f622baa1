#!/bin/bash
# Build an uncompressed newc initramfs: static busybox, ./init, the guest script as /test.sh,
# and the given static executables in /bin.
#
# Usage: mkinitramfs.sh OUT.cpio GUEST_SCRIPT [EXECUTABLE[=NAME]]...
#   EXECUTABLE=NAME installs the file as /bin/NAME (default: its basename).
# Environment: BUSYBOX (default /bin/busybox, from Debian's busybox-static).
# Executables named psample are stripped: the test is not about profiling psample itself and
# the debug info would multiply the archive size (and the guest's unpacking time).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || { echo "usage: $0 OUT.cpio GUEST_SCRIPT [EXE[=NAME]]..." >&2; exit 2; }
out=$1
script=$2
shift 2
busybox=${BUSYBOX:-/bin/busybox}

if ! "$busybox" true; then
	echo "mkinitramfs: $busybox does not run" >&2
	exit 1
fi
# A dynamically linked busybox would find no libc in the guest.
if LC_ALL=C readelf -l "$busybox" 2>/dev/null | grep -q 'Requesting program interpreter'; then
	echo "mkinitramfs: $busybox is dynamically linked; install busybox-static" >&2
	exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,tmp}
mkdir -p "$stage"/sys/kernel
cp "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
cp "$here/init" "$stage/init"
chmod 755 "$stage/init"
cp "$script" "$stage/test.sh"

for spec in "$@"; do
	src=${spec%%=*}
	name=$(basename "$src")
	[ "$spec" = "$src" ] || name=${spec#*=}
	if LC_ALL=C readelf -l "$src" 2>/dev/null | grep -q 'Requesting program interpreter'; then
		echo "mkinitramfs: $src is dynamically linked; the guest has no libc" >&2
		exit 1
	fi
	if [ "$name" = psample ]; then
		strip -o "$stage/bin/$name" "$src"
	else
		cp "$src" "$stage/bin/$name"
	fi
	chmod 755 "$stage/bin/$name"
done

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) > "$out.tmp"
mv "$out.tmp" "$out"

#!/bin/bash
# Fetch Debian's cloud-amd64 kernel images for the given series (default: 5.10 6.1 6.12) and
# print one line per series: "<series>\t<path to vmlinuz>\t<package>".
#
# Nothing is installed on the host: a private apt configuration under the cache directory
# (bullseye for 5.10, bookworm for 6.1, bookworm-backports for 6.12, plus their security
# suites) is used only to resolve and `apt-get download` the packages, and only the
# boot/vmlinuz-* member is unpacked. The cloud flavour is used because it is the smallest
# image that still has perf_event, tracepoints and a 8250 serial console built in.
#
# Environment:
#   PSAMPLE_QEMU_CACHE    cache directory (default: <workspace>/target/qemu-cache)
#   PSAMPLE_QEMU_OFFLINE  =1: skip `apt-get update`, use whatever was resolved last time
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${PSAMPLE_QEMU_CACHE:-$here/../../target/qemu-cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
root=$cache/apt
series=("$@")
[ ${#series[@]} -gt 0 ] || series=(5.10 6.1 6.12)

mkdir -p "$root/lists/partial" "$root/cache/archives/partial" "$root/etc" "$cache/kernels"
touch "$root/status"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat > "$root/etc/sources.list" <<SOURCES
deb [signed-by=$keyring] http://deb.debian.org/debian bullseye main
deb [signed-by=$keyring] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=$keyring] http://deb.debian.org/debian bookworm main
deb [signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=$keyring] http://deb.debian.org/debian bookworm-backports main
SOURCES

apt_opts=(
	-o "Dir::Etc::SourceList=$root/etc/sources.list"
	-o "Dir::Etc::SourceParts=$root/etc/none"
	-o "Dir::State::Lists=$root/lists"
	-o "Dir::State::status=$root/status"
	-o "Dir::Cache=$root/cache"
	-o "APT::Architecture=amd64"
	-o "APT::Architectures::=amd64"
	-o "Acquire::Languages=none"
)
if [ "$(id -u)" = 0 ]; then
	# The cache dir is usually not readable by the _apt sandbox user; downloading as root
	# into it is what would happen anyway, minus the warning.
	apt_opts+=(-o "APT::Sandbox::User=root")
fi

if [ "${PSAMPLE_QEMU_OFFLINE:-0}" != 1 ]; then
	# Kernel point releases land every few weeks: lists younger than a day are good enough,
	# and skipping the update saves ~10 s per run.
	if [ -z "$(find "$root/lists" -maxdepth 1 -name '*_Packages' -mmin -1440 2>/dev/null)" ]; then
		apt-get "${apt_opts[@]}" -qq update >&2 ||
			echo "fetch-kernels: apt-get update failed; falling back to cached resolutions" >&2
	fi
fi

# Every version of the metapackage, as "version<TAB>depends" lines (one apt-cache call: each
# call parses all five suites' lists).
meta=$(apt-cache "${apt_opts[@]}" show linux-image-cloud-amd64 2>/dev/null |
	awk '/^Version: /{v=$2} /^Depends: /{sub(/^Depends: /,""); print v "\t" $0}' || true)

# The kernel package behind the newest metapackage version of a series
# (e.g. 6.1 -> linux-image-6.1.0-NN-cloud-amd64).
resolve() {
	local s=$1 best="" bestdeps="" v deps
	while IFS=$'\t' read -r v deps; do
		case $v in "$s".*) ;; *) continue ;; esac
		if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then
			best=$v
			bestdeps=$deps
		fi
	done <<<"$meta"
	[ -n "$best" ] || return 1
	tr ',' '\n' <<<"$bestdeps" |
		sed -n 's/^ *\(linux-image-[^ ]*-cloud-amd64\)\( .*\)\?$/\1/p' | head -n1
}

for s in "${series[@]}"; do
	record=$cache/kernels/series-$s
	pkg=$(resolve "$s" || true)
	if [ -z "$pkg" ]; then
		if [ -s "$record" ]; then
			cat "$record"
			continue
		fi
		echo "fetch-kernels: no linux-image-cloud-amd64 of series $s in the package lists" >&2
		exit 1
	fi
	dir=$cache/kernels/$pkg
	vmlinuz=$(ls "$dir"/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
	if [ -z "$vmlinuz" ]; then
		tmp=$(mktemp -d "$cache/kernels/.download.XXXXXX")
		(cd "$tmp" && apt-get "${apt_opts[@]}" -qq download "$pkg" >&2)
		mkdir -p "$tmp/x"
		dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -x -C "$tmp/x" --wildcards './boot/vmlinuz-*'
		rm -rf "$dir"
		mkdir -p "$dir"
		mv "$tmp/x/boot" "$dir/boot"
		rm -rf "$tmp"
		vmlinuz=$(ls "$dir"/boot/vmlinuz-* | head -n1)
	fi
	printf '%s\t%s\t%s\n' "$s" "$vmlinuz" "$pkg" | tee "$record"
done

#!/usr/bin/env bash
# Builds every bundled workload into OUTDIR with gcc (or $CC).
#
# usage: workloads/build.sh OUTDIR
#
# cpu_split is built twice: with frame pointers (for fp call graphs) and without (for DWARF
# unwinding). Everything else keeps frame pointers. All builds carry -g so symbolizers have
# line and inline info.
#
# Frame-pointer builds add -mno-omit-leaf-frame-pointer: compilers that honour it otherwise skip
# the frame setup in leaf functions, and an fp walk from a frameless leaf reads the caller's
# frame and silently drops the caller (perf shows main;run;hot_a). gcc 12 ignores the flag for
# leaves that need no stack, so cpu_split's hot functions are made non-leaf in the source. Both
# builds add
# -fno-optimize-sibling-calls: a tail call (work's last hot_a becomes a jmp) also removes a
# frame. With both flags the expected chain main;run;work;hot_a is what an exact unwinder
# must report, so the workloads can check completeness rather than excuse gaps.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$1"
mkdir -p "$out"
cc="${CC:-gcc}"
common=(-std=gnu11 -Wall -Wextra -g -pthread -I"$src")
fp=(-O2 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer -fno-optimize-sibling-calls)
nofp=(-O2 -fomit-frame-pointer -fno-optimize-sibling-calls)

build() {
    local name="$1"
    shift
    # Up to date (newer than this script, the shared header and every source): keep it. Test
    # binaries call this script concurrently while workloads from it are running, and a
    # replaced binary is a different file to a symbolizer that checks inodes.
    if [ -x "$out/$name" ]; then
        local stale=0 f
        for f in "${BASH_SOURCE[0]}" "$src/common.h" "$@"; do
            if [ -f "$f" ] && [ "$f" -nt "$out/$name" ]; then stale=1; fi
        done
        [ "$stale" = 0 ] && return 0
    fi
    # Compile to a temp name and rename, so a concurrent run never executes a half-written file.
    "$cc" "${common[@]}" "$@" -o "$out/.$name.tmp.$$"
    mv -f "$out/.$name.tmp.$$" "$out/$name"
}

build cpu_split_fp "${fp[@]}" "$src/cpu_split.c"
build cpu_split_nofp "${nofp[@]}" "$src/cpu_split.c"
build syscall_heavy "${fp[@]}" "$src/syscall_heavy.c"
build libc_split "${fp[@]}" "$src/libc_split.c"
build sleep_pipe "${fp[@]}" "$src/sleep_pipe.c"
build sleep_pipe_libc "${fp[@]}" -DSLEEP_PIPE_LIBC "$src/sleep_pipe.c"
build fsync_server "${fp[@]}" "$src/fsync_server.c"
build inline_demo "${fp[@]}" "$src/inline_demo.c"
build distro_demo "${fp[@]}" "$src/distro_demo.c"
build libdemo.so "${fp[@]}" -fPIC -shared "$src/libdemo.c"
build dlopen_demo "${fp[@]}" "$src/dlopen_demo.c" -ldl
build threads_late "${fp[@]}" "$src/threads_late.c"
build demo "${fp[@]}" "$src/demo.c"
build exec_fork "${fp[@]}" "$src/exec_fork.c"
build wall_split "${fp[@]}" "$src/wall_split.c"
echo "built workloads in $out"

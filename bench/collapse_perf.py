#!/usr/bin/env python3
"""Fold `perf script` output into folded stacks (stdin -> stdout).

A small stand-in for inferno-collapse-perf / stackcollapse-perf.pl, used by bench/run only
when inferno is not installed, so the perf side of the benchmark always reaches the same
folded format as psample. Like inferno it counts each sample with its period when perf script
prints one (cpu-clock periods are nanoseconds), else 1; the benchmark only uses shares.

Format handled: a header line `comm pid[/tid] [cpu] time: [period] event: ...`, then one
line per frame `\\t addr symbol+off (dso)`, leaf first, then a blank line.
"""
import re
import sys

HEADER = re.compile(r"^(?P<comm>.+?)\s+(?P<pid>\d+)(?:/\d+)?\s+(?:\[\d+\]\s+)?"
                    r"[\d.]+:\s+(?:(?P<period>\d+)\s+)?(?P<event>\S+):")
FRAME = re.compile(r"^\s*(?P<addr>[0-9a-fA-F]+)\s+(?P<sym>.*?)\s+\((?P<dso>.*)\)\s*$")


def frame_name(sym, dso):
    if sym in ("", "[unknown]"):
        base = dso.rsplit("/", 1)[-1] if dso and dso != "[unknown]" else "unknown"
        return "[%s]" % base.strip("[]")
    sym = re.sub(r"\+0x[0-9a-fA-F]+$", "", sym)
    return sym.replace(";", ":")


def main():
    counts = {}
    comm = None
    period = 1
    frames = []

    def flush():
        if comm is not None:
            stack = ";".join([comm.replace(" ", "_").replace(";", ":")] + frames[::-1])
            counts[stack] = counts.get(stack, 0) + period

    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            flush()
            comm, frames, period = None, [], 1
            continue
        if comm is None:
            m = HEADER.match(line)
            if m:
                comm = m.group("comm").strip()
                period = int(m.group("period")) if m.group("period") else 1
            continue
        m = FRAME.match(line)
        if m:
            frames.append(frame_name(m.group("sym"), m.group("dso")))
    flush()
    out = sys.stdout
    for stack in sorted(counts):
        out.write("%s %d\n" % (stack, counts[stack]))


if __name__ == "__main__":
    main()

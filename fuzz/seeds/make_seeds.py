#!/usr/bin/env python3
"""Regenerates the seed corpora in fuzz/corpus/ (run from the repository root).

Seeds are small, valid inputs in each target's layout so the fuzzer starts from the
interesting paths (a sample with a callchain, a DWARF sample with registers and stack, an
MMAP2, a real format file, a tiny ELF with .eh_frame and DWARF, a real maps file, zlib,
zstd and xz sections including a header that declares 2 GiB, a JIT map with small caps).
The tiny ELF is built from fuzz/seeds/tiny.c with gcc.
"""
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.getcwd()
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def rec(rtype, body, misc=0):
    size = 8 + len(body)
    assert size % 8 == 0, (rtype, size)
    return struct.pack("<IHH", rtype, misc, size) + body


def pad8(b):
    return b + b"\0" * (-len(b) % 8)


IP, TID, TIME, READ, CALLCHAIN, ID, CPU, PERIOD, RAW = 1, 2, 4, 0x10, 0x20, 0x40, 0x80, 0x100, 0x400
REGS_USER, STACK_USER, IDENTIFIER = 0x1000, 0x2000, 0x10000
CTX_KERNEL = (1 << 64) - 128
CTX_USER = (1 << 64) - 512


def trailer(pid=100, tid=101, time=5000, cpu=1):
    # sample_id_all trailer for TID|TIME|CPU
    return struct.pack("<IIQII", pid, tid, time, cpu, 0)


def record_seed(sample_type, regs_mask, flags, records):
    body = b"".join(records)
    # flags 0x80: head = tail + (head % 4097), so head=len, tail=0 is a sane ring.
    prefix = struct.pack("<QQB", sample_type, regs_mask, flags | 0x80)
    return prefix + struct.pack("<QQ", len(body), 0) + body


def record_seeds():
    st = IP | TID | TIME | CPU | PERIOD | CALLCHAIN
    chain = [CTX_KERNEL, 0xFFFFFFFF81000010, CTX_USER, 0x400145, 0x400159, 0x40017C]
    sample = rec(9, struct.pack("<QIIQIIQQ", 0x400145, 100, 101, 4000, 1, 0, 10101010, len(chain))
                 + b"".join(struct.pack("<Q", c) for c in chain), misc=2)
    fname = pad8(b"/usr/lib/libfoo.so\0")
    mmap2 = rec(10, struct.pack("<IIQQQIIQQII", 100, 101, 0x7F0000000000, 0x21000, 0,
                                0xFE, 1, 1234, 0, 5, 2) + fname + trailer(), misc=0x2002)
    comm = rec(3, struct.pack("<II", 100, 101) + pad8(b"worker\0") + trailer(), misc=0x2000)
    fork = rec(7, struct.pack("<IIIIQ", 102, 100, 102, 101, 4500) + trailer())
    lost = rec(2, struct.pack("<QQ", 7, 3) + trailer())
    throttle = rec(5, struct.pack("<QQQ", 4600, 7, 7) + trailer())
    exit_ = rec(4, struct.pack("<IIIIQ", 102, 100, 102, 101, 4700) + trailer())
    put("record_parser", "fp_sideband", record_seed(st, 0, 1, [mmap2, comm, sample, fork, lost, throttle, exit_]))

    st = IP | TID | TIME | CPU | PERIOD | CALLCHAIN | REGS_USER | STACK_USER
    mask = (1 << 6) | (1 << 7) | (1 << 8)
    stack = bytes(range(64))
    dwarf = rec(9, struct.pack("<QIIQIIQQQ", 0x400145, 100, 101, 4000, 1, 0, 10101010, 2,
                               CTX_KERNEL) + struct.pack("<Q", 0xFFFFFFFF81000010)
                + struct.pack("<QQQQ", 2, 0x7FFE0018, 0x7FFE0000, 0x400145)
                + struct.pack("<Q", 64) + stack + struct.pack("<Q", 48), misc=2)
    put("record_parser", "dwarf_sample", record_seed(st, mask, 1, [dwarf]))

    st = IDENTIFIER | IP | TID | TIME | CPU | PERIOD | RAW
    raw = bytes(range(36))  # u32 size + 36 bytes = 40, 8-aligned
    tp = rec(9, struct.pack("<QQIIQIIQ", 9, 0xFFFFFFFF81000020, 100, 101, 4000, 0, 0, 1)
             + struct.pack("<I", len(raw)) + raw)
    put("record_parser", "tracepoint_raw", record_seed(st, 0, 1, [tp, tp]))


def tracepoint_seeds():
    fmt_dir = os.path.join(ROOT, "perfring", "tests", "data", "formats")
    for version in ["3.10-rhel7", "6.18"]:
        for event in ["sched_switch", "sched_wakeup"]:
            with open(os.path.join(fmt_dir, version, event), "rb") as f:
                text = f.read()
            put("tracepoint_format", f"{version}-{event}", text + b"\0" + bytes(range(80)))


def tiny_elf():
    src = os.path.join(ROOT, "fuzz", "seeds", "tiny.c")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "tiny")
        subprocess.check_call(["gcc", "-O1", "-g", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls",
                               "-fasynchronous-unwind-tables", "-nostdlib", "-static", "-no-pie",
                               "-Wl,--build-id=sha1", "-Wl,-z,noseparate-code", "-Wl,--eh-frame-hdr",
                               "-o", out, src])
        with open(out, "rb") as f:
            return f.read()


def elf_seeds(elf):
    # File offsets of leaf, middle, outer and _start (static, vaddr == 0x400000 + offset).
    offs = [0x145, 0x150, 0x170, 0x195]
    put("symbolize_elf", "tiny", b"".join(struct.pack("<I", o) for o in offs) + elf)
    # A synthetic stack sampled in leaf(): leaf has no frame, middle and outer keep rbp chains.
    s = 0x7FFE0000
    stack = struct.pack("<Q", 0x400159)                      # S+0: ret into middle
    stack += struct.pack("<QQQQ", 0, 0, s + 56, 0x40017C)    # rbx, r12, saved rbp, ret into outer
    stack += struct.pack("<QQQQ", 0, 0, s + 88, 0x4001A4)    # rbx, r12, saved rbp, ret into _start
    stack += struct.pack("<QQQ", 0, 0, 0)                    # _start's locals, saved rbp 0
    stack += struct.pack("<Q", 0)                            # no return address: entry
    regs = struct.pack("<QQQ", 0x400145, s, s + 24)
    put("unwind_stack", "tiny_leaf", regs + struct.pack("<H", len(stack)) + stack + elf)


def maps_seeds():
    with open(os.path.join(ROOT, "unwind", "tests", "fixtures", "threads", "maps.txt"), "rb") as f:
        put("proc_maps", "threads", f.read())
    put("proc_maps", "odd_paths",
        b"55d0c2a00000-55d0c2a01000 r-xp 00001000 fe:01 1234   /usr/bin/my prog\n"
        b"7f1000000000-7f1000001000 r-xp 00002000 103:02 99 /tmp/lib.so (deleted)\n"
        b"7f2000000000-7f2000001000 r-xp 00000000 00:00 0 \n"
        b"7ffd1000000-7ffd1002000 r-xp 00000000 00:00 0                          [vdso]\n"
        b"7f3000000000-7f3000002000 r-xp 00000000 00:05 8 /memfd:jit (deleted)\n")


def compressed_seeds():
    import lzma
    import zlib
    plain = b"".join(struct.pack("<I", i * 2654435761 & 0xFFFFFFFF) for i in range(512))
    put("compressed_section", "zlib", bytes([1]) + struct.pack("<Q", len(plain))
        + zlib.compress(plain, 9))
    # zstd frame: single segment, one RLE block of 4096 bytes of 0x2a.
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xA0]) + struct.pack("<I", 4096)
    frame += struct.pack("<I", 1 | (1 << 1) | (4096 << 3))[:3] + b"\x2a"
    put("compressed_section", "zstd_rle", bytes([2]) + struct.pack("<Q", 4096) + frame)
    # Declares far more than the stream holds, and far more than the budget.
    put("compressed_section", "zlib_bomb_header", bytes([1]) + struct.pack("<Q", 2 << 30)
        + zlib.compress(bytes(65536), 9))
    put("compressed_section", "xz", bytes([3]) + struct.pack("<Q", 0)
        + lzma.compress(plain, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64))


def perf_map_seeds():
    lines = b"".join(b"%x %x LazyCompile:*fn_%d /app/x.js:%d:1\n" % (0x7F0000001000 + i * 0x40, 0x40, i, i)
                     for i in range(64))
    lines += b"0x7f0000002000 0x10 py::f:/a.py\n" + b"zz 10 bad\n" + b"7f0000003000 0 empty\n"
    addrs = struct.pack("<4Q", 0x7F0000001010, 0x7F0000002008, 0x7F0000003000, 0)
    # Caps small enough to be reached: 1 KiB read, 16 entries, 256 name bytes.
    put("perf_map", "node_small_caps", struct.pack("<IHI", 1024, 16, 256) + addrs + lines)
    put("perf_map", "node_wide_caps", struct.pack("<IHI", 1 << 20, 60000, 1 << 20) + addrs + lines)


if __name__ == "__main__":
    if not os.path.isdir(os.path.join(ROOT, "fuzz")):
        sys.exit("run from the repository root")
    record_seeds()
    tracepoint_seeds()
    elf = tiny_elf()
    elf_seeds(elf)
    maps_seeds()
    compressed_seeds()
    perf_map_seeds()

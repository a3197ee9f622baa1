//! Corrupted module files (ELF, .eh_frame, .eh_frame_hdr, .debug_frame) and arbitrary
//! register values and stack bytes: the unwinder must stop with a reason, never panic, loop
//! or read outside the sampled stack copy.
//!
//! Input layout: ip, sp, bp (u64 LE each), a u16 LE stack length, that many stack bytes, then
//! the bytes of the module file mapped executable at 0x400000.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use unwind::{Mapping, Processes, Unwinder, UserRegs};

const PID: u32 = 4242;
const MAPS: &str = "00400000-00500000 r-xp 00000000 08:01 77 /fuzz/module\n\
                    7ffff7000000-7ffff7100000 r-xp 00000000 08:01 78 /fuzz/module\n";

fn scratch() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("psample-fuzz-unwind-{}", std::process::id()))
    })
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 26 {
        return;
    }
    let regs = UserRegs {
        ip: u64_at(data, 0),
        sp: u64_at(data, 8),
        bp: u64_at(data, 16),
    };
    let stack_len = usize::from(u16::from_le_bytes([data[24], data[25]]));
    let rest = &data[26..];
    let (stack, module) = rest.split_at(stack_len.min(rest.len()));
    {
        let Ok(mut f) = std::fs::File::create(scratch()) else {
            return;
        };
        if f.write_all(module).is_err() {
            return;
        }
    }
    let mut procs = Processes::new();
    procs.load_maps_text(PID, MAPS);
    // Every mapping resolves to the fuzzed file; no host file is ever opened.
    let mut unwinder = Unwinder::with_resolver(Box::new(|_pid: u32, _m: &Mapping| {
        std::fs::File::open(scratch()).ok()
    }));
    let mut out = Vec::new();
    let r = unwinder.unwind_dwarf(&procs, PID, regs, stack, &mut out);
    assert!(r.frames <= unwind::MAX_FRAMES + 1, "{r:?}");
    assert_eq!(r.frames, out.len());
    out.clear();
    let r = unwinder.unwind_fp(&procs, PID, regs, stack, &mut out);
    assert_eq!(r.frames, out.len());
    std::hint::black_box(unwinder.is_thread_entry(&procs, PID, regs.ip));
});

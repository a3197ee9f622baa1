//! Arbitrary bytes as a JIT map (`/tmp/perf-PID.map`, written by the profiled process), read
//! under small caps so that inputs reach them: what is held must stay within the caps (entries,
//! name bytes, bytes read), names within a line, and nothing may panic.
//!
//! Input layout: read cap u32, entry cap u16, name-byte cap u32 (little-endian), four u64
//! addresses to look up, then the file bytes.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One scratch file per fuzzing process, rewritten for every input.
fn scratch() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("psample-fuzz-perfmap-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 42 {
        return;
    }
    let read = u64::from(u32::from_le_bytes(data[0..4].try_into().unwrap()));
    let entries = usize::from(u16::from_le_bytes(data[4..6].try_into().unwrap()));
    let name_bytes = u32::from_le_bytes(data[6..10].try_into().unwrap()) as usize;
    let addrs: Vec<u64> = data[10..42]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let body = &data[42..];
    let path = scratch();
    {
        let Ok(mut f) = std::fs::File::create(path) else {
            return;
        };
        if f.write_all(body).is_err() {
            return;
        }
    }
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    symbolize::fuzzing::perf_map(&file, read, entries, name_bytes, &addrs);
});

//! Arbitrary bytes as a mapped ELF file (corrupted headers, sections, symbol tables, DWARF,
//! MiniDebugInfo): symbolizing addresses in it must name them or fall back to
//! `file+0xOFFSET`, never panic or allocate without bound.
//!
//! Input layout: 4 little-endian u32 file offsets to look up, then the file bytes.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use symbolize::{ModuleKind, ModuleSpec, SymbolizeOptions, Symbolizer};

/// One scratch file per fuzzing process, rewritten for every input.
fn scratch() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("psample-fuzz-elf-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (addrs, file) = data.split_at(16);
    let path = scratch();
    {
        let Ok(mut f) = std::fs::File::create(path) else {
            return;
        };
        if f.write_all(file).is_err() {
            return;
        }
    }
    // A fresh symbolizer per input: its caches are keyed by file identity, which a
    // rewritten scratch file may keep (same size, same mtime second).
    let mut s = Symbolizer::new(SymbolizeOptions {
        kernel: false,
        ..SymbolizeOptions::default()
    });
    const START: u64 = 0x40_0000;
    let h = s.add_module(ModuleSpec {
        kind: ModuleKind::File,
        path: path.to_string_lossy().into_owned(),
        // Not a real mapping of this process, so the file is opened by path.
        pid: std::process::id(),
        pid_start: None,
        start: START,
        end: START + 0x100_0000,
        pgoff: 0,
        build_id: None,
        inode: None,
    });
    for chunk in addrs.chunks_exact(4) {
        let off = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        std::hint::black_box(s.symbolize(h, START + u64::from(off)));
    }
    std::hint::black_box(s.warnings());
});

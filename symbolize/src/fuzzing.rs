//! Entry points for the cargo-fuzz targets in `fuzz/` (not an API: hidden from the docs).
//! They drive the parsers of compressed sections and JIT maps with their caps, and check the
//! bounds those caps promise.

use std::fs::File;
use std::path::Path;

use object::{CompressedData, CompressionFormat};

use crate::budget::{INFLATED_HELD_MAX, SECTION_INFLATED_MAX};
use crate::compressed::{inflate, SectionContents};
use crate::perf_map::{MapCaps, PerfMap, MAX_LINE};

/// Inflates `data` as a section of `format` (0 none, 1 zlib, 2 zstd) declaring `declared`
/// bytes. Panics if a result breaks the budget.
pub fn inflate_section(format: u8, declared: u64, data: &[u8]) {
    let format = match format % 3 {
        0 => CompressionFormat::None,
        1 => CompressionFormat::Zlib,
        _ => CompressionFormat::Zstandard,
    };
    let c = CompressedData {
        format,
        data,
        uncompressed_size: declared,
    };
    if let Ok(SectionContents::Inflated(bytes, _charge)) = inflate(c) {
        assert_eq!(
            bytes.len() as u64,
            declared,
            "inflated size differs from the header"
        );
        assert!(
            declared <= SECTION_INFLATED_MAX,
            "over the per-section budget"
        );
        assert!(crate::budget::inflated_held() <= INFLATED_HELD_MAX);
    }
}

/// Decompresses `.gnu_debugdata` (xz) bytes; panics if the result is over its cap.
pub fn minidebuginfo(xz: &[u8]) {
    if let Ok(out) = crate::minidebuginfo::decompress(xz) {
        assert!(out.len() as u64 <= crate::minidebuginfo::MAX_DECOMPRESSED);
    }
}

/// Reads `file` as a JIT map under the given caps and looks up `addrs`; panics if what is
/// held exceeds the caps.
pub fn perf_map(file: &File, read: u64, entries: usize, name_bytes: usize, addrs: &[u64]) {
    let caps = MapCaps {
        read,
        entries,
        name_bytes,
    };
    let mut map = PerfMap::with_caps(caps);
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut notes = Vec::new();
    map.read_from(file, size, Path::new("fuzz.map"), &mut notes);
    for &a in addrs {
        if let Some(name) = map.cached(a) {
            assert!(name.len() <= MAX_LINE, "name longer than a line");
        }
    }
    let (held_entries, held_names, read_bytes) = map.held();
    assert!(
        held_entries <= entries,
        "{held_entries} entries over the cap {entries}"
    );
    // One name may straddle the cap (it is checked before each line).
    assert!(
        held_names <= name_bytes + MAX_LINE,
        "{held_names} name bytes"
    );
    assert!(
        read_bytes <= read.max(1),
        "{read_bytes} bytes read over the cap {read}"
    );
}

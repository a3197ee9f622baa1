//! Arbitrary bytes as a compressed ELF section (zlib, zstd, or stored) declaring an arbitrary
//! inflated size, and as MiniDebugInfo (xz): inflating must never exceed the declared size
//! or the budget, allocate before checking the declaration, or panic.
//!
//! Input layout: selector u8 (0 stored, 1 zlib, 2 zstd, 3 MiniDebugInfo), declared inflated
//! size u64 (little-endian), then the compressed bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let selector = data[0];
    let declared = u64::from_le_bytes(data[1..9].try_into().unwrap());
    let body = &data[9..];
    if selector % 4 == 3 {
        symbolize::fuzzing::minidebuginfo(body);
    } else {
        symbolize::fuzzing::inflate_section(selector % 4, declared, body);
    }
});

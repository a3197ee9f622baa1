//! Arbitrary text as a tracepoint `format` file plus arbitrary RAW payload bytes: parsing
//! and every decoder built from the parsed format must fail cleanly, never panic.
//!
//! Input layout: the format text, a NUL byte, then the payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perfring::tracepoint::{SchedSwitchDecoder, SchedWakeupDecoder, StateTable, TracepointFormat};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let text = String::from_utf8_lossy(&data[..split]);
    let payload = data.get(split + 1..).unwrap_or(&[]);
    let Ok(format) = TracepointFormat::parse(&text) else {
        return;
    };
    for field in &format.fields {
        let _ = field.bytes(payload);
        let _ = field.read_i64(payload);
        let _ = field.read_u64(payload);
    }
    if let Ok(d) = SchedSwitchDecoder::new(&format) {
        let _ = d.decode(payload);
        let _ = d.state_table().decode(u64::MAX);
    }
    if let Ok(d) = SchedWakeupDecoder::new(&format) {
        let _ = d.decode(payload);
    }
    let table = StateTable::from_print_fmt(&format.print_fmt);
    for raw in [0, 1, 2, 0x40, 0x80, 0x100, 0x400, u64::MAX] {
        std::hint::black_box(table.decode(raw));
    }
});

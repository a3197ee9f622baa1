//! Arbitrary bytes as kernel ring contents: the record parser and the ring reader must
//! return errors (or skip), never panic or read out of bounds.
//!
//! Input layout: 8 bytes sample_type, 8 bytes regs_user_mask, 1 byte of flags (sample_id_all,
//! read_format bits, branch hw_index), 8 bytes head and 8 bytes tail for the ring, then the
//! record bytes. The same bytes are parsed directly and as the data area of a one-page ring
//! (so wrapped records and bogus head/tail pairs are exercised too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use perfring::record::{parse_record, Record, SampleFormat};
use perfring::ring::{HeapRing, RingBuffer};

fn u64_at(data: &[u8], at: usize) -> u64 {
    data.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Touch every lazily decoded part of a record, as the profiler's consumers do.
fn consume(rec: &Record<'_>) -> u64 {
    let mut acc = 0u64;
    if let Record::Sample(s) = rec {
        if let Some(cc) = &s.callchain {
            acc = cc.iter().fold(acc, u64::wrapping_add);
            acc = cc.frames().fold(acc, |a, (_, ip)| a ^ ip);
            acc ^= cc.get(cc.len().wrapping_sub(1)).unwrap_or(0);
        }
        if let Some(regs) = &s.regs_user {
            for i in 0..64 {
                acc ^= regs.get(i).unwrap_or(0);
            }
            acc ^= regs.values().iter().fold(0, u64::wrapping_add);
        }
        if let Some(read) = &s.read {
            acc ^= read.iter().fold(0, |a, v| a ^ v.value);
        }
        if let Some(b) = &s.branch_stack {
            acc ^= b.iter().fold(0, |a, e| a ^ e.from ^ e.to);
        }
        acc ^= s.stack_user.map_or(0, |st| st.len() as u64);
        acc ^= s.raw.map_or(0, |r| r.len() as u64);
    }
    // Debug formatting walks every field too.
    acc ^ format!("{rec:?}").len() as u64
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 33 {
        return;
    }
    let flags = data[16];
    let fmt = SampleFormat {
        sample_type: u64_at(data, 0),
        regs_user_mask: u64_at(data, 8),
        sample_id_all: flags & 1 != 0,
        // GROUP, ID, TOTAL_TIME_ENABLED/RUNNING, LOST are bits 0..=4 of read_format.
        read_format: u64::from(flags >> 1) & 0x1f,
        branch_sample_type: if flags & 0x40 != 0 { 1 << 17 } else { 0 },
    };
    let head = u64_at(data, 17);
    let tail = u64_at(data, 25);
    let body = &data[33..];

    // Directly: every offset, as a caller skipping by header size would.
    let mut at = 0;
    while at < body.len() {
        let Ok(rec) = parse_record(&body[at..], &fmt) else {
            break;
        };
        std::hint::black_box(consume(&rec));
        let _ = fmt.identifier_of(&body[at..]);
        let size = u16::from_ne_bytes([body[at + 6], body.get(at + 7).copied().unwrap_or(0)]);
        if size < 8 {
            break;
        }
        at += usize::from(size);
    }

    // Through a ring whose data area holds the bytes, with arbitrary positions.
    let Ok(mut ring) = HeapRing::new(1) else {
        return;
    };
    ring.fill_data(body);
    // Keep some inputs sane so the reader gets past the head/tail check often.
    let (head, tail) = if flags & 0x80 != 0 {
        (tail.wrapping_add(head % 4097), tail)
    } else {
        (head, tail)
    };
    ring.set_positions(head, tail);
    let Ok(mut reader) = RingBuffer::new(ring.memory()) else {
        return;
    };
    let mut n = 0u64;
    reader.read_records(|bytes| {
        if let Ok(rec) = parse_record(bytes, &fmt) {
            n ^= consume(&rec);
        }
    });
    std::hint::black_box((n, reader.stats()));
    // A second read must find the ring empty or consistent, not loop or panic.
    reader.read_records(|_| {});
});

//! Truncated, oversized and random input: errors, never panics.

mod support;

use perfring::record::{parse_record, record_type, ParseError, Record, SampleFormat};
use proptest::prelude::*;
use support::builder::{callchain_sample, RecordBuilder};

fn callchain_format() -> SampleFormat {
    SampleFormat {
        sample_type: 1 | 2 | 4 | 128 | 256 | 32, // IP|TID|TIME|CPU|PERIOD|CALLCHAIN
        ..SampleFormat::default()
    }
}

fn patch_u64(rec: &mut [u8], at: usize, v: u64) {
    rec[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

#[test]
fn header_errors() {
    let fmt = SampleFormat::default();
    assert_eq!(parse_record(&[], &fmt), Err(ParseError::ShortHeader(0)));
    assert_eq!(
        parse_record(&[9, 0, 0], &fmt),
        Err(ParseError::ShortHeader(3))
    );
    let zero = RecordBuilder::new(record_type::SAMPLE, 0).finish_with_size(0);
    assert!(matches!(
        parse_record(&zero, &fmt),
        Err(ParseError::BadSize { size: 0, .. })
    ));
    let oversize = RecordBuilder::new(record_type::MMAP, 0)
        .u64(0)
        .finish_with_size(400);
    assert!(matches!(
        parse_record(&oversize, &fmt),
        Err(ParseError::BadSize {
            size: 400,
            available: 16
        })
    ));
}

#[test]
fn every_truncation_of_a_sample_fails_cleanly() {
    let mut rec = callchain_sample(&[1, 2, 3, 4]);
    let fmt = callchain_format();
    // Shrink the declared size 8 bytes at a time: the body no longer holds its fields.
    for size in (8..rec.len()).step_by(8) {
        rec[6..8].copy_from_slice(&(size as u16).to_ne_bytes());
        let r = parse_record(&rec, &fmt);
        assert!(
            matches!(
                r,
                Err(ParseError::Truncated { .. } | ParseError::CountTooLarge { .. })
            ),
            "size {size}: {r:?}"
        );
    }
}

#[test]
fn callchain_nr_overflowing_the_record() {
    let fmt = callchain_format();
    let mut rec = callchain_sample(&[1, 2]);
    // nr sits after ip, pid/tid, time, cpu, period: 8 + 5*8.
    for nr in [3, 1 << 40, u64::MAX / 8 + 1, u64::MAX] {
        patch_u64(&mut rec, 48, nr);
        assert!(
            matches!(
                parse_record(&rec, &fmt),
                Err(ParseError::CountTooLarge { field: "callchain", count, .. }) if count == nr
            ),
            "nr {nr}"
        );
    }
}

#[test]
fn stack_user_dyn_size_larger_than_size() {
    let fmt = SampleFormat {
        sample_type: 1 << 13,
        ..SampleFormat::default()
    };
    let rec = RecordBuilder::new(record_type::SAMPLE, 0)
        .u64(16)
        .bytes(&[1; 16])
        .u64(17)
        .finish();
    assert!(matches!(
        parse_record(&rec, &fmt),
        Err(ParseError::CountTooLarge {
            field: "stack_user.dyn_size",
            ..
        })
    ));
    // size claims more than the record holds
    let rec = RecordBuilder::new(record_type::SAMPLE, 0)
        .u64(4096)
        .bytes(&[1; 16])
        .finish();
    assert!(parse_record(&rec, &fmt).is_err());
}

#[test]
fn raw_size_overflowing_the_record() {
    let fmt = SampleFormat {
        sample_type: 1 << 10,
        ..SampleFormat::default()
    };
    let rec = RecordBuilder::new(record_type::SAMPLE, 0)
        .u32(u32::MAX)
        .u32(0)
        .finish();
    assert!(matches!(
        parse_record(&rec, &fmt),
        Err(ParseError::CountTooLarge { field: "raw", .. })
    ));
}

#[test]
fn regs_user_mask_larger_than_record() {
    let fmt = SampleFormat {
        sample_type: 1 << 12,
        regs_user_mask: u64::MAX,
        ..SampleFormat::default()
    };
    let rec = RecordBuilder::new(record_type::SAMPLE, 0)
        .u64(2)
        .u64(1)
        .finish();
    assert!(matches!(
        parse_record(&rec, &fmt),
        Err(ParseError::CountTooLarge {
            field: "regs_user",
            ..
        })
    ));
}

#[test]
fn trailer_larger_than_record() {
    let fmt = SampleFormat {
        sample_type: 2 | 4 | 64 | 128 | (1 << 16),
        sample_id_all: true,
        ..SampleFormat::default()
    };
    let rec = RecordBuilder::new(record_type::LOST, 0)
        .u64(1)
        .u64(2)
        .finish();
    assert!(matches!(
        parse_record(&rec, &fmt),
        Err(ParseError::NoRoomForSampleId { trailer: 40, .. })
    ));
    // Room for the trailer but not the body.
    let rec = RecordBuilder::new(record_type::FORK, 0)
        .bytes(&[0; 40])
        .finish();
    assert!(matches!(
        parse_record(&rec, &fmt),
        Err(ParseError::Truncated { .. })
    ));
}

#[test]
fn filename_without_nul_is_taken_whole() {
    let rec = RecordBuilder::new(record_type::COMM, 0)
        .u32_pair(1, 1)
        .bytes(b"abcdefgh")
        .finish();
    let Ok(Record::Comm(c)) = parse_record(&rec, &SampleFormat::default()) else {
        panic!()
    };
    assert_eq!(c.comm, b"abcdefgh");
}

fn any_format() -> impl Strategy<Value = SampleFormat> {
    (
        0u64..(1 << 25),
        0u64..32,
        prop_oneof![Just(0u64), Just(0x1c0u64), Just(0xff0fffu64), any::<u64>()],
        any::<bool>(),
        0u64..(1 << 20),
    )
        .prop_map(
            |(sample_type, read_format, regs_user_mask, sample_id_all, branch_sample_type)| {
                SampleFormat {
                    sample_type,
                    read_format,
                    regs_user_mask,
                    sample_id_all,
                    branch_sample_type,
                }
            },
        )
}

/// Records of a plausible type and size with random bodies hit far more parser paths than
/// fully random bytes, whose header is almost always invalid.
fn framed_record() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![1u32..=16, any::<u32>()],
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(rt, misc, body)| {
            let mut rec = Vec::with_capacity(body.len() + 8);
            rec.extend_from_slice(&rt.to_ne_bytes());
            rec.extend_from_slice(&misc.to_ne_bytes());
            rec.extend_from_slice(&((body.len() + 8) as u16).to_ne_bytes());
            rec.extend_from_slice(&body);
            rec
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                   fmt in any_format()) {
        let _ = parse_record(&bytes, &fmt);
        let _ = fmt.identifier_of(&bytes);
    }

    #[test]
    fn framed_random_records_never_panic(rec in framed_record(), fmt in any_format()) {
        if let Ok(Record::Sample(s)) = parse_record(&rec, &fmt) {
            // Walk every lazily decoded part too: iterators must stay in bounds.
            if let Some(c) = s.callchain { let _ = c.frames().count() + c.iter().count(); }
            if let Some(r) = s.read { let _ = r.iter().count(); }
            if let Some(b) = s.branch_stack {
                let _ = b.iter().count();
                if let Some(c) = b.counters { let _ = c.iter().count(); }
            }
            if let Some(r) = s.regs_user { for i in 0..70 { let _ = r.get(i); } }
            if let Some(st) = s.stack_user { prop_assert!(st.len() <= rec.len()); }
        }
    }
}

//! The ring reader against HeapRing, a producer that writes like the kernel.

mod support;

use perfring::record::{parse_record, Record, RecordHeader, SampleFormat};
use perfring::ring::{HeapRing, PushOutcome, RingBuffer, RingError, RingMemory, RingStats};
use proptest::prelude::*;
use support::builder::{callchain_sample, RecordBuilder};

fn callchain_format() -> SampleFormat {
    SampleFormat {
        sample_type: 1 | 2 | 4 | 128 | 256 | 32,
        ..SampleFormat::default()
    }
}

fn drain(reader: &mut RingBuffer) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let n = reader.read_records(|b| out.push(b.to_vec()));
    assert_eq!(n, out.len());
    out
}

#[test]
fn records_round_trip_across_many_wraps() {
    let mut ring = HeapRing::new(1).unwrap();
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    assert_eq!(reader.data_size(), 4096);
    assert!(!reader.used_header_fallback());
    assert!(!reader.has_data());
    let mut wrapped = 0;
    // Record sizes of 48..=216 bytes never divide 4096 evenly, so records keep landing
    // across the end of the ring.
    for round in 0..200u64 {
        let frames: Vec<u64> = (0..(round % 22)).map(|i| round * 100 + i).collect();
        let rec = callchain_sample(&frames);
        let start = ring.head() % 4096;
        if start + rec.len() as u64 > 4096 {
            wrapped += 1;
        }
        assert_eq!(ring.push_record(&rec), PushOutcome::Written);
        assert!(reader.has_data());
        let got = drain(&mut reader);
        assert_eq!(got, std::slice::from_ref(&rec));
        let Ok(Record::Sample(s)) = parse_record(&got[0], &callchain_format()) else {
            panic!()
        };
        assert_eq!(s.callchain.unwrap().iter().collect::<Vec<_>>(), frames);
        assert_eq!(ring.tail(), ring.head(), "tail published after the batch");
    }
    assert!(wrapped > 5, "only {wrapped} records straddled the end");
    assert_eq!(reader.stats(), RingStats::default());
}

#[test]
fn batch_of_records_in_order() {
    let mut ring = HeapRing::new(2).unwrap();
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    let recs: Vec<Vec<u8>> = (0..50u64)
        .map(|i| callchain_sample(&vec![i; i as usize % 7]))
        .collect();
    // Two passes so the second batch wraps.
    for _ in 0..2 {
        for r in &recs {
            assert_eq!(ring.push_record(r), PushOutcome::Written);
        }
        assert_eq!(drain(&mut reader), recs);
    }
}

#[test]
fn full_ring_loses_records_and_reports_lost() {
    let mut ring = HeapRing::new(1).unwrap();
    ring.set_lost_record(99, Vec::new());
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    let rec = callchain_sample(&[0; 25]); // 256 bytes
    assert_eq!(rec.len(), 256);
    for _ in 0..16 {
        assert_eq!(ring.push_record(&rec), PushOutcome::Written);
    }
    // Full: the kernel never overwrites unread data.
    for _ in 0..5 {
        assert_eq!(ring.push_record(&rec), PushOutcome::Lost);
    }
    assert_eq!(ring.pending_lost(), 5);
    assert_eq!(drain(&mut reader).len(), 16);
    // Now a LOST record precedes the next record.
    assert_eq!(ring.push_record(&rec), PushOutcome::Written);
    let got = drain(&mut reader);
    assert_eq!(got.len(), 2);
    let Ok(Record::Lost(l)) = parse_record(&got[0], &SampleFormat::default()) else {
        panic!("{:?}", &got[0])
    };
    assert_eq!((l.id, l.lost), (99, 5));
    assert_eq!(got[1], rec);
    assert_eq!(
        reader.stats(),
        RingStats {
            lost_records: 5,
            lost_samples: 0,
            lost_events: 1,
            corrupt: 0
        }
    );
}

#[test]
fn lost_samples_are_counted() {
    let mut ring = HeapRing::new(1).unwrap();
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    for n in [3, 4] {
        let rec = RecordBuilder::new(13, 0).u64(n).finish();
        assert_eq!(ring.push_record(&rec), PushOutcome::Written);
    }
    assert_eq!(drain(&mut reader).len(), 2);
    assert_eq!(reader.stats().lost_samples, 7);
}

#[test]
fn legacy_header_uses_one_page_offset() {
    let mut ring = HeapRing::with_layout(4096, 2, true).unwrap();
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    assert!(reader.used_header_fallback());
    assert_eq!(reader.data_size(), 8192);
    let rec = callchain_sample(&[1, 2, 3]);
    assert_eq!(ring.push_record(&rec), PushOutcome::Written);
    assert_eq!(drain(&mut reader), [rec]);
}

/// Memory with a hand-written header page, to feed the constructor bad layouts.
struct FakeMemory {
    buf: Vec<u64>,
    page_size: usize,
}

impl FakeMemory {
    fn new(bytes: usize, page_size: usize, data_offset: u64, data_size: u64) -> Self {
        let mut buf = vec![0u64; bytes / 8];
        if let Some(w) = buf.get_mut(1040 / 8) {
            *w = data_offset;
        }
        if let Some(w) = buf.get_mut(1048 / 8) {
            *w = data_size;
        }
        FakeMemory { buf, page_size }
    }
}

// SAFETY: a Vec<u64> is 8-aligned and lives as long as the value.
unsafe impl RingMemory for FakeMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.buf.as_ptr() as *mut u8
    }
    fn len(&self) -> usize {
        self.buf.len() * 8
    }
    fn page_size(&self) -> usize {
        self.page_size
    }
}

#[test]
fn constructor_rejects_bad_layouts() {
    let bad = |m: FakeMemory| RingBuffer::new(Box::new(m)).unwrap_err();
    assert!(matches!(
        bad(FakeMemory::new(4096 + 3000, 4096, 4096, 3000)),
        RingError::BadDataArea { .. }
    ));
    assert!(matches!(
        bad(FakeMemory::new(8192, 4096, 4096, 8192)),
        RingError::BadDataArea { .. }
    ));
    assert!(matches!(
        bad(FakeMemory::new(8192, 4096, 4096, u64::MAX)),
        RingError::BadDataArea { .. }
    ));
    assert!(matches!(
        bad(FakeMemory::new(8192, 4096, u64::MAX - 10, 4096)),
        RingError::BadDataArea { .. }
    ));
    assert!(matches!(
        bad(FakeMemory::new(8192, 4096, 8, 4096)),
        RingError::BadDataArea { .. }
    ));
    // Legacy layout whose remainder is not a power of two.
    assert!(matches!(
        bad(FakeMemory::new(4096 * 4, 4096, 0, 0)),
        RingError::BadDataArea { .. }
    ));
    assert!(matches!(
        bad(FakeMemory::new(4096, 4096, 0, 0)),
        RingError::TooSmall { .. }
    ));
    assert!(matches!(
        bad(FakeMemory::new(512, 4096, 0, 0)),
        RingError::TooSmall { .. }
    ));
    // And a good one: data at an offset the kernel may choose, size a power of two.
    let ok = RingBuffer::new(Box::new(FakeMemory::new(8192, 4096, 4096, 4096))).unwrap();
    assert_eq!(ok.data_size(), 4096);
}

#[test]
fn zero_size_header_is_corruption_and_skips_to_head() {
    let mut ring = HeapRing::new(1).unwrap();
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    let good = callchain_sample(&[1]);
    ring.push_raw(&good);
    ring.push_raw(&RecordBuilder::new(9, 0).u64(0).finish_with_size(0));
    ring.push_raw(&good);
    ring.publish_head();
    // The first record is delivered; the rest up to head is dropped.
    assert_eq!(drain(&mut reader), std::slice::from_ref(&good));
    assert_eq!(reader.stats().corrupt, 1);
    assert_eq!(ring.tail(), ring.head());
    // The ring keeps working afterwards.
    assert_eq!(ring.push_record(&good), PushOutcome::Written);
    assert_eq!(drain(&mut reader), [good]);
}

#[test]
fn record_longer_than_published_data_is_corruption() {
    let mut ring = HeapRing::new(1).unwrap();
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    let rec = callchain_sample(&[1, 2, 3]);
    ring.push_raw(&rec[..rec.len() - 8]);
    ring.publish_head();
    assert_eq!(drain(&mut reader).len(), 0);
    assert_eq!(reader.stats().corrupt, 1);
}

#[test]
fn head_behind_tail_or_too_far_ahead_is_corruption() {
    let mut ring = HeapRing::new(1).unwrap();
    ring.set_positions(100, 200);
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    assert_eq!(drain(&mut reader).len(), 0);
    assert_eq!(reader.stats().corrupt, 1);
    assert_eq!(ring.tail(), 100);

    ring.set_positions(100 + 4096 + 8, 100);
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    assert_eq!(drain(&mut reader).len(), 0);
    assert_eq!(reader.stats().corrupt, 1);
}

#[test]
fn positions_near_u64_max_wrap_correctly() {
    let mut ring = HeapRing::new(1).unwrap();
    let start = u64::MAX - 100;
    ring.set_positions(start, start);
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    let rec = callchain_sample(&[7; 20]);
    for _ in 0..3 {
        assert_eq!(ring.push_record(&rec), PushOutcome::Written);
    }
    assert_eq!(drain(&mut reader), [rec.clone(), rec.clone(), rec]);
    assert!(ring.head() < start, "head wrapped past u64::MAX");
}

#[test]
fn tail_is_published_while_a_large_batch_is_consumed() {
    // 1 MiB ring filled completely; the tail must move before the batch ends so the
    // kernel can write again.
    let mut ring = HeapRing::new(256).unwrap();
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    let rec = callchain_sample(&[0; 121]); // 1024 bytes
    assert_eq!(rec.len(), 1024);
    while ring.push_record(&rec) == PushOutcome::Written {}
    let tail_word = ring.memory();
    let mut tails_seen = Vec::new();
    reader.read_records(|_| {
        // SAFETY: 1032 is data_tail in the header page of a live allocation.
        let t = unsafe { (tail_word.as_ptr().add(1032) as *const u64).read_volatile() };
        tails_seen.push(t);
    });
    assert_eq!(tails_seen.len(), 1024);
    assert!(
        tails_seen.iter().any(|&t| t > 0),
        "tail only published at the end"
    );
    assert!(*tails_seen.last().unwrap() < 1024 * 1024);
    assert_eq!(ring.tail(), 1024 * 1024);
}

/// Producer and consumer on two threads. Both outcomes of a push are forced rather than
/// left to scheduling: the ring is filled until a record is lost before the consumer may
/// start, and the producer then keeps going until WANTED records got through a ring far
/// smaller than they are, which only a consumer draining concurrently makes possible.
#[test]
fn concurrent_producer_and_consumer() {
    let mut ring = HeapRing::new(4).unwrap();
    let mut reader = RingBuffer::new(ring.memory()).unwrap();
    const WANTED: u64 = 5_000;
    let (full_tx, full_rx) = std::sync::mpsc::channel::<()>();
    let producer = std::thread::spawn(move || {
        let (mut written, mut lost) = (0u64, 0u64);
        let mut i = 0u64;
        let mut push = |ring: &mut HeapRing, written: &mut u64, lost: &mut u64| {
            i += 1;
            match ring.push_record(&callchain_sample(&vec![i; (i % 20) as usize])) {
                PushOutcome::Written => *written += 1,
                PushOutcome::Lost => {
                    *lost += 1;
                    std::thread::yield_now();
                }
            }
        };
        // Phase 1, consumer held back: the ring must fill up.
        while lost == 0 {
            push(&mut ring, &mut written, &mut lost);
        }
        full_tx.send(()).unwrap();
        // Phase 2, concurrently with the consumer.
        while written < WANTED {
            push(&mut ring, &mut written, &mut lost);
        }
        // Flush the pending LOST report with one last record.
        while ring.pending_lost() > 0 {
            match ring.push_record(&callchain_sample(&[])) {
                PushOutcome::Written => written += 1,
                PushOutcome::Lost => lost += 1,
            }
            std::thread::yield_now();
        }
        (written, lost)
    });
    full_rx.recv().unwrap();
    let mut samples = 0u64;
    let mut last_time_id = None;
    let fmt = callchain_format();
    loop {
        let done = producer.is_finished();
        reader.read_records(|b| {
            if let Ok(Record::Sample(s)) = parse_record(b, &fmt) {
                let chain: Vec<u64> = s.callchain.unwrap().iter().collect();
                // Content must be intact: every frame equals the record's index.
                if let Some(&first) = chain.first() {
                    assert!(chain.iter().all(|&f| f == first));
                    assert!(last_time_id.is_none_or(|l| first > l), "out of order");
                    last_time_id = Some(first);
                }
                samples += 1;
            }
        });
        if done && !reader.has_data() {
            break;
        }
    }
    let (written, lost): (u64, u64) = producer.join().unwrap();
    assert!(lost > 0 && written >= WANTED);
    // Far more than one ring's worth went through: the consumer drained while producing.
    assert!(written * 48 > 10 * 4 * 4096);
    let stats = reader.stats();
    assert_eq!(samples, written);
    assert_eq!(stats.lost_records, lost);
    assert_eq!(stats.corrupt, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Any ring contents and any head/tail: the reader terminates, stays in bounds, and
    /// every record it hands out has a header consistent with its length.
    #[test]
    fn arbitrary_ring_state_never_panics(
        contents in proptest::collection::vec(any::<u8>(), 1..512),
        head in prop_oneof![any::<u64>(), 0u64..20_000],
        tail in prop_oneof![any::<u64>(), 0u64..20_000],
        legacy in any::<bool>(),
    ) {
        let mut ring = HeapRing::with_layout(4096, 2, legacy).unwrap();
        ring.fill_data(&contents);
        ring.set_positions(head, tail);
        let mut reader = RingBuffer::new(ring.memory()).unwrap();
        let mut bytes = 0u64;
        let n = reader.read_records(|rec| {
            let h = RecordHeader::parse(rec).unwrap();
            assert_eq!(usize::from(h.size), rec.len());
            bytes += rec.len() as u64;
            let _ = parse_record(rec, &SampleFormat { sample_type: 0x3ff, sample_id_all: true, ..Default::default() });
        });
        prop_assert!(bytes <= 8192);
        prop_assert!(n as u64 <= 8192 / 8);
        prop_assert_eq!(ring.tail(), head, "reader always catches up to the head it saw");
        prop_assert!(!reader.has_data());
    }
}

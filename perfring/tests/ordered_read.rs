//! The ordered reader: rings merged in time order, held back only as long as a ring could
//! still deliver an earlier record, untimed records kept in ring order, nothing dropped.

mod support;

use perfring::order::{Ordered, OrderedReader};
use perfring::record::{record_type, Record, SampleFormat};
use proptest::prelude::*;
use support::builder::RecordBuilder;

const IP: u64 = 1 << 0;
const TID: u64 = 1 << 1;
const TIME: u64 = 1 << 2;
const ID: u64 = 1 << 6;
const IDENTIFIER: u64 = 1 << 16;

fn fmt() -> SampleFormat {
    SampleFormat {
        sample_type: IDENTIFIER | IP | TID | TIME | ID,
        sample_id_all: true,
        ..SampleFormat::default()
    }
}

/// A sample whose IP says which test record it is.
fn sample(tag: u64, time: u64) -> Vec<u8> {
    RecordBuilder::new(record_type::SAMPLE, 2)
        .u64(9) // identifier
        .u64(tag) // ip
        .u32_pair(1, 1)
        .u64(time)
        .u64(9) // id
        .finish()
}

/// An MMAP (sample_id_all trailer: pid/tid, time, id, identifier) whose address is `tag`.
fn mmap(tag: u64, time: u64) -> Vec<u8> {
    RecordBuilder::new(record_type::MMAP, 2)
        .u32_pair(1, 1)
        .u64(tag)
        .u64(0x1000)
        .u64(0)
        .c_string(b"/lib/x.so")
        .u32_pair(1, 1)
        .u64(time)
        .u64(9)
        .u64(9)
        .finish()
}

/// The tag of a delivered test record.
fn tag(o: &Ordered<'_>) -> u64 {
    match o.record {
        Record::Sample(s) => s.ip.unwrap(),
        Record::Mmap(m) => m.addr,
        Record::Lost(l) => l.lost,
        ref r => panic!("unexpected {r:?}"),
    }
}

fn round(r: &mut OrderedReader) -> Vec<u64> {
    let mut out = Vec::new();
    r.end_round(|o| out.push(tag(o)));
    out
}

fn finish(r: &mut OrderedReader) -> Vec<u64> {
    let mut out = Vec::new();
    r.finish(|o| out.push(tag(o)));
    out
}

#[test]
fn times_are_read_where_the_format_puts_them() {
    let f = fmt();
    assert_eq!(f.time_of(&sample(1, 1234)), Some(1234));
    assert_eq!(f.time_of(&mmap(1, 999)), Some(999));
    // A truncated record has no time rather than a wrong one.
    let short = sample(1, 5);
    assert_eq!(f.time_of(&short[..20]), None);
    let no_id_all = SampleFormat {
        sample_id_all: false,
        ..f
    };
    assert_eq!(no_id_all.time_of(&mmap(1, 999)), None);
}

#[test]
fn rings_are_merged_in_time_order_with_ties_to_the_lower_cpu() {
    let mut r = OrderedReader::new(fmt());
    r.push(0, &sample(1, 10));
    r.push(0, &sample(2, 30));
    r.push(1, &sample(3, 10));
    r.push(1, &sample(4, 20));
    assert_eq!(finish(&mut r), vec![1, 3, 4, 2]);
    assert_eq!(r.held(), 0);
    assert_eq!(r.stats().records, 4);
}

/// The case ordering exists for: the MMAP a sample needs is written on another CPU just
/// before the sample, but that CPU's ring is read before the record is visible in it.
#[test]
fn a_sample_waits_for_an_earlier_mmap_of_another_cpu() {
    let mut r = OrderedReader::new(fmt());
    r.add_ring(0);
    r.add_ring(1);
    // Round 1: CPU 0 is idle so far; CPU 1 has the sample at 110.
    r.push(1, &sample(7, 110));
    assert!(
        round(&mut r).is_empty(),
        "CPU 0 could still deliver anything"
    );
    // Round 2: the MMAP at 100 shows up in CPU 0's ring.
    r.push(0, &mmap(6, 100));
    assert_eq!(round(&mut r), vec![6, 7]);
    assert_eq!(r.stats().out_of_order, 0);
}

#[test]
fn busy_rings_release_up_to_the_slowest_and_idle_ones_hold_one_round() {
    let mut r = OrderedReader::new(fmt());
    r.push(0, &sample(1, 100));
    r.push(1, &sample(2, 40));
    // Both rings busy: nothing either can still deliver is older than 40.
    assert_eq!(round(&mut r), vec![2]);
    r.push(1, &sample(3, 90));
    r.push(0, &sample(4, 150));
    // Round rule (100, the newest of the previous round) beats the busy rule (90).
    assert_eq!(round(&mut r), vec![3, 1]);
    // Nothing new: everything seen before this round is safe.
    assert_eq!(round(&mut r), vec![4]);
    assert_eq!(r.held(), 0);
}

#[test]
fn an_idle_ring_does_not_stall_the_merge() {
    let mut r = OrderedReader::new(fmt());
    for cpu in 0..4 {
        r.push(cpu, &sample(100 + u64::from(cpu), u64::from(cpu)));
    }
    assert_eq!(round(&mut r), vec![100]);
    r.push(0, &sample(5, 50));
    round(&mut r);
    // CPUs 1-3 never deliver again; one more round releases CPU 0's record anyway.
    assert_eq!(round(&mut r), vec![5]);
}

#[test]
fn untimed_records_keep_their_place_in_their_ring() {
    let f = SampleFormat {
        sample_id_all: false,
        ..fmt()
    };
    let mut r = OrderedReader::new(f);
    r.push(0, &sample(1, 10));
    r.push(0, &mmap(2, 0)); // no trailer time: stays after sample 1
    r.push(0, &sample(3, 30));
    r.push(1, &sample(4, 20));
    let mut times = Vec::new();
    let mut out = Vec::new();
    r.finish(|o| {
        out.push(tag(o));
        times.push(o.time);
    });
    assert_eq!(out, vec![1, 2, 4, 3]);
    assert_eq!(times, vec![Some(10), Some(10), Some(20), Some(30)]);
    // A format without TIME at all: ring order, every round.
    let mut r = OrderedReader::new(SampleFormat {
        sample_type: IDENTIFIER | IP | TID | ID,
        ..fmt()
    });
    let untimed = |tag: u64| {
        RecordBuilder::new(record_type::SAMPLE, 2)
            .u64(9)
            .u64(tag)
            .u32_pair(1, 1)
            .u64(9)
            .finish()
    };
    r.push(1, &untimed(1));
    r.push(0, &untimed(2));
    r.push(1, &untimed(3));
    assert_eq!(round(&mut r), vec![2, 1, 3]);
}

#[test]
fn lost_and_malformed_records_are_accounted_not_dropped_silently() {
    let mut r = OrderedReader::new(fmt());
    let lost = RecordBuilder::new(record_type::LOST, 0)
        .u64(9) // id
        .u64(17) // lost
        .u32_pair(1, 1)
        .u64(60)
        .u64(9)
        .u64(9)
        .finish();
    r.push(0, &sample(1, 50));
    r.push(0, &lost);
    // Too short for its own header's size: unparseable, counted.
    let mut bad = sample(2, 55);
    bad[6] = 200;
    r.push(0, &bad);
    assert_eq!(finish(&mut r), vec![1, 17]);
    assert_eq!(r.stats().parse_errors, 1);
    assert_eq!(r.stats().records, 3);
}

proptest! {
    /// A live model: CPU i's records become visible `lag` after their time, ring i is read a
    /// little after ring i-1 in every round, and rounds are `round_step` apart. While the
    /// lag is shorter than a round (what perf's round rule assumes), the stream is in order
    /// and complete.
    #[test]
    fn rounds_deliver_a_globally_ordered_stream(
        records in proptest::collection::vec((0u32..4, 0u64..1000), 0..120),
        round_step in 5u64..200,
        lag_pct in 0u64..100,
    ) {
        let lag = round_step * lag_pct / 100;
        let mut by_ring: Vec<Vec<u64>> = vec![Vec::new(); 4];
        for &(ring, time) in &records {
            by_ring[ring as usize].push(time);
        }
        for ring in &mut by_ring {
            ring.sort();
        }
        let mut cursors = [0usize; 4];
        let mut r = OrderedReader::new(fmt());
        for cpu in 0..4 {
            r.add_ring(cpu);
        }
        let mut out = Vec::new();
        let mut now = 0u64;
        while now < 1000 + 2 * round_step + lag {
            for (i, ring) in by_ring.iter().enumerate() {
                let read_at = now + i as u64;
                while let Some(&t) = ring.get(cursors[i]) {
                    if t + lag > read_at {
                        break;
                    }
                    r.push(i as u32, &sample(t, t));
                    cursors[i] += 1;
                }
            }
            r.end_round(|o| out.push(o.time.unwrap()));
            now += round_step;
        }
        r.finish(|o| out.push(o.time.unwrap()));
        prop_assert_eq!(out.len(), records.len());
        prop_assert!(out.windows(2).all(|w| w[0] <= w[1]), "{:?}", out);
        prop_assert_eq!(r.stats().out_of_order, 0);
    }
}

//! Records/s for the two sample shapes psample records: frame-pointer callchains
//! (~20 frames) and DWARF samples (REGS_USER + 16 KiB STACK_USER), parsed alone, drained
//! through a ring, and drained from four rings in time order — by the ordered reader, and by
//! the batch sort it replaced (copy, parse for the time, sort, parse again), for comparison.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use perfring::order::OrderedReader;
use perfring::record::{parse_record, Record, SampleFormat};
use perfring::ring::{HeapRing, PushOutcome, RingBuffer};
use std::hint::black_box;

const IP: u64 = 1;
const TID: u64 = 1 << 1;
const TIME: u64 = 1 << 2;
const CPU: u64 = 1 << 7;
const PERIOD: u64 = 1 << 8;
const CALLCHAIN: u64 = 1 << 5;
const REGS_USER: u64 = 1 << 12;
const STACK_USER: u64 = 1 << 13;
const X86_64_REGS: u64 = 0xff0fff;

fn header(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&9u32.to_ne_bytes());
    buf.extend_from_slice(&2u16.to_ne_bytes());
    buf.extend_from_slice(&0u16.to_ne_bytes());
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    let size = u16::try_from(buf.len()).expect("sample fits u16");
    buf[6..8].copy_from_slice(&size.to_ne_bytes());
    buf
}

fn push(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_ne_bytes());
}

fn common(buf: &mut Vec<u8>, i: u64) {
    push(buf, 0x40_1000 + i); // ip
    push(buf, (42u64 << 32) | 42); // pid, tid
    push(buf, 1_000_000 + i * 1000); // time
    push(buf, 1); // cpu, res
    push(buf, 10_000); // period
}

fn callchain_sample(i: u64) -> (Vec<u8>, SampleFormat) {
    let mut buf = Vec::new();
    header(&mut buf);
    common(&mut buf, i);
    push(&mut buf, 22);
    push(&mut buf, 128u64.wrapping_neg()); // PERF_CONTEXT_KERNEL (-128)
    push(&mut buf, 0xffff_ffff_8100_0000);
    push(&mut buf, 512u64.wrapping_neg()); // PERF_CONTEXT_USER
    for f in 0..19 {
        push(&mut buf, 0x40_0000 + f * 0x40 + i);
    }
    let fmt = SampleFormat {
        sample_type: IP | TID | TIME | CPU | PERIOD | CALLCHAIN,
        sample_id_all: true,
        ..SampleFormat::default()
    };
    (finish(buf), fmt)
}

fn dwarf_sample(i: u64) -> (Vec<u8>, SampleFormat) {
    let mut buf = Vec::new();
    header(&mut buf);
    common(&mut buf, i);
    push(&mut buf, 2); // abi 64
    for r in 0..X86_64_REGS.count_ones() {
        push(&mut buf, 0x7ffc_0000 + u64::from(r));
    }
    push(&mut buf, 16 * 1024);
    buf.extend(std::iter::repeat_n(0xab, 16 * 1024));
    push(&mut buf, 12 * 1024); // dyn_size
    let fmt = SampleFormat {
        sample_type: IP | TID | TIME | CPU | PERIOD | REGS_USER | STACK_USER,
        regs_user_mask: X86_64_REGS,
        sample_id_all: true,
        ..SampleFormat::default()
    };
    (finish(buf), fmt)
}

/// What a consumer touches per sample: the ip, every callchain entry, the SP register
/// and the stack length — so the lazily decoded parts are measured too.
fn consume(bytes: &[u8], fmt: &SampleFormat) -> u64 {
    parse_record(bytes, fmt).map_or(0, |r| touch(&r))
}

fn touch(r: &Record<'_>) -> u64 {
    match r {
        Record::Sample(s) => {
            let chain: u64 = s
                .callchain
                .map_or(0, |c| c.iter().fold(0, u64::wrapping_add));
            let sp = s.regs_user.and_then(|r| r.get(7)).unwrap_or(0);
            s.ip.unwrap_or(0) ^ chain ^ sp ^ s.stack_user.map_or(0, |st| st.len() as u64)
        }
        _ => 0,
    }
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_parse");
    for (name, make) in [
        (
            "callchain_20",
            callchain_sample as fn(u64) -> (Vec<u8>, SampleFormat),
        ),
        ("dwarf_16k", dwarf_sample),
    ] {
        let samples: Vec<_> = (0..64).map(make).collect();
        group.throughput(Throughput::Elements(samples.len() as u64));
        group.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| {
                samples.iter().fold(0u64, |acc, (bytes, fmt)| {
                    acc ^ consume(black_box(bytes), fmt)
                })
            })
        });

        // Through the ring: 64 records pushed then drained, with wrap-around copies for
        // the records that straddle the end (a 4 MiB ring, so 64 DWARF samples fit).
        let fmt = samples[0].1;
        let mut ring = HeapRing::new(1024).expect("heap ring");
        let mut reader = RingBuffer::new(ring.memory()).expect("reader");
        group.bench_function(format!("ring/{name}"), |b| {
            b.iter(|| {
                for (bytes, _) in &samples {
                    assert_eq!(ring.push_record(bytes), PushOutcome::Written);
                }
                let mut acc = 0u64;
                let n = reader.read_records(|rec| acc ^= consume(rec, &fmt));
                assert_eq!(n, samples.len());
                acc
            })
        });
    }
    group.finish();
}

/// The batch reader the ordered reader replaced: every record copied into an arena and
/// parsed for its time, the batch sorted, every record parsed again.
fn batch_sort(rings: &mut [RingBuffer], fmt: &SampleFormat, arena: &mut Vec<u8>) -> u64 {
    let mut pending: Vec<(u64, usize, usize)> = Vec::new();
    arena.clear();
    for r in rings.iter_mut() {
        r.read_records(|bytes| {
            let time = match parse_record(bytes, fmt) {
                Ok(Record::Sample(s)) => s.time.unwrap_or(0),
                _ => 0,
            };
            let start = arena.len();
            arena.extend_from_slice(bytes);
            pending.push((time, start, arena.len()));
        });
    }
    pending.sort_by_key(|p| p.0);
    pending
        .iter()
        .fold(0, |acc, p| acc ^ consume(&arena[p.1..p.2], fmt))
}

fn bench_ordered(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_order");
    const RINGS: usize = 4;
    for (name, make) in [
        (
            "callchain_20",
            callchain_sample as fn(u64) -> (Vec<u8>, SampleFormat),
        ),
        ("dwarf_16k", dwarf_sample),
    ] {
        // Ring i holds samples i, i + 4, …: every round interleaves all four rings.
        let samples: Vec<_> = (0..64).map(make).collect();
        let fmt = samples[0].1;
        let mut writers: Vec<HeapRing> = (0..RINGS).map(|_| HeapRing::new(1024).unwrap()).collect();
        let mut rings: Vec<RingBuffer> = writers
            .iter()
            .map(|w| RingBuffer::new(w.memory()).unwrap())
            .collect();
        let fill = |writers: &mut [HeapRing]| {
            for (i, (bytes, _)) in samples.iter().enumerate() {
                assert_eq!(writers[i % RINGS].push_record(bytes), PushOutcome::Written);
            }
        };
        group.throughput(Throughput::Elements(samples.len() as u64));
        let mut reader = OrderedReader::new(fmt);
        group.bench_function(format!("ordered/{name}"), |b| {
            b.iter(|| {
                fill(&mut writers);
                for (cpu, r) in rings.iter_mut().enumerate() {
                    r.read_records(|bytes| reader.push(cpu as u32, bytes));
                }
                let mut acc = 0u64;
                reader.end_round(|o| acc ^= touch(&o.record));
                reader.finish(|o| acc ^= touch(&o.record));
                acc
            })
        });
        let mut arena = Vec::new();
        group.bench_function(format!("batch_sort/{name}"), |b| {
            b.iter(|| {
                fill(&mut writers);
                batch_sort(&mut rings, &fmt, &mut arena)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_parse, bench_ordered);
criterion_main!(benches);

//! The record pipeline per sample, through the library API: records from four CPUs'
//! rings merged in time order (perfring's OrderedReader), applied to the tracker, and
//! collected by record's collector (frame-pointer stack split by the callchain convention,
//! user frames resolved in the tracked address space, stack interned, counted per thread
//! name) — everything between the ring and the profile, without a kernel.

use collect::oncpu::Recorder;
use collect::output::Labels;
use collect::pipeline::Pipeline;
use collect::session::Collector;
use collect::stack::StackMode;
use collect::tracker::Tracker;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use perfring::order::OrderedReader;
use perfring::record::{context, record_type, SampleFormat};

const IP: u64 = 1;
const TID: u64 = 1 << 1;
const TIME: u64 = 1 << 2;
const CALLCHAIN: u64 = 1 << 5;
const ID: u64 = 1 << 6;
const CPU: u64 = 1 << 7;
const PERIOD: u64 = 1 << 8;

const PID: u32 = 4242;
const TEXT: u64 = 0x40_0000;
const CPUS: u32 = 4;

fn fmt() -> SampleFormat {
    SampleFormat {
        sample_type: IP | TID | TIME | CALLCHAIN | ID | CPU | PERIOD,
        sample_id_all: true,
        ..SampleFormat::default()
    }
}

fn record(rt: u32, body: &[u64], tail: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&rt.to_ne_bytes());
    b.extend_from_slice(&2u16.to_ne_bytes());
    b.extend_from_slice(&0u16.to_ne_bytes());
    for v in body {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b.extend_from_slice(tail);
    let size = b.len() as u16;
    b[6..8].copy_from_slice(&size.to_ne_bytes());
    b
}

/// The executable mapping every sample's user frames fall in.
fn mmap() -> Vec<u8> {
    let pid_tid = (u64::from(PID) << 32) | u64::from(PID);
    let mut name = b"/usr/bin/bench-target".to_vec();
    name.resize(24, 0);
    // sample_id trailer: pid/tid, time, id, cpu.
    let mut tail = name;
    for v in [pid_tid, 1, 1, 0] {
        tail.extend_from_slice(&v.to_ne_bytes());
    }
    record(record_type::MMAP, &[pid_tid, TEXT, 0x10_0000, 0], &tail)
}

/// Sample `i` of 64 distinct 24-frame stacks (3 kernel, 21 user).
fn sample(i: u64, time: u64, cpu: u32) -> Vec<u8> {
    let pid_tid = (u64::from(PID) << 32) | u64::from(PID);
    let mut body = vec![
        TEXT + 0x100 + i % 64,
        pid_tid,
        time,
        1,
        u64::from(cpu),
        10_000,
    ];
    let mut chain = vec![
        context::KERNEL,
        0xffff_ffff_8100_0010,
        0xffff_ffff_8100_0200,
    ];
    chain.push(0xffff_ffff_8100_0300);
    chain.push(context::USER);
    chain.push(TEXT + 0x100 + i % 64);
    chain.extend((1..21).map(|d| TEXT + 0x1000 * d + (i % 64) * (d % 3)));
    body.push(chain.len() as u64);
    body.extend(chain);
    record(record_type::SAMPLE, &body, &[])
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    let per_round: u64 = 256;
    let records: Vec<(u32, Vec<u8>)> = (0..per_round)
        .map(|i| {
            let cpu = (i % u64::from(CPUS)) as u32;
            (cpu, sample(i, 1_000 + i * 100, cpu))
        })
        .collect();
    g.throughput(Throughput::Elements(per_round));
    g.bench_function("record_fp_4cpus", |b| {
        let mut tracker = Tracker::new(true);
        tracker.on_record(&perfring::record::parse_record(&mmap(), &fmt()).unwrap());
        let mut p = Pipeline::new(tracker, StackMode::Fp);
        let labels = Labels {
            title: "t".into(),
            count_name: "samples".into(),
            extra: Vec::new(),
        };
        let mut recorder = Recorder::new("bench".into(), 1_000_000, None, labels);
        let mut reader = OrderedReader::new(fmt());
        for cpu in 0..CPUS {
            reader.add_ring(cpu);
        }
        b.iter(|| {
            for (cpu, r) in &records {
                reader.push(*cpu, r);
            }
            reader.finish(|o| {
                p.tracker.on_record(&o.record);
                recorder.record(&mut p, o);
            });
            recorder.progress()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

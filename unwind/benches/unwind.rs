//! Unwind throughput on recorded samples of real binaries (`tests/fixtures/threads`:
//! a -O2 -fomit-frame-pointer C program and the libc it ran with).
//!
//! `warm`: steady state of a recording (modules parsed, rule cache populated).
//! `cold`: a fresh Unwinder per batch, so module loading and CFI scanning are included.
//! `fp`: frame-pointer walk over the same bytes, for scale.
//! `hybrid`: the splice on `tests/fixtures/offmix` (off-CPU samples of a frame-pointer
//! program blocked in libc) with the default copy size, against `dwarf` over the samples'
//! whole 16 KiB copies.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use unwind::fixture::Fixture;
use unwind::Unwinder;

fn fixture() -> Fixture {
    Fixture::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/threads"))
        .expect("fixture")
}

fn bench(c: &mut Criterion) {
    let fx = fixture();
    let mut group = c.benchmark_group("unwind");
    group.throughput(Throughput::Elements(fx.samples.len() as u64));

    let mut unwinder = Unwinder::with_resolver(fx.resolver());
    let mut frames = Vec::with_capacity(256);
    group.bench_function("warm", |b| {
        b.iter(|| {
            let mut total = 0;
            for s in &fx.samples {
                frames.clear();
                total += unwinder
                    .unwind_dwarf(&fx.processes, fx.pid, s.regs, &s.stack, &mut frames)
                    .frames;
            }
            total
        })
    });

    group.bench_function("cold", |b| {
        b.iter(|| {
            let mut unwinder = Unwinder::with_resolver(fx.resolver());
            let mut total = 0;
            for s in &fx.samples {
                frames.clear();
                total += unwinder
                    .unwind_dwarf(&fx.processes, fx.pid, s.regs, &s.stack, &mut frames)
                    .frames;
            }
            total
        })
    });

    group.bench_function("fp", |b| {
        b.iter(|| {
            let mut total = 0;
            for s in &fx.samples {
                frames.clear();
                total += unwinder
                    .unwind_fp(&fx.processes, fx.pid, s.regs, &s.stack, &mut frames)
                    .frames;
            }
            total
        })
    });
    group.finish();

    let fx = Fixture::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/offmix"))
        .expect("offmix fixture");
    let mut group = c.benchmark_group("offmix");
    group.throughput(Throughput::Elements(fx.samples.len() as u64));
    let mut unwinder = Unwinder::with_resolver(fx.resolver());
    let copy = unwind::HYBRID_STACK_BYTES as usize;
    group.bench_function("hybrid", |b| {
        b.iter(|| {
            let mut total = 0;
            for s in &fx.samples {
                frames.clear();
                let stack = &s.stack[..s.stack.len().min(copy)];
                total += unwinder
                    .unwind_hybrid(&fx.processes, fx.pid, s.regs, stack, &s.chain, &mut frames)
                    .frames;
            }
            total
        })
    });
    group.bench_function("dwarf", |b| {
        b.iter(|| {
            let mut total = 0;
            for s in &fx.samples {
                frames.clear();
                total += unwinder
                    .unwind_dwarf(&fx.processes, fx.pid, s.regs, &s.stack, &mut frames)
                    .frames;
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Folded aggregation: interning a sample's stack and adding it to a `Profile` (the
//! per-sample hot path) and folding the aggregated profile into sorted lines (after
//! symbolization, which is benchmarked in the symbolize crate; here frames are pre-named
//! so only aggregation is measured).

use collect::frame::Frame;
use collect::names::Names;
use collect::output::fold::Folder;
use collect::profile::Profile;
use collect::tables::Tables;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use symbolize::{SymbolizeOptions, Symbolizer};
use unwind::Processes;

/// `distinct` stacks of depth 24 sharing a common root, like a real service's profile.
fn stacks(named: &mut Names, distinct: usize) -> Vec<Vec<Frame>> {
    (0..distinct)
        .map(|i| {
            (0..24)
                .map(|d| {
                    let name = if d < 12 {
                        format!("common_{d}")
                    } else {
                        format!("fn_{}_{d}", i % 97 + d)
                    };
                    Frame::Named(named.intern(&name))
                })
                .rev()
                .collect()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("aggregate");
    for distinct in [100usize, 5000] {
        let mut t = Tables::default();
        let all = stacks(&mut t.frame_names, distinct);
        let samples = 100_000u64;
        g.throughput(Throughput::Elements(samples));
        g.bench_with_input(BenchmarkId::new("add_samples", distinct), &all, |b, all| {
            b.iter(|| {
                let mut t = Tables::default();
                let mut p = Profile::new();
                let name = t.names.intern("service");
                for i in 0..samples as usize {
                    let stack = t.stacks.intern(&all[(i * 7919) % all.len()]);
                    p.add(name, stack, 1);
                }
                p.total()
            })
        });
        let mut p = Profile::new();
        let name = t.names.intern("service");
        for (i, s) in all.iter().enumerate() {
            let stack = t.stacks.intern(s);
            p.add(name, stack, i as u64 + 1);
        }
        g.throughput(Throughput::Elements(distinct as u64));
        g.bench_with_input(BenchmarkId::new("fold_stacks", distinct), &p, |b, p| {
            b.iter(|| {
                let mut sym = Symbolizer::new(SymbolizeOptions::default());
                let procs = Processes::new();
                Folder::new(&mut sym, &procs, &t.frame_names)
                    .fold(p, &t)
                    .len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

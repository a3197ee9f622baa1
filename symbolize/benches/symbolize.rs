//! Symbolization throughput on a real binary with DWARF (this benchmark's own executable):
//! cold = a fresh Symbolizer per batch (open, parse symbols and DWARF, then look up),
//! warm = the same Symbolizer again (per-address cache).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
use symbolize::{ModuleHandle, ModuleKind, ModuleSpec, SymbolizeOptions, Symbolizer};

const BATCH: usize = 2000;

struct Mapping {
    start: u64,
    end: u64,
    pgoff: u64,
    path: String,
}

fn own_mappings() -> Vec<Mapping> {
    let exe = std::fs::read_link("/proc/self/exe").expect("exe link");
    let exe = exe.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || f[5] != exe {
                return None;
            }
            let (s, e) = f[0].split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                pgoff: u64::from_str_radix(f[2], 16).ok()?,
                path: exe.clone(),
            })
        })
        .collect()
}

/// Runtime addresses in the middle of up to BATCH functions of this executable, with the
/// index of the mapping holding each.
fn sample_addresses(maps: &[Mapping]) -> Vec<(usize, u64)> {
    let data = std::fs::read("/proc/self/exe").expect("read exe");
    let obj = object::File::parse(&*data).expect("parse exe");
    let segs: Vec<(u64, u64, u64)> = obj
        .segments()
        .map(|s| (s.address(), s.file_range().0, s.file_range().1))
        .collect();
    let mut out = Vec::new();
    for sym in obj.symbols() {
        if sym.kind() != SymbolKind::Text || sym.size() < 4 {
            continue;
        }
        let vaddr = sym.address() + sym.size() / 2;
        let Some(&(sv, so, _)) = segs
            .iter()
            .find(|(sv, _, sz)| vaddr >= *sv && vaddr - sv < *sz)
        else {
            continue;
        };
        let off = vaddr - sv + so;
        if let Some((i, m)) = maps
            .iter()
            .enumerate()
            .find(|(_, m)| off >= m.pgoff && off - m.pgoff < m.end - m.start)
        {
            out.push((i, m.start + off - m.pgoff));
        }
        if out.len() == BATCH {
            break;
        }
    }
    assert!(
        out.len() > 100,
        "too few functions found in the benchmark binary"
    );
    out
}

fn setup(maps: &[Mapping]) -> (Symbolizer, Vec<ModuleHandle>) {
    let mut s = Symbolizer::new(SymbolizeOptions::default());
    let handles = maps
        .iter()
        .map(|m| {
            s.add_module(ModuleSpec {
                kind: ModuleKind::File,
                path: m.path.clone(),
                pid: std::process::id(),
                pid_start: None,
                start: m.start,
                end: m.end,
                pgoff: m.pgoff,
                build_id: None,
                inode: None,
            })
        })
        .collect();
    (s, handles)
}

fn run(s: &mut Symbolizer, handles: &[ModuleHandle], addrs: &[(usize, u64)]) -> usize {
    addrs
        .iter()
        .map(|&(i, a)| s.symbolize(handles[i], a).len())
        .sum()
}

fn bench(c: &mut Criterion) {
    let maps = own_mappings();
    let addrs = sample_addresses(&maps);
    let mut g = c.benchmark_group("symbolize");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.sample_size(10);
    g.bench_function("cold", |b| {
        b.iter(|| {
            let (mut s, h) = setup(&maps);
            run(&mut s, &h, &addrs)
        })
    });
    let (mut warm, h) = setup(&maps);
    run(&mut warm, &h, &addrs);
    g.bench_function("warm", |b| b.iter(|| run(&mut warm, &h, &addrs)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

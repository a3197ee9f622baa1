//! How much user stack the hybrid splice needs, measured on whatever runs on this machine
//! (run explicitly, as root, with the load you want to measure running:
//! `cargo test --release -p unwind --test measure_copy -- --ignored --nocapture`;
//! `MEASURE_SECONDS` (default 10) per event).
//!
//! Samples every task system-wide at cpu-clock (on-CPU) and at sched_switch (off-CPU) with
//! the kernel's frame-pointer callchain and 16 KiB of stack, then unwinds each with hybrid
//! over copies of 64 B … 16 KiB: the smallest copy that gives the same stack as the 16 KiB
//! copy is what that sample needed. Prints the distribution per event and per command, for
//! the samples a 16 KiB copy splices (code with frame pointers somewhere up the stack);
//! the others (no frame pointers anywhere: only a full DWARF unwind helps) are counted.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::perf::{self, Scope};
use perfring::attr::EventKind;
use unwind::fixture::FixtureSample;
use unwind::{Completion, Processes, Unwinder};

const SIZES: &[usize] = &[64, 128, 256, 384, 512, 768, 1024, 2048, 4096, 8192, 16384];

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Per sample: the smallest size in SIZES giving the 16 KiB result, and whether that result
/// was a splice at all.
fn needed(u: &mut Unwinder, procs: &Processes, pid: u32, s: &FixtureSample) -> (usize, bool) {
    let mut reference = Vec::new();
    let r = u.unwind_hybrid(procs, pid, s.regs, &s.stack, &s.chain, &mut reference);
    let spliced = matches!(r.completion, Completion::Spliced { .. });
    let mut out = Vec::new();
    for &n in SIZES {
        out.clear();
        let stack = &s.stack[..s.stack.len().min(n)];
        u.unwind_hybrid(procs, pid, s.regs, stack, &s.chain, &mut out);
        if out == reference {
            return (n, spliced);
        }
    }
    (16384, spliced)
}

fn report(event: &str, samples: &[(u32, FixtureSample)]) {
    let mut procs = Processes::new();
    let mut loaded = HashSet::new();
    let mut unwinder = Unwinder::new();
    let mut all = Vec::new();
    let mut by_comm: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut unspliced: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (pid, s) in samples {
        if loaded.insert(*pid) && procs.load_proc_maps(*pid).is_err() {
            continue;
        }
        if !procs.contains(*pid) {
            continue;
        }
        let (n, spliced) = needed(&mut unwinder, &procs, *pid, s);
        let name = comm(*pid);
        if !spliced {
            unspliced.entry(name).or_default().push(n);
            continue;
        }
        all.push(n);
        by_comm.entry(name).or_default().push(n);
    }
    let pct = |v: &mut Vec<usize>, p: usize| {
        v.sort_unstable();
        v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let within = |v: &[usize], n: usize| {
        100.0 * v.iter().filter(|&&x| x <= n).count() as f64 / v.len().max(1) as f64
    };
    eprintln!(
        "{event}: {} spliced samples; needed p50 {} p90 {} p99 {} max {}; within 512: {:.1} %, 1024: {:.1} %",
        all.len(),
        pct(&mut all, 50),
        pct(&mut all, 90),
        pct(&mut all, 99),
        all.last().copied().unwrap_or(0),
        within(&all, 512),
        within(&all, 1024),
    );
    for (c, mut v) in by_comm {
        eprintln!(
            "  {c:<16} {:>6} samples  p50 {:>5}  p99 {:>5}  max {:>5}  within 512: {:>5.1} %",
            v.len(),
            pct(&mut v, 50),
            pct(&mut v, 99),
            v.last().copied().unwrap_or(0),
            within(&v, 512)
        );
    }
    eprintln!("  not spliced even with 16 KiB (no frame pointers up the stack, or rbp clobbered");
    eprintln!("  before the sample): copy giving the 16 KiB stack (a DWARF unwind):");
    for (c, mut v) in unspliced {
        eprintln!(
            "  {c:<16} {:>6} samples  p50 {:>5}  p99 {:>5}",
            v.len(),
            pct(&mut v, 50),
            pct(&mut v, 99)
        );
    }
}

#[test]
#[ignore]
fn measure_hybrid_copy_size() {
    let secs: u64 = std::env::var("MEASURE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let limit = Duration::from_secs(secs);
    let on = perf::record(EventKind::CpuClock, None, Scope::System, 20_000, limit);
    report("cpu-clock", &on);
    let off = perf::record(
        EventKind::Tracepoint(perf::sched_switch_id()),
        Some(1),
        Scope::System,
        20_000,
        limit,
    );
    report("sched_switch", &off);
}

//! Unwinding real samples of C programs built without frame pointers, captured with ptrace
//! exactly as perf's REGS_USER/STACK_USER would deliver them (registers + 16 KiB from SP).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{build_programs, has_chain, spawn, Names, Sample, Sampler};
use unwind::{Processes, StopReason, Unwinder};

struct Tally {
    total: usize,
    complete: usize,
    reasons: BTreeMap<StopReason, usize>,
    stacks: Vec<Vec<String>>,
    stack_reasons: Vec<StopReason>,
}

fn unwind_all(procs: &Processes, pid: u32, samples: &[Sample]) -> Tally {
    let mut unwinder = Unwinder::new();
    let mut names = Names::default();
    let mut tally = Tally {
        total: 0,
        complete: 0,
        reasons: BTreeMap::new(),
        stacks: Vec::new(),
        stack_reasons: Vec::new(),
    };
    let mut frames = Vec::new();
    for s in samples {
        frames.clear();
        let r = unwinder.unwind_dwarf(procs, pid, s.regs, &s.stack, &mut frames);
        assert_eq!(r.frames, frames.len());
        assert_eq!(frames.first(), Some(&s.regs.ip));
        tally.total += 1;
        *tally.reasons.entry(r.reason).or_default() += 1;
        if r.reason == StopReason::ReachedEntry {
            tally.complete += 1;
        }
        tally.stacks.push(names.stack(procs, pid, &frames));
        tally.stack_reasons.push(r.reason);
    }
    tally
}

fn complete_share(t: &Tally) -> f64 {
    t.complete as f64 / t.total.max(1) as f64
}

fn report(label: &str, t: &Tally) {
    eprintln!(
        "{label}: {} samples, {:.1}% complete, reasons {:?}",
        t.total,
        100.0 * complete_share(t),
        t.reasons
    );
    let incomplete = t
        .stacks
        .iter()
        .zip(&t.stack_reasons)
        .filter(|(_, r)| **r != StopReason::ReachedEntry);
    for (s, r) in incomplete.take(3) {
        eprintln!("  incomplete ({r}): {s:?}");
    }
}

/// Share of `work` samples attributed to hot1 (vs hot2) through the unwound caller.
fn hot1_share(t: &Tally) -> (f64, usize) {
    let (mut h1, mut h2) = (0usize, 0usize);
    for s in &t.stacks {
        if has_chain(s, &["work", "hot1", "c", "b", "a"]) {
            h1 += 1;
        } else if has_chain(s, &["work", "hot2", "c", "b", "a"]) {
            h2 += 1;
        }
    }
    (h1 as f64 / (h1 + h2).max(1) as f64, h1 + h2)
}

#[test]
fn single_thread_chain_is_complete_and_split_is_70_30() {
    let built = build_programs();
    let target = spawn(&built.prog, &["single"]);
    let mut procs = Processes::new();
    procs.load_proc_maps(target.pid()).expect("read maps");
    let mut sampler = Sampler::attach(target.pid());
    let samples = sampler.run_progressing(800, Duration::from_micros(700));
    assert!(samples.len() >= 700, "only {} samples", samples.len());

    let t = unwind_all(&procs, target.pid(), &samples);
    report("single", &t);
    assert!(complete_share(&t) >= 0.95, "completeness below 95%");
    // Every complete stack runs main <- libc start code, and leaf `work` stacks show
    // the full chain.
    for s in &t.stacks {
        if s.first().is_some_and(|n| n == "work") {
            assert!(
                has_chain(s, &["work", "hot1", "c", "b", "a", "main"])
                    || has_chain(s, &["work", "hot2", "c", "b", "a", "main"]),
                "broken chain {s:?}"
            );
        }
    }
    assert!(t
        .stacks
        .iter()
        .any(|s| s.last().is_some_and(|n| n == "_start")));
    let (share, n) = hot1_share(&t);
    eprintln!("hot1 share {:.1}% of {n}", share * 100.0);
    assert!(n >= 600);
    assert!((share - 0.70).abs() <= 0.05, "hot1 share {share}");
}

#[test]
fn threads_created_after_attach_unwind() {
    let built = build_programs();
    let mut target = spawn(&built.prog, &["threads", "2", "go"]);
    let mut procs = Processes::new();
    // Maps loaded before the threads exist; threads share the space, so nothing changes.
    procs.load_proc_maps(target.pid()).expect("read maps");
    let mut sampler = Sampler::attach(target.pid());
    assert_eq!(sampler.tids().len(), 1, "attached before the threads exist");
    target.go();
    sampler.attach_new_threads();
    assert_eq!(sampler.tids().len(), 3, "main + 2 workers");
    let samples = sampler.run_progressing(1200, Duration::from_micros(400));
    let busy: Vec<Sample> = samples
        .into_iter()
        .filter(|s| s.tid != target.pid())
        .collect();
    assert!(busy.len() >= 600, "only {} worker samples", busy.len());

    let t = unwind_all(&procs, target.pid(), &busy);
    report("threads", &t);
    assert!(complete_share(&t) >= 0.95, "completeness below 95%");
    let through_thread_main = t
        .stacks
        .iter()
        .filter(|s| has_chain(s, &["b", "a", "thread_main"]))
        .count();
    assert!(through_thread_main as f64 >= 0.9 * t.total as f64);
    let (share, n) = hot1_share(&t);
    eprintln!("threads hot1 share {:.1}% of {n}", share * 100.0);
    assert!((share - 0.70).abs() <= 0.05, "hot1 share {share}");
}

#[test]
fn library_dlopened_after_attach_unwinds() {
    let built = build_programs();
    let lib = built.lib.to_str().expect("utf8 path").to_string();
    let mut target = spawn(&built.prog, &["dlopen", &lib, "go"]);
    let mut procs = Processes::new();
    procs.load_proc_maps(target.pid()).expect("read maps");
    let before = std::fs::read_to_string(format!("/proc/{}/maps", target.pid())).expect("maps");
    assert!(!before.contains("libhot.so"), "attached too late");
    let mut sampler = Sampler::attach(target.pid());

    target.go();
    // Feed the new mappings the way MMAP2 records would arrive.
    let after = std::fs::read_to_string(format!("/proc/{}/maps", target.pid())).expect("maps");
    let mut fed = 0;
    for line in Processes::parse_maps(&after) {
        if line.path.ends_with("libhot.so") {
            procs.on_mmap(
                target.pid(),
                line.start,
                line.end - line.start,
                line.pgoff,
                &line.path,
                line.exec,
                line.inode_triple(),
                None,
            );
            fed += 1;
        }
    }
    assert!(fed > 0, "library not mapped yet");

    let samples = sampler.run(500, Duration::from_micros(500));
    let t = unwind_all(&procs, target.pid(), &samples);
    report("dlopen", &t);
    assert!(complete_share(&t) >= 0.95, "completeness below 95%");
    let in_lib = t
        .stacks
        .iter()
        .filter(|s| has_chain(s, &["lib_work", "lib_hot", "lib_entry", "main"]))
        .count();
    let callback = t
        .stacks
        .iter()
        .filter(|s| has_chain(s, &["b", "a", "lib_entry", "main"]))
        .count();
    eprintln!("dlopen: {in_lib} in library, {callback} through callback");
    assert!(in_lib >= 50 && callback >= 50);
}

#[test]
fn stacks_through_signal_handlers_unwind() {
    let built = build_programs();
    let mut target = spawn(&built.prog, &["signal"]);
    // The chain runs inside the handler from here on.
    target.wait_for("went");
    let mut procs = Processes::new();
    procs.load_proc_maps(target.pid()).expect("read maps");
    let mut sampler = Sampler::attach(target.pid());
    let samples = sampler.run(300, Duration::from_micros(500));
    let t = unwind_all(&procs, target.pid(), &samples);
    report("signal", &t);
    let through_handler = t
        .stacks
        .iter()
        .filter(|s| has_chain(s, &["a", "on_alarm"]) && s.iter().any(|n| n == "main"))
        .count();
    assert!(
        through_handler as f64 >= 0.95 * t.total as f64,
        "only {through_handler}/{} stacks crossed the signal frame",
        t.total
    );
    assert!(complete_share(&t) >= 0.95, "completeness below 95%");
}

#[test]
fn frame_pointer_walk_fails_on_omitted_frame_pointers_but_not_on_fp_builds() {
    let built = build_programs();
    let fp_prog = built.dir.path().join("prog_fp");
    let status = std::process::Command::new("gcc")
        .args([
            "-O2",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
        ])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/prog.c"))
        .arg("-o")
        .arg(&fp_prog)
        .args(["-pthread", "-ldl"])
        .status()
        .expect("gcc");
    assert!(status.success());
    let target = spawn(&fp_prog, &["single"]);
    let mut procs = Processes::new();
    procs.load_proc_maps(target.pid()).expect("maps");
    let mut sampler = Sampler::attach(target.pid());
    let samples = sampler.run(200, Duration::from_micros(500));
    let mut unwinder = Unwinder::new();
    let mut names = Names::default();
    let mut frames = Vec::new();
    let mut with_chain = 0;
    for s in &samples {
        frames.clear();
        unwinder.unwind_fp(&procs, target.pid(), s.regs, &s.stack, &mut frames);
        let n = names.stack(&procs, target.pid(), &frames);
        if has_chain(&n, &["c", "b", "a", "main"]) {
            with_chain += 1;
        }
    }
    eprintln!("fp walk: {with_chain}/{} with c<-b<-a<-main", samples.len());
    assert!(with_chain as f64 >= 0.9 * samples.len() as f64);
}

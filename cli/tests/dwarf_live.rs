//! `--call-graph dwarf` on binaries without frame pointers, unwound while recording.

mod support;

use std::collections::BTreeMap;

use support::*;

const ENTRIES: [&str; 6] = [
    "_start",
    "__libc_start_main",
    "__libc_start_main_impl",
    "start_thread",
    "clone",
    "clone3",
];

/// Share of samples whose stack (after the comm) starts at a thread entry.
fn completeness(folded: &BTreeMap<String, u64>) -> f64 {
    let total: u64 = folded.values().sum();
    let complete: u64 = folded
        .iter()
        .filter(|(s, _)| s.split(';').nth(1).is_some_and(|f| ENTRIES.contains(&f)))
        .map(|(_, c)| c)
        .sum();
    100.0 * complete as f64 / total.max(1) as f64
}

/// 70/30 workload, -O2 -fomit-frame-pointer, 2 busy threads at 999 Hz: the split within ±5
/// points, ≥ 95 % complete stacks, at least as good as perf --call-graph dwarf.
#[test]
fn dwarf_unwinding_is_complete_and_matches_perf() {
    require!(Need::SystemWide);
    let _serial = serial();
    let w = start("cpu_split_nofp", &["-t", "2", "-s", "0"]);
    let pid = w.pid.to_string();
    let (out, _) = run_psample_until_cpu(
        &["record", "-p", &pid, "-F", "999", "--call-graph", "dwarf"],
        w.pid,
        2.0,
    );
    assert_eq!(out.status, 0, "psample failed: {}", out.stderr);
    let folded = parse_folded(&out.folded);
    let ours = share(&folded, "hot_a", "hot_b");
    let ours_complete = completeness(&folded);
    let reported = summary_number(&out.stderr, "unwinding").expect("unwinding line");
    eprintln!("psample: hot_a {ours:.1}%, complete {ours_complete:.1}% (summary says {reported}%)");
    assert!(
        (ours - 70.0).abs() <= 5.0,
        "hot_a share {ours:.1}%\n{}",
        out.folded
    );
    assert!(
        ours_complete >= 95.0,
        "only {ours_complete:.1}% complete\n{}",
        out.folded
    );
    assert!(
        (reported - ours_complete).abs() < 2.0,
        "summary completeness disagrees"
    );
    assert!(folded.keys().any(|s| s.contains("main;run;work;hot_a")));
    assert!(folded
        .keys()
        .any(|s| s.contains("start_thread;thread_main;run;work;hot_b")));

    let (perf, _) = perf_folded_until_cpu(&["--call-graph", "dwarf", "-F", "999"], w.pid, 2.0);
    let theirs = share(&perf, "hot_a", "hot_b");
    let theirs_complete = completeness(&perf);
    eprintln!("perf: hot_a {theirs:.1}%, complete {theirs_complete:.1}%");
    assert!((ours - theirs).abs() <= 5.0);
    assert!(
        ours_complete + 1.0 >= theirs_complete,
        "perf unwound more stacks than psample"
    );
}

/// Threads created and libraries dlopen'ed after attach unwind too.
#[test]
fn late_threads_and_dlopened_libraries_unwind() {
    require!(Need::SystemWide);
    let _serial = serial();
    // Attached from the start (a launched command), the late threads come 1 s later; the
    // main thread only waits until then, so of the 1.5 CPU-seconds the run lasts
    // (WL_CPU_SECONDS) nearly all are the late threads'.
    let out = run_psample_env(
        &[
            "record",
            "-F",
            "999",
            "--call-graph",
            "dwarf",
            "--",
            workload("threads_late").to_str().unwrap(),
            "-n",
            "1",
            "-t",
            "2",
            "-s",
            "0",
        ],
        &[("WL_CPU_SECONDS", "1.5")],
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let folded = parse_folded(&out.folded);
    let late = count_with(&folded, "late_worker_hot");
    assert!(
        late > 500,
        "late threads barely sampled ({late}):\n{}",
        out.folded
    );
    assert!(
        folded
            .keys()
            .any(|s| s.contains("start_thread;late_worker;late_worker_hot")),
        "late thread stacks incomplete:\n{}",
        out.folded
    );

    // One thread spins for 1 s of wall time (at most 1 CPU-second), then dlopens: of 2
    // CPU-seconds in all, at least 1 is spent in the library.
    let out = run_psample_env(
        &[
            "record",
            "-F",
            "999",
            "--call-graph",
            "dwarf",
            "--",
            workload("dlopen_demo").to_str().unwrap(),
            "-n",
            "1",
            "-s",
            "0",
        ],
        &[("WL_CPU_SECONDS", "2")],
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let folded = parse_folded(&out.folded);
    let lib = count_with(&folded, "demo_hot_inner");
    assert!(
        lib > 300,
        "dlopen'ed library barely sampled ({lib}):\n{}",
        out.folded
    );
    assert!(
        folded
            .keys()
            .any(|s| s.contains("main;demo_hot;demo_hot_inner") && s.contains("__libc_start")),
        "dlopen'ed stacks incomplete:\n{}",
        out.folded
    );
}

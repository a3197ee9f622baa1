//! The default call graph (`--call-graph auto`: the kernel's frame-pointer chain with the
//! leaf frames unwound by DWARF CFI from a small stack copy) on programs built with frame
//! pointers over the system's libc, which is built without them: the caller of a libc
//! function stays on the stack, where `--call-graph fp` loses it.

mod support;

use std::collections::BTreeMap;

use support::*;

/// The workload's own measurement of its phases, from its stdout (`phases sleep_us=N
/// wait_us=M`).
fn measured(stdout: &str, key: &str) -> f64 {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the workload's output: {stdout}"))
}

/// `psample offcpu [EXTRA] -- sleep_pipe_libc -s 3`: folded stacks, summary, and the
/// workload's sleep share by its own clock.
fn offcpu_sleep_pipe_libc(extra: &[&str]) -> (BTreeMap<String, u64>, String, f64) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("off.folded");
    let o = std::process::Command::new(psample())
        .arg("offcpu")
        .args(extra)
        .arg("-o")
        .arg(&out)
        .arg("--")
        .arg(workload("sleep_pipe_libc"))
        .args(["-s", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "psample failed: {stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let (sleep, wait) = (
        measured(&stdout, "sleep_us="),
        measured(&stdout, "wait_us="),
    );
    let folded = parse_folded(&std::fs::read_to_string(&out).unwrap());
    (folded, stderr, 100.0 * sleep / (sleep + wait))
}

/// Blocked in libc's nanosleep (7 ms, under sleep_phase) and read (~3 ms, under
/// wait_phase); the forked child blocks under child_loop. Default offcpu: the split by
/// blocked time is the workload's own, and every interval psample saw begin carries the
/// function that called libc. `fp` shows the defect this exists for.
#[test]
fn offcpu_default_keeps_the_callers_of_libc_blocking_calls() {
    require!(Need::SystemWide);
    let _serial = serial();
    let (folded, stderr, truth) = offcpu_sleep_pipe_libc(&[]);
    assert!(
        stderr.contains("call graph auto") || stderr.contains("hybrid"),
        "{stderr}"
    );
    let (sleep, wait) = (
        count_with(&folded, "sleep_phase") as f64,
        count_with(&folded, "wait_phase") as f64,
    );
    let split = 100.0 * sleep / (sleep + wait).max(1.0);
    eprintln!(
        "default: sleep_phase {sleep} us, wait_phase {wait} us: {split:.1}% (own {truth:.1}%)"
    );
    assert!(
        (split - truth).abs() <= 3.0,
        "split {split:.1}%, the workload's {truth:.1}%"
    );
    if (60.0..=80.0).contains(&truth) {
        assert!((60.0..=80.0).contains(&split), "split {split:.1}%");
    }
    for (stack, us) in &folded {
        // An interval already under way at attach has no user stack (none was sampled).
        // Blocking that is no libc call (a page fault reading the binary in at startup,
        // under _start) has no caller to lose.
        if stack.contains("[blocked at start]") || !stack.contains("entry_SYSCALL_64") {
            continue;
        }
        // main itself calls libc only to wait for the child at the end.
        let callers: &[&str] = if stack.contains("wait4") {
            &["main"]
        } else {
            &["sleep_phase", "wait_phase", "child_loop"]
        };
        // child_loop is inlined into main (shown as child_loop_[i]).
        let has_caller = callers
            .iter()
            .any(|f| stack.split(';').any(|s| s.trim_end_matches("_[i]") == *f));
        assert!(has_caller, "{us} us without the calling function: {stack}");
    }
    let health = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("stack health"))
        .unwrap_or_else(|| panic!("no stack health line: {stderr}"));
    // A few switch-outs (a preemption inside printf's buffer flush at exit) may sit under a
    // libc frame that keeps data in rbp, deeper than the copy: not more than that.
    let broken = summary_number(&stderr, "stack health").unwrap_or(100.0);
    assert!(broken <= 1.0, "{health}");

    // perf's DWARF mode sees the same callers at the same switch-outs (perf counts switches,
    // not blocked time: the check is the stacks, the split is the workload's own clock's).
    let sleeper = workload("sleep_pipe_libc");
    let perf = perf_folded(&[
        "-e",
        "sched:sched_switch",
        "--call-graph",
        "dwarf",
        "--",
        sleeper.to_str().unwrap(),
        "-s",
        "1",
    ]);
    // perf's switch-outs inside libc's nanosleep and read, and those naming their caller.
    let waits: Vec<(&String, &u64)> = perf
        .iter()
        .filter(|(s, _)| s.contains("nanosleep") || s.contains("libc_read"))
        .collect();
    let perf_waits: u64 = waits.iter().map(|(_, n)| **n).sum();
    let perf_callers: u64 = waits
        .iter()
        .filter(|(s, _)| {
            ["sleep_phase", "wait_phase", "child_loop"]
                .iter()
                .any(|c| s.contains(c))
        })
        .map(|(_, n)| **n)
        .sum();
    eprintln!("perf --call-graph dwarf: {perf_callers} of {perf_waits} libc waits with caller");
    assert!(perf_waits >= 100 && perf_callers * 100 >= perf_waits * 95);

    // The same program with frame pointers only: the leaf in libc hides its caller.
    let (fp, _, _) = offcpu_sleep_pipe_libc(&["--call-graph", "fp"]);
    let total: u64 = fp.values().sum();
    let with_caller = count_with(&fp, "sleep_phase") + count_with(&fp, "wait_phase");
    assert!(
        with_caller * 10 < total,
        "fp mode kept the callers ({with_caller} of {total} us): the test no longer shows \
         the leaf problem"
    );
}

/// libc_split spends 70 % of its CPU in libc's memchr under scan_a and 30 % under scan_b.
/// Default record: the split is right (and perf's with `--call-graph dwarf`) and every
/// sample in memchr names its scan; in fp mode neither scan appears under memchr.
#[test]
fn record_default_keeps_the_callers_of_libc_leaves() {
    require!(Need::SystemWide);
    let _serial = serial();
    let w = start("libc_split", &["-s", "0"]);
    let pid = w.pid.to_string();
    let (o, cpu) = run_psample_until_cpu(&["record", "-p", &pid, "-F", "999"], w.pid, 1.5);
    assert_eq!(o.status, 0, "psample failed: {}", o.stderr);
    let folded = parse_folded(&o.folded);
    let in_memchr: Vec<(&String, &u64)> = folded
        .iter()
        .filter(|(s, _)| {
            s.rsplit(';')
                .next()
                .is_some_and(|f| f.starts_with("__memchr"))
        })
        .collect();
    let memchr_samples: u64 = in_memchr.iter().map(|(_, n)| **n).sum();
    eprintln!("{cpu:.2} CPU-s sampled, {memchr_samples} samples in memchr");
    assert!(memchr_samples >= 500, "{}", o.stderr);
    for (stack, n) in &in_memchr {
        assert!(
            stack.contains(";scan_a;") || stack.contains(";scan_b;"),
            "{n} samples in memchr without their caller: {stack}"
        );
    }
    let split = share(&folded, "scan_a", "scan_b");
    assert!(
        (60.0..=80.0).contains(&split),
        "scan_a {split:.1}%\n{}",
        o.stderr
    );

    // perf's DWARF mode (16 KiB copied per sample) on the same process: the same split.
    let (perf, _) = perf_folded_until_cpu(&["--call-graph", "dwarf", "-F", "999"], w.pid, 1.5);
    let theirs = share(&perf, "scan_a", "scan_b");
    eprintln!("scan_a share: psample auto {split:.1}%, perf --call-graph dwarf {theirs:.1}%");
    assert!(
        (split - theirs).abs() <= 5.0,
        "psample auto {split:.1}% vs perf dwarf {theirs:.1}%"
    );

    let (fp, _) = run_psample_until_cpu(
        &[
            "record",
            "-p",
            &pid,
            "-F",
            "999",
            "--call-graph",
            "fp",
            "--bpf",
            "never",
        ],
        w.pid,
        0.5,
    );
    let fp = parse_folded(&fp.folded);
    let fp_memchr_with_caller: u64 = fp
        .iter()
        .filter(|(s, _)| s.contains("__memchr") && (s.contains("scan_a") || s.contains("scan_b")))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        fp_memchr_with_caller, 0,
        "fp mode kept memchr's caller: not the leaf problem"
    );
}

/// `--bpf auto` never gives worse stacks than the ring: with the default call graph it uses
/// the ring and says why; with `--call-graph fp` it aggregates in the kernel as before.
#[test]
fn bpf_auto_keeps_the_ring_for_hybrid_stacks() {
    require!(Need::SystemWide);
    let _serial = serial();
    let w = start("libc_split", &["-s", "0"]);
    let pid = w.pid.to_string();
    let (o, _) = run_psample_until_cpu(&["record", "-p", &pid, "--bpf", "auto"], w.pid, 0.3);
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert!(
        o.stderr.contains("bpf") && o.stderr.contains("using the ring"),
        "{}",
        o.stderr
    );
    let fallbacks = o
        .stderr
        .lines()
        .find(|l| l.trim_start().starts_with("fallbacks"))
        .unwrap_or_default();
    assert!(
        fallbacks.contains("BPF aggregation → ring buffer"),
        "{}",
        o.stderr
    );
    // Never worse than the ring: memchr keeps its callers.
    let folded = parse_folded(&o.folded);
    let orphans: u64 = folded
        .iter()
        .filter(|(s, _)| s.contains("__memchr") && !s.contains(";scan_"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        orphans, 0,
        "memchr samples without their caller\n{}",
        o.folded
    );
    // With frame pointers asked for, BPF aggregates in the kernel: no fallback.
    let (o, _) = run_psample_until_cpu(
        &["record", "-p", &pid, "--call-graph", "fp", "--bpf", "auto"],
        w.pid,
        0.3,
    );
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert!(
        !o.stderr.contains("not used") && !o.stderr.contains("BPF aggregation →"),
        "{}",
        o.stderr
    );
    let o = run_psample(&["record", "-p", &pid, "-d", "1", "--bpf", "always"]);
    assert_ne!(
        o.status, 0,
        "--bpf always with auto must refuse: {}",
        o.stderr
    );
    assert!(o.stderr.contains("--call-graph fp"), "{}", o.stderr);
}

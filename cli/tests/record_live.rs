//! `psample record` on real processes, compared with perf on the same workload.

mod support;

use support::*;

/// Frame-pointer workload, 2 busy threads at 999 Hz for 2 CPU-seconds: ~2000 samples, the
/// program's call graph, and the same 70/30 split as `perf record -g` on the same run.
#[test]
fn fp_stacks_match_the_call_graph_and_perf() {
    require!(Need::SystemWide);
    let _serial = serial();
    let w = start("cpu_split_fp", &["-t", "2", "-s", "0"]);
    let pid = w.pid.to_string();
    // Stopped after 2 CPU-seconds of the workload, not 2 s of wall time: on a loaded machine
    // the workload gets less CPU per second, and so fewer samples, in any fixed window.
    let (out, cpu_used) = run_psample_until_cpu(&["record", "-p", &pid, "-F", "999"], w.pid, 2.0);
    assert_eq!(out.status, 0, "psample failed: {}", out.stderr);
    let folded = parse_folded(&out.folded);
    let samples = summary_number(&out.stderr, "samples").expect("summary has samples");
    // cpu-clock at 999 Hz gives one sample per ~1 ms of CPU a thread actually gets. The rate
    // is checked against the CPU time the workload used while sampled and against perf's
    // rate on the same workload just after.
    let ours_rate = samples / cpu_used;
    eprintln!("psample: {samples} samples for {cpu_used:.2} CPU-s = {ours_rate:.0}/s");
    assert!(
        ours_rate <= 1.05 * 999.0,
        "more samples than CPU time allows: {ours_rate:.0}/s"
    );
    let total: u64 = folded.values().sum();
    assert_eq!(
        total as f64, samples,
        "folded counts must add up to the samples"
    );
    // The program's call graph, root first, under the process name.
    let chain = |leaf: &str| {
        folded
            .iter()
            .filter(|(s, _)| {
                s.contains(&format!("main;run;work;{leaf}"))
                    || s.contains(&format!("thread_main;run;work;{leaf}"))
            })
            .map(|(_, c)| c)
            .sum::<u64>()
    };
    assert!(
        chain("hot_a") + chain("hot_b") >= total * 9 / 10,
        "most samples should be in work→hot_a/hot_b:\n{}",
        out.folded
    );
    assert!(folded.keys().all(|s| s.starts_with("cpu_split_fp;")));
    let ours = share(&folded, "hot_a", "hot_b");
    assert!(
        (ours - 70.0).abs() <= 5.0,
        "hot_a share {ours:.1}%, expected 70±5"
    );

    let (perf, perf_cpu) = perf_folded_until_cpu(&["-g", "-F", "999"], w.pid, 2.0);
    let perf_rate = perf.values().sum::<u64>() as f64 / perf_cpu;
    eprintln!("perf: {perf_rate:.0} samples per CPU-s");
    assert!(
        ours_rate >= 0.8 * perf_rate,
        "psample collected {ours_rate:.0} samples per CPU-second, perf {perf_rate:.0}"
    );
    let theirs = share(&perf, "hot_a", "hot_b");
    eprintln!("hot_a share: psample {ours:.1}%, perf {theirs:.1}%");
    assert!(
        (ours - theirs).abs() <= 5.0,
        "psample {ours:.1}% vs perf {theirs:.1}% for hot_a"
    );
    // perf sees the same call chain.
    assert!(perf.keys().any(|s| s.contains("main;run;work;hot_a")));
}

/// A syscall-heavy program shows its kernel frames, marked `_[k]`, above its user frames.
#[test]
fn syscall_heavy_program_shows_kernel_frames() {
    require!(Need::SystemWide);
    let _serial = serial();
    // One CPU-second of work (WL_CPU_SECONDS), however long that takes on this machine.
    let out = run_psample_env(
        &[
            "record",
            "-F",
            "999",
            "--",
            workload("syscall_heavy").to_str().unwrap(),
            "-s",
            "0",
        ],
        &[("WL_CPU_SECONDS", "1")],
    );
    assert_eq!(out.status, 0, "psample failed: {}", out.stderr);
    let folded = parse_folded(&out.folded);
    let total: u64 = folded.values().sum();
    let kernel: u64 = folded
        .iter()
        .filter(|(s, _)| s.contains("_[k]"))
        .map(|(_, c)| c)
        .sum();
    assert!(total > 200, "too few samples: {total}\n{}", out.stderr);
    assert!(
        kernel * 2 > total,
        "a syscall loop spends most time in the kernel: {kernel} of {total} kernel stacks"
    );
    // Kernel frames come after (above) user frames and include the syscall entry.
    assert!(
        folded
            .keys()
            .any(|s| s.contains("entry_SYSCALL_64") && s.contains("_[k]")),
        "no syscall entry frame:\n{}",
        out.folded
    );
    for s in folded.keys() {
        let frames: Vec<&str> = s.split(';').collect();
        if let Some(first_k) = frames.iter().position(|f| f.ends_with("_[k]")) {
            assert!(
                frames[first_k..].iter().all(|f| f.ends_with("_[k]")),
                "user frame above a kernel frame in {s}"
            );
        }
    }
}

/// `-o x.svg -- CMD` writes a flame graph; the folded form is valid input for inferno and
/// flamegraph.pl (one `stack count` per line, `;`-separated, integer count).
#[test]
fn svg_and_folded_outputs_are_valid() {
    require!(Need::SystemWide);
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("demo.svg");
    let o = std::process::Command::new(psample())
        .args(["record", "-F", "499", "-o"])
        .arg(&svg)
        .arg("--")
        .arg(workload("demo"))
        .args(["-s", "0"])
        .env("WL_CPU_SECONDS", "0.5")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<?xml") && text.contains("<svg") && text.trim_end().ends_with("</svg>")
    );
    assert!(
        text.contains("handle_request") || text.contains("demo"),
        "demo frames missing from the SVG"
    );

    let out = run_psample_env(
        &[
            "record",
            "-F",
            "499",
            "--",
            workload("demo").to_str().unwrap(),
            "-s",
            "0",
        ],
        &[("WL_CPU_SECONDS", "0.5")],
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(!out.folded.is_empty());
    for line in out.folded.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("stack count");
        assert!(count.parse::<u64>().is_ok(), "bad count in {line}");
        assert!(!stack.is_empty() && !stack.contains('\n'));
        assert!(
            stack.split(';').all(|f| !f.is_empty()),
            "empty frame in {line}"
        );
    }
    // inferno accepts it as input.
    let mut opts = inferno::flamegraph::Options::default();
    let mut sink = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, out.folded.lines(), &mut sink)
        .expect("inferno accepts");
    assert!(!sink.is_empty());
}

#[test]
fn bad_targets_and_outputs_fail_clearly_before_sampling() {
    let o = std::process::Command::new(psample())
        .args(["record", "-p", "999999999", "-d", "1"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no such process"), "{err}");

    // The command would leave a marker: a check after launching it would show.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("launched");
    let o = std::process::Command::new(psample())
        .args(["record", "-o", "/nonexistent-dir/x.svg", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(
        !marker.exists(),
        "output path must be checked before sampling"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("mkdir -p"), "{err}");

    let o = std::process::Command::new(psample())
        .args(["record", "-p", "1", "-a"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "conflicting flags are a usage error"
    );

    let o = std::process::Command::new(psample())
        .args(["record", "-e", "nosuchevent", "-p", "1"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown event"));
}

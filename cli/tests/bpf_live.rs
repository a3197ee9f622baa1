//! `record --bpf`: in-kernel aggregation gives the same stacks and proportions as the ring.
//! The aggregation keys frame-pointer stacks, so these runs ask for `--call-graph fp` (the
//! default, `auto`, keeps the ring: see hybrid_live.rs).

mod support;

use support::*;

#[test]
fn bpf_always_matches_ring_buffer_path() {
    require!(Need::SystemWide);
    let _serial = serial();
    let w = start("cpu_split_fp", &["-t", "2", "-s", "0"]);
    let pid = w.pid.to_string();
    // Both runs sample 2 CPU-seconds of the workload, so their totals compare on any machine.
    let (bpf, _) = run_psample_until_cpu(
        &[
            "record",
            "-p",
            &pid,
            "-F",
            "999",
            "--call-graph",
            "fp",
            "--bpf",
            "always",
        ],
        w.pid,
        2.0,
    );
    assert_eq!(bpf.status, 0, "--bpf always failed: {}", bpf.stderr);
    assert!(
        bpf.stderr.contains("in-kernel aggregation"),
        "{}",
        bpf.stderr
    );
    let (ring, _) = run_psample_until_cpu(
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
        2.0,
    );
    assert_eq!(ring.status, 0, "{}", ring.stderr);
    assert!(!ring.stderr.contains("in-kernel"), "{}", ring.stderr);

    let (b, r) = (parse_folded(&bpf.folded), parse_folded(&ring.folded));
    let (bs, rs) = (share(&b, "hot_a", "hot_b"), share(&r, "hot_a", "hot_b"));
    eprintln!("hot_a share: bpf {bs:.1}%, ring {rs:.1}%");
    assert!((bs - rs).abs() <= 5.0, "bpf {bs:.1}% vs ring {rs:.1}%");
    // The same dominant stacks, symbolized the same way.
    for stack in [
        "cpu_split_fp;__libc_start_call_main;main;run;work;hot_a",
        "cpu_split_fp;start_thread;thread_main;run;work;hot_b",
    ] {
        assert!(b.contains_key(stack), "bpf lacks {stack}:\n{}", bpf.folded);
        assert!(
            r.contains_key(stack),
            "ring lacks {stack}:\n{}",
            ring.folded
        );
    }
    let (bt, rt) = (
        b.values().sum::<u64>() as f64,
        r.values().sum::<u64>() as f64,
    );
    assert!(
        bt > 0.6 * rt && bt < 1.4 * rt,
        "sample totals differ: bpf {bt} ring {rt}"
    );
}

#[test]
fn bpf_auto_falls_back_for_dwarf_and_always_refuses() {
    require!(Need::SystemWide);
    let _serial = serial();
    let w = start("cpu_split_nofp", &["-t", "1", "-s", "0"]);
    let pid = w.pid.to_string();
    let (auto, _) = run_psample_until_cpu(
        &["record", "-p", &pid, "-F", "199", "--call-graph", "dwarf"],
        w.pid,
        0.5,
    );
    assert_eq!(auto.status, 0, "{}", auto.stderr);
    assert!(
        auto.stderr.contains("not used"),
        "auto must say why BPF is not used:\n{}",
        auto.stderr
    );
    assert!(parse_folded(&auto.folded)
        .keys()
        .any(|s| s.contains("hot_a")));
    let always = run_psample(&[
        "record",
        "-p",
        &pid,
        "-F",
        "199",
        "-d",
        "1",
        "--call-graph",
        "dwarf",
        "--bpf",
        "always",
    ]);
    assert_ne!(always.status, 0);
    assert!(always.stderr.contains("--bpf always"), "{}", always.stderr);
}

/// Inside a pid namespace (as in a container: `unshare --pid --fork --mount-proc`), the
/// in-kernel path names threads by their ids in that namespace, as the ring does: stacks
/// under the command's name, symbolized, no `[pid_N];[unknown]` (the global pid, which
/// psample's /proc does not know).
#[test]
fn bpf_in_a_pid_namespace_names_threads_as_the_namespace_does() {
    require!(Need::Root);
    let _serial = serial();
    let wl = workload("cpu_split_fp");
    for bpf in ["always", "never"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ns.folded");
        let o = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .arg(psample())
            .args([
                "record",
                "-F",
                "499",
                "--call-graph",
                "fp",
                "--bpf",
                bpf,
                "-o",
            ])
            .arg(&out)
            .arg("--")
            .arg(&wl)
            .args(["-t", "1"])
            .env("WL_CPU_SECONDS", "0.5")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "--bpf {bpf}: {err}");
        if bpf == "always" {
            assert!(err.contains("in-kernel aggregation"), "{err}");
        }
        let folded = parse_folded(&std::fs::read_to_string(&out).unwrap());
        let total: u64 = folded.values().sum();
        assert!(total > 0, "--bpf {bpf}: no samples\n{err}");
        let hot: u64 = folded
            .iter()
            .filter(|(s, _)| s.starts_with("cpu_split_fp;") && s.contains(";work;hot_"))
            .map(|(_, c)| c)
            .sum();
        assert!(
            hot * 10 >= total * 9,
            "--bpf {bpf}: {hot} of {total} samples in work->hot_*:\n{folded:?}"
        );
        assert!(folded.keys().all(|s| !s.starts_with("[pid_")), "{folded:?}");
    }
}

/// From the host, `-p PID` of a process in another pid namespace (a container's) works on
/// both paths: the kernel's ids are the host's.
#[test]
fn a_process_in_another_pid_namespace_is_profiled_by_its_host_pid() {
    require!(Need::Root);
    let _serial = serial();
    let mut unshare = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(workload("cpu_split_fp"))
        .args(["-s", "60"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = KillGuard(Some(unshare.id()));
    let children = format!("/proc/{0}/task/{0}/children", unshare.id());
    let mut pid = 0u32;
    wait_until("the namespaced workload", || {
        pid = std::fs::read_to_string(&children)
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pid != 0
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "cpu_split_fp")
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "{status}"
    );
    for bpf in ["always", "never"] {
        let (out, _) = run_psample_until_cpu(
            &[
                "record",
                "-F",
                "499",
                "--call-graph",
                "fp",
                "--bpf",
                bpf,
                "-p",
                &pid.to_string(),
            ],
            pid,
            0.5,
        );
        assert_eq!(out.status, 0, "--bpf {bpf}: {}", out.stderr);
        let folded = parse_folded(&out.folded);
        let total: u64 = folded.values().sum();
        let hot = count_with(&folded, "hot_a") + count_with(&folded, "hot_b");
        assert!(
            total > 0 && hot * 10 >= total * 9,
            "--bpf {bpf}: {folded:?}"
        );
    }
    guard.defuse();
    let _ = unshare.kill();
    let _ = unshare.wait();
}

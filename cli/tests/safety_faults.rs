//! Faults during a run: the target exits, psample is signalled, the target forks, execs or
//! loses its binary. Every case must end with complete, valid output (or, for a second
//! signal, an immediate exit that leaves no file under the output name).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn spawn_psample(args: &[&str]) -> Child {
    Command::new(psample())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psample")
}

fn finish(child: Child, limit: Duration) -> (Option<i32>, String) {
    let started = Instant::now();
    let pid = child.id();
    let o = std::thread::spawn(move || child.wait_with_output().expect("wait psample"));
    while !o.is_finished() {
        if started.elapsed() > limit {
            // SAFETY: kill on the psample child we spawned.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("psample did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = o.join().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: sending a signal to a child we spawned.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Names in `dir`, to prove no temporary or partial files are left.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn valid_folded(text: &str) -> std::collections::BTreeMap<String, u64> {
    assert!(text.ends_with('\n'), "output is not complete: {text:?}");
    parse_folded(text)
}

#[test]
fn stop_signals_drain_write_and_exit_zero() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("cpu_split_fp", &["-s", "30"]);
    let pid = w.pid.to_string();
    for (sig, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sig.folded");
        let child = spawn_psample(&["record", "-p", &pid, "-o", out.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(1500));
        signal(child.id(), sig);
        let (code, err) = finish(child, Duration::from_secs(20));
        assert_eq!(code, Some(0), "{name}: {err}");
        assert!(err.contains("stopped by signal"), "{name}: {err}");
        let folded = valid_folded(&std::fs::read_to_string(&out).unwrap());
        let hot = count_with(&folded, "hot_a");
        // 1.5 s at 99 Hz of a busy thread is ~150 samples, ~70 % in hot_a; the bound leaves
        // room for a loaded machine while still proving the rings were drained.
        assert!(hot > 10, "{name}: only {hot} hot_a samples: {folded:?}");
        assert_eq!(entries(dir.path()), vec!["sig.folded"], "{name}");
    }
}

#[test]
fn second_signal_exits_at_once_without_a_partial_file() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("cpu_split_fp", &["-s", "30"]);
    let pid = w.pid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("twice.folded");
    std::fs::write(&out, "previous;profile 1\n").unwrap();
    let child = spawn_psample(&["record", "-p", &pid, "-o", out.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1000));
    // Two different signals: both are delivered (a repeated SIGINT could merge while pending).
    signal(child.id(), libc::SIGINT);
    signal(child.id(), libc::SIGTERM);
    let (code, err) = finish(child, Duration::from_secs(5));
    assert_eq!(code, Some(130), "{err}");
    // The old file is untouched and nothing half-written sits next to it.
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "previous;profile 1\n"
    );
    assert_eq!(entries(dir.path()), vec!["twice.folded"]);
}

#[test]
fn killed_run_never_leaves_a_half_file_under_the_output_name() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("cpu_split_fp", &["-s", "30"]);
    let pid = w.pid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.folded");
    std::fs::write(&out, "old 1\n").unwrap();
    let child = spawn_psample(&["record", "-p", &pid, "-o", out.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(800));
    signal(child.id(), libc::SIGKILL);
    let (code, _) = finish(child, Duration::from_secs(5));
    assert_eq!(code, None, "killed by a signal");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old 1\n");
}

#[test]
fn planted_symlink_at_the_output_path_is_replaced_not_followed() {
    require!(Need::SystemWide);
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let out = dir.path().join("link.folded");
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    let wl = workload("cpu_split_fp");
    let child = spawn_psample(&[
        "record",
        "-o",
        out.to_str().unwrap(),
        "--",
        wl.to_str().unwrap(),
        "-s",
        "1",
    ]);
    let (code, err) = finish(child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let meta = std::fs::symlink_metadata(&out).unwrap();
    assert!(meta.file_type().is_file(), "the link itself was replaced");
    assert!(std::fs::read_to_string(&out).unwrap().contains("hot_a"));
}

#[test]
fn target_exit_stops_and_writes_everything_collected() {
    require!(Need::SystemWide);
    let _g = serial();
    // -p: the process exits on its own after 2 s; psample runs without -d.
    let w = start("cpu_split_fp", &["-s", "2"]);
    let pid = w.pid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exit.folded");
    let child = spawn_psample(&["record", "-p", &pid, "-o", out.to_str().unwrap()]);
    let (code, err) = finish(child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("targets exited"), "{err}");
    let folded = valid_folded(&std::fs::read_to_string(&out).unwrap());
    assert!(count_with(&folded, "hot_a") > 10, "{folded:?}");

    // -- CMD killed from outside mid-run (not a normal exit).
    let wl = workload("cpu_split_fp");
    let out = dir.path().join("killed.folded");
    let child = spawn_psample(&[
        "record",
        "-o",
        out.to_str().unwrap(),
        "--",
        wl.to_str().unwrap(),
        "-s",
        "30",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let target =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap();
    let target: u32 = target
        .split_whitespace()
        .next()
        .expect("launched child")
        .parse()
        .unwrap();
    signal(target, libc::SIGKILL);
    let (code, err) = finish(child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("targets exited"), "{err}");
    let folded = valid_folded(&std::fs::read_to_string(&out).unwrap());
    assert!(count_with(&folded, "hot_a") > 10, "{folded:?}");
}

#[test]
fn lost_records_are_counted_and_reported() {
    require!(Need::SystemWide);
    let _g = serial();
    // A one-page ring per CPU at 5 kHz with 2 KiB of stack per sample: the ring overflows
    // between drains and the kernel reports LOST records.
    let w = start("cpu_split_fp", &["-t", "2", "-s", "60"]);
    let pid = w.pid.to_string();
    let o = run_psample(&[
        "record",
        "-p",
        &pid,
        "-F",
        "5000",
        "--call-graph",
        "dwarf,2048",
        "--mmap-pages",
        "1",
        "-d",
        "2",
    ]);
    assert_eq!(o.status, 0, "{}", o.stderr);
    let lost = summary_number(&o.stderr, "lost").expect("a lost line in the summary");
    assert!(lost > 0.0, "{}", o.stderr);
    assert!(o.stderr.contains("--mmap-pages"), "{}", o.stderr);
    // What was not lost is still a valid profile.
    assert!(count_with(&parse_folded(&o.folded), "hot_a") > 0);
}

/// exec_fork attached with -p: it forks a spinning child, spins 1.5 s itself, then execs
/// cpu_split_fp (same pid, new image) which creates 2 more threads.
fn fork_exec_run(extra: &[&str]) {
    require!(Need::SystemWide);
    let _g = serial();
    // A private copy: other test binaries rebuild target/test-workloads in place, and the
    // exec'd image exits before symbolization, when only the (inode-verified) host file is
    // left to read it from.
    let dir = tempfile::tempdir().unwrap();
    let cpu = dir.path().join("cpu_split_fp");
    std::fs::copy(workload("cpu_split_fp"), &cpu).unwrap();
    let w = start(
        "exec_fork",
        &[
            "-n",
            "1.5",
            "-s",
            "3",
            "--",
            cpu.to_str().unwrap(),
            "-t",
            "3",
            "-s",
            "3",
        ],
    );
    let pid = w.pid.to_string();
    let mut args = vec!["record", "-p", &pid];
    args.extend_from_slice(extra);
    let o = run_psample(&args);
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert!(o.stderr.contains("targets exited"), "{}", o.stderr);
    let folded = parse_folded(&o.folded);
    let with = |frame: &str| count_with(&folded, frame);
    assert!(with("before_exec_spin") > 5, "pre-exec image: {folded:?}");
    assert!(with("forked_child_spin") > 10, "forked child: {folded:?}");
    // After the exec the same pid runs a new image: its frames must be named from the new
    // binary, under the new comm, with full stacks.
    let post: u64 = folded
        .iter()
        .filter(|(s, _)| s.starts_with("cpu_split_fp;") && s.contains(";run;work;hot_"))
        .map(|(_, c)| c)
        .sum();
    assert!(post > 20, "post-exec image: {folded:?}");
    assert!(
        folded
            .keys()
            .any(|s| s.contains("start_thread;thread_main;run;work;hot_")),
        "threads created after the exec: {folded:?}"
    );
    // Stacks of one image resolved against the other's mappings come out unnamed.
    let total: u64 = folded.values().sum();
    let unknown: u64 = folded
        .iter()
        .filter(|(s, _)| s.contains("[unknown]"))
        .map(|(_, c)| c)
        .sum();
    assert!(
        unknown * 20 <= total,
        "{unknown} of {total} unnamed: {folded:?}"
    );
    assert!(
        !folded
            .keys()
            .any(|s| s.contains("before_exec_spin") && s.contains("hot_")),
        "{folded:?}"
    );
}

#[test]
fn forks_execs_and_new_threads_mid_run_are_followed() {
    fork_exec_run(&["--bpf", "never"]);
}

#[test]
fn forks_execs_and_new_threads_mid_run_are_followed_with_bpf() {
    fork_exec_run(&["--bpf", "always"]);
}

#[test]
fn deleted_and_replaced_binaries_still_symbolize() {
    require!(Need::SystemWide);
    let _g = serial();
    for replace in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("victim_prog");
        std::fs::copy(workload("cpu_split_fp"), &bin).unwrap();
        // Alive until killed below: symbolization happens while it still runs (an exited
        // process with a deleted binary cannot be symbolized by anyone).
        let mut child = Command::new(&bin)
            .args(["-s", "60"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        std::fs::remove_file(&bin).unwrap();
        if replace {
            // A different file under the same name: must not be used for the running image.
            std::fs::copy("/bin/true", &bin).unwrap();
        }
        let pid = child.id().to_string();
        let o = run_psample(&["record", "-p", &pid, "-d", "2"]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(o.status, 0, "{}", o.stderr);
        let folded = parse_folded(&o.folded);
        let total: u64 = folded.values().sum();
        let named = count_with(&folded, "hot_a") + count_with(&folded, "hot_b");
        assert!(
            named * 10 >= total * 9,
            "replace={replace}: {named} of {total} samples named: {folded:?}"
        );
        assert!(
            folded.keys().any(|s| s.contains("main;run;work;hot_a")),
            "replace={replace}: {folded:?}"
        );
    }
}

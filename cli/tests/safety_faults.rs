//! Faults during a run: the target exits, psample is signalled, the target forks, execs or
//! loses its binary. Every case must end with complete, valid output (or, for a second
//! signal, an immediate exit that leaves no file under the output name).

mod support;

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

fn valid_folded(text: &str) -> std::collections::BTreeMap<String, u64> {
    assert!(text.ends_with('\n'), "output is not complete: {text:?}");
    parse_folded(text)
}

#[test]
fn stop_signals_drain_write_and_exit_zero() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("cpu_split_fp", &["-s", "0"]);
    let pid = w.pid.to_string();
    for (sig, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sig.folded");
        let child = spawn_psample(&["record", "-p", &pid, "-o", out.to_str().unwrap()]);
        // Signalled once the busy thread has run 0.5 s on CPU while sampled: ~50 samples at
        // 99 Hz, ~70 % in hot_a, whatever the load.
        wait_until_sampling(child.id());
        wait_for_cpu(w.pid, 0.5);
        signal(child.id(), sig);
        let (code, err) = finish(child, HANG);
        assert_eq!(code, Some(0), "{name}: {err}");
        assert!(err.contains("stopped by signal"), "{name}: {err}");
        let folded = valid_folded(&std::fs::read_to_string(&out).unwrap());
        let hot = count_with(&folded, "hot_a");
        // The rings were drained: far more than a handful of hot_a samples.
        assert!(hot > 10, "{name}: only {hot} hot_a samples: {folded:?}");
        assert_eq!(dir_names(dir.path()), vec!["sig.folded"], "{name}");
    }
}

#[test]
fn second_signal_exits_at_once_without_a_partial_file() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("cpu_split_fp", &["-s", "0"]);
    let pid = w.pid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("twice.folded");
    std::fs::write(&out, "previous;profile 1\n").unwrap();
    let child = spawn_psample(&["record", "-p", &pid, "-o", out.to_str().unwrap()]);
    // Sampling (so the handlers are installed) with samples to write.
    wait_until_sampling(child.id());
    wait_for_cpu(w.pid, 0.3);
    // Two different signals: both are delivered (a repeated SIGINT could merge while pending).
    signal(child.id(), libc::SIGINT);
    signal(child.id(), libc::SIGTERM);
    // Exit 130 (not 0) says the second signal ended it before the profile was written.
    let (code, err) = finish(child, HANG);
    assert_eq!(code, Some(130), "{err}");
    // The old file is untouched and nothing half-written sits next to it.
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "previous;profile 1\n"
    );
    assert_eq!(dir_names(dir.path()), vec!["twice.folded"]);
}

#[test]
fn killed_run_never_leaves_a_half_file_under_the_output_name() {
    require!(Need::SystemWide);
    let _g = serial();
    let w = start("cpu_split_fp", &["-s", "0"]);
    let pid = w.pid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.folded");
    std::fs::write(&out, "old 1\n").unwrap();
    let child = spawn_psample(&["record", "-p", &pid, "-o", out.to_str().unwrap()]);
    wait_until_sampling(child.id());
    wait_for_cpu(w.pid, 0.3);
    signal(child.id(), libc::SIGKILL);
    let (code, _) = finish(child, HANG);
    assert_eq!(code, None, "killed by a signal");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old 1\n");
}

/// A symlink the caller made is followed: its target is replaced atomically (keeping its
/// mode), the link stays. (Links another user planted are refused: safety_output.rs.)
#[test]
fn own_symlink_at_the_output_path_is_followed_and_kept() {
    require!(Need::SystemWide);
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.folded");
    std::fs::write(&real, "previous 1\n").unwrap();
    std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let out = dir.path().join("link.folded");
    std::os::unix::fs::symlink(&real, &out).unwrap();
    let wl = workload("cpu_split_fp");
    let mut c = Command::new(psample());
    c.args([
        "record",
        "-o",
        out.to_str().unwrap(),
        "--",
        wl.to_str().unwrap(),
    ])
    .args(["-s", "0"])
    .env("WL_CPU_SECONDS", "0.5")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let (code, err) = finish(c.spawn().unwrap(), HANG);
    assert_eq!(code, Some(0), "{err}");
    assert!(std::fs::symlink_metadata(&out)
        .unwrap()
        .file_type()
        .is_symlink());
    let meta = std::fs::metadata(&real).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o640
    );
    assert!(std::fs::read_to_string(&real).unwrap().contains("hot_a"));
    assert_eq!(dir_names(dir.path()), vec!["link.folded", "real.folded"]);
}

#[test]
fn target_exit_stops_and_writes_everything_collected() {
    require!(Need::SystemWide);
    let _g = serial();
    // -p: the process exits on its own (SIGTERM ends a workload normally) once psample has
    // sampled 0.5 CPU-seconds of it; psample runs without -d.
    let w = start("cpu_split_fp", &["-s", "0"]);
    let pid = w.pid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exit.folded");
    let child = spawn_psample(&["record", "-p", &pid, "-o", out.to_str().unwrap()]);
    wait_until_sampling(child.id());
    wait_for_cpu(w.pid, 0.5);
    signal(w.pid, libc::SIGTERM);
    let (code, err) = finish(child, HANG);
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
        "0",
    ]);
    wait_until_sampling(child.id());
    let target =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
            .unwrap();
    let target: u32 = target
        .split_whitespace()
        .next()
        .expect("launched child")
        .parse()
        .unwrap();
    // Launched commands are sampled from their exec: the CPU it used since then was sampled.
    let wl_real = std::fs::canonicalize(&wl).unwrap();
    wait_until("the launched command to exec", || {
        std::fs::read_link(format!("/proc/{target}/exe")).is_ok_and(|e| e == wl_real)
    });
    wait_for_cpu(target, 0.5);
    signal(target, libc::SIGKILL);
    let (code, err) = finish(child, HANG);
    // The command's status is psample's, as a shell reports it: 128 + SIGKILL.
    assert_eq!(code, Some(137), "{err}");
    assert!(err.contains("targets exited"), "{err}");
    assert!(err.contains("killed by signal 9 (SIGKILL)"), "{err}");
    let folded = valid_folded(&std::fs::read_to_string(&out).unwrap());
    assert!(count_with(&folded, "hot_a") > 10, "{folded:?}");
}

#[test]
fn lost_records_are_counted_and_reported() {
    require!(Need::SystemWide);
    let _g = serial();
    // A one-page ring per CPU at 5 kHz with 2 KiB of stack per sample: the ring overflows
    // between drains and the kernel reports LOST records.
    let w = start("cpu_split_fp", &["-t", "2", "-s", "0"]);
    let pid = w.pid.to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lost.folded");
    let child = spawn_psample(&[
        "record",
        "-p",
        &pid,
        "-F",
        "5000",
        "--call-graph",
        "dwarf,2048",
        "--mmap-pages",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    // Forced, not left to how fast psample drains: stopped, it cannot drain at all while
    // 0.2 CPU-seconds at 5 kHz (1000 samples of 2 KiB) go to rings of one page.
    wait_until_sampling(child.id());
    signal(child.id(), libc::SIGSTOP);
    wait_for_cpu(w.pid, 0.2);
    signal(child.id(), libc::SIGCONT);
    wait_for_cpu(w.pid, 0.2);
    signal(child.id(), libc::SIGINT);
    let (code, stderr) = finish(child, HANG);
    let o = Output {
        status: code.unwrap_or(-1),
        stderr,
        folded: std::fs::read_to_string(&out).unwrap_or_default(),
    };
    assert_eq!(o.status, 0, "{}", o.stderr);
    let lost = summary_number(&o.stderr, "lost").expect("a lost line in the summary");
    assert!(lost > 0.0, "{}", o.stderr);
    assert!(o.stderr.contains("--mmap-pages"), "{}", o.stderr);
    // What was not lost is still a valid profile.
    assert!(count_with(&parse_folded(&o.folded), "hot_a") > 0);
}

/// exec_fork attached with -p: once psample samples, it forks a child that spins 1 CPU-s,
/// spins 0.5 CPU-s itself, then execs cpu_split_fp (same pid, new image) which creates 2
/// more threads and stops after 1 CPU-s.
fn fork_exec_run(extra: &[&str]) {
    require!(Need::SystemWide);
    let _g = serial();
    // A private copy: other test binaries rebuild target/test-workloads in place, and the
    // exec'd image exits before symbolization, when only the (inode-verified) host file is
    // left to read it from.
    let dir = tempfile::tempdir().unwrap();
    let cpu = dir.path().join("cpu_split_fp");
    std::fs::copy(workload("cpu_split_fp"), &cpu).unwrap();
    let mut w = Command::new(workload("exec_fork"))
        .args(["-n", "0.5", "-s", "1", "--", cpu.to_str().unwrap()])
        .args(["-t", "3", "-s", "0"])
        .env("WL_GO_ON_STDIN", "1")
        .env("WL_CPU_SECONDS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(w.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let stdin = w.stdin.take();
    // Killed (with its tree: the forked child dies with it, see exec_fork) if the test fails.
    let w = Running {
        pid: w.id(),
        child: w,
    };
    let pid = line
        .split_whitespace()
        .find_map(|t| t.strip_prefix("pid="))
        .expect("pid= line")
        .to_string();
    let out = dir.path().join("fork_exec.folded");
    let mut args = vec!["record", "-p", &pid, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let child = spawn_psample(&args);
    // The tree changes only once psample samples (closing stdin lets exec_fork go on).
    wait_until_sampling(child.id());
    drop(stdin);
    let (code, stderr) = finish(child, HANG);
    drop(w);
    let o = Output {
        status: code.unwrap_or(-1),
        stderr,
        folded: std::fs::read_to_string(&out).unwrap_or_default(),
    };
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
    // With --bpf the kernel adds samples up without timestamps, and psample resolves them
    // when it drains (every second): samples of the old image taken since the last drain
    // before the exec are resolved against the new image, so they come out unnamed. That is
    // at most every sample of the 0.5 CPU-s the old image spins (~50 at 99 Hz), however the
    // exec falls between drains; nothing else may be unnamed.
    let bpf = extra.contains(&"always");
    assert!(
        if bpf {
            unknown <= 60
        } else {
            unknown * 20 <= total
        },
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
    fork_exec_run(&["--call-graph", "fp", "--bpf", "always"]);
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
            .args(["-s", "0"])
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
        let (o, _) = run_psample_until_cpu(&["record", "-p", &pid], child.id(), 0.5);
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

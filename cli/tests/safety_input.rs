//! Bad input and a hostile environment: every case ends in a clear error (or a warning and a
//! correct run), with a non-zero exit when nothing useful can be done, and never a panic.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use support::*;

const NOBODY: u32 = 65534;

fn psample_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(psample());
    c.args(args);
    c
}

fn run(c: &mut Command) -> (Option<i32>, String) {
    let o: Output = c.output().expect("run psample");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs psample with `args` and expects exit `code` and `needle` in its stderr.
fn fails_with(args: &[&str], code: i32, needle: &str) {
    let (got, err) = run(&mut psample_cmd(args));
    assert_eq!(got, Some(code), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
}

fn no_panic(err: &str) {
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "psample panicked:\n{err}"
    );
}

/// An unprivileged user must be able to run the test binary's psample.
fn as_nobody(c: &mut Command) -> &mut Command {
    // The target dir is world-readable here; the assert keeps a future umask change from
    // turning these tests into confusing permission failures.
    let meta = std::fs::metadata(psample()).expect("psample binary");
    use std::os::unix::fs::PermissionsExt;
    assert!(
        meta.permissions().mode() & 0o001 != 0,
        "psample is not executable by others"
    );
    c.uid(NOBODY).gid(NOBODY)
}

#[test]
fn missing_pid_and_tid_are_clear_errors() {
    for cmd in ["record", "offcpu"] {
        let (code, err) = run(&mut psample_cmd(&[cmd, "-p", "999999999", "-d", "1"]));
        assert_eq!(code, Some(1), "{cmd}: {err}");
        assert!(err.contains("no such process: 999999999"), "{cmd}: {err}");
        let (code, err) = run(&mut psample_cmd(&[cmd, "-t", "999999998", "-d", "1"]));
        assert_eq!(code, Some(1), "{cmd}: {err}");
        assert!(err.contains("no such thread: 999999998"), "{cmd}: {err}");
        no_panic(&err);
    }
}

#[test]
fn zombie_target_is_no_such_process() {
    // A child that exited but was not reaped still has /proc/PID: it must not count as alive.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    // Wait for the exit without reaping (WNOWAIT): a zombie for sure, however slow the
    // machine is.
    // SAFETY: a zeroed siginfo_t is a valid out-parameter; pid is our own child.
    let rc = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
    };
    assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
    let (code, err) = run(&mut psample_cmd(&[
        "record",
        "-p",
        &pid.to_string(),
        "-d",
        "1",
    ]));
    child.wait().unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no such process"), "{err}");
}

#[test]
fn pid_exiting_during_startup_is_an_error_or_a_clean_short_run() {
    require!(Need::SystemWide);
    let _g = serial();
    // Targets that live 0–60 ms: psample attaches before, during or after the exit. Every
    // outcome must be a clear error (exit 1) or a complete run (exit 0), never anything else.
    let (mut errors, mut runs) = (0, 0);
    for i in 0..12u64 {
        let life = format!("0.0{}", (i * 5) % 60 / 10 * 10 + (i * 5) % 10);
        let mut child = Command::new("sleep").arg(&life).spawn().unwrap();
        let pid = child.id().to_string();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("p.folded");
        let (code, err) = run(&mut psample_cmd(&[
            "record",
            "-p",
            &pid,
            "-d",
            "2",
            "-o",
            out.to_str().unwrap(),
        ]));
        child.wait().unwrap();
        no_panic(&err);
        match code {
            Some(0) => {
                runs += 1;
                assert!(err.contains("targets exited"), "{err}");
                assert!(out.exists(), "a completed run writes its output: {err}");
            }
            Some(1) => {
                errors += 1;
                assert!(
                    err.contains("no such process") || err.contains("exited during start-up"),
                    "{err}"
                );
                assert!(!out.exists());
            }
            other => panic!("unexpected exit {other:?}: {err}"),
        }
    }
    eprintln!("short-lived targets: {errors} errors, {runs} complete runs");
}

#[test]
fn permission_denied_names_the_setting_and_the_fix() {
    // Root, because the test drops to nobody.
    require!(Need::Root);
    let paranoid: i64 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        paranoid >= 0,
        "this test needs kernel.perf_event_paranoid >= 0 so that CPU-wide events are refused \
         to unprivileged users (it is {paranoid})"
    );
    let (code, err) = run(as_nobody(&mut psample_cmd(&["record", "-a", "-d", "1"])));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(
        err.contains(&format!("perf_event_paranoid is {paranoid}")),
        "{err}"
    );
    assert!(
        err.contains("CAP_PERFMON") && err.contains("sysctl"),
        "{err}"
    );
    no_panic(&err);
}

#[test]
fn output_path_problems_are_found_before_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(String, &str)> = vec![
        ("/nonexistent-psample-dir/out.folded".into(), "mkdir -p"),
        (dir.path().display().to_string(), "is a directory"),
        // Not writable even for root.
        ("/proc/psample.folded".into(), "not writable"),
    ];
    for (path, expect) in cases {
        // The profiled command would leave this marker: a check after launching it (that
        // is, after sampling started) shows, whatever the machine's speed.
        let marker = dir.path().join("launched");
        let (code, err) = run(psample_cmd(&["record", "-o", &path, "--", "touch"]).arg(&marker));
        assert_eq!(code, Some(1), "{path}: {err}");
        assert!(err.contains(expect), "{path}: {err}");
        assert!(!marker.exists(), "{path} checked after the command started");
    }
    // A directory root can write but nobody cannot (a private temp dir of root's).
    let private = dir.path().join("private.folded");
    let (code, err) = run(as_nobody(&mut psample_cmd(&[
        "record",
        "-d",
        "5",
        "-o",
        private.to_str().unwrap(),
        "--",
        "true",
    ])));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("not writable") || err.contains("not usable"),
        "{err}"
    );
}

#[test]
fn unknown_events_and_tracepoints_are_rejected() {
    fails_with(
        &["record", "-e", "nosuchevent", "-p", "1"],
        1,
        "unknown event \"nosuchevent\"",
    );
    fails_with(
        &[
            "record",
            "-e",
            "tracepoint:sched:no_such_tracepoint",
            "-p",
            "1",
        ],
        1,
        "does not exist on this kernel",
    );
    fails_with(
        &["record", "-e", "t:../..:x", "-p", "1"],
        1,
        "invalid tracepoint name",
    );
}

#[test]
fn frequency_above_the_kernel_maximum_is_clamped_with_a_warning() {
    require!(Need::SystemWide);
    let _g = serial();
    let max: u64 = std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let w = start("cpu_split_fp", &["-s", "0"]);
    let pid = w.pid.to_string();
    let too_high = (max * 10).to_string();
    let (o, _) = run_psample_until_cpu(&["record", "-p", &pid, "-F", &too_high], w.pid, 0.2);
    assert_eq!(o.status, 0, "{}", o.stderr);
    assert!(
        o.stderr.contains("above kernel.perf_event_max_sample_rate")
            && o.stderr.contains(&format!("sampling at {max} Hz")),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains(&format!("at {max} Hz")), "{}", o.stderr);
    assert!(!parse_folded(&o.folded).is_empty());
}

fn with_nofile(c: &mut Command, soft: u64, hard: u64) -> &mut Command {
    // SAFETY: setrlimit is async-signal-safe; runs in the child between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[test]
fn open_file_limit_is_raised_then_reported_clearly() {
    require!(Need::SystemWide);
    let _g = serial();
    // 8 threads × every CPU × 1 event: more than 16 fds, far fewer than 4096.
    let w = start("cpu_split_fp", &["-t", "8", "-s", "60"]);
    let pid = w.pid.to_string();
    // Soft limit too low, hard limit fine: psample raises it and runs.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.folded");
    let (code, err) = run(with_nofile(
        &mut psample_cmd(&["record", "-p", &pid, "-d", "1", "-o", out.to_str().unwrap()]),
        16,
        4096,
    ));
    assert_eq!(
        code,
        Some(0),
        "soft limit must be raised to the hard limit: {err}"
    );
    assert!(std::fs::read_to_string(&out).unwrap().contains("hot_a"));
    // Hard limit too low: a clear error that says what to change.
    let (code, err) = run(with_nofile(
        &mut psample_cmd(&["record", "-p", &pid, "-d", "1"]),
        16,
        16,
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("too many open files"), "{err}");
    assert!(
        err.contains("the limit is 16") && err.contains("ulimit -Hn"),
        "{err}"
    );
    no_panic(&err);
}

#[test]
fn small_mlock_limit_shrinks_the_ring_with_a_note() {
    require!(Need::SystemWide);
    let _g = serial();
    let paranoid: i64 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        paranoid <= 2,
        "needs kernel.perf_event_paranoid <= 2 so an unprivileged user may profile its own \
         command (it is {paranoid})"
    );
    // As nobody (no CAP_IPC_LOCK) with RLIMIT_MEMLOCK 0, only perf_event_mlock_kb (516 KiB
    // by default) per user is available: 1024 pages (4 MiB) cannot be mapped.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let out = dir.path().join("m.folded");
    let wl = workload("cpu_split_fp");
    let mut c = psample_cmd(&[
        "record",
        "-v",
        "--mmap-pages",
        "1024",
        "-o",
        out.to_str().unwrap(),
        "--",
        wl.to_str().unwrap(),
        "-s",
        "0",
    ]);
    // Half a CPU-second of work, however long that takes here.
    c.env("WL_CPU_SECONDS", "0.5");
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
            Ok(())
        });
    }
    let (code, err) = run(as_nobody(&mut c));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("ring") && err.contains("pages"),
        "expected a shrink note: {err}"
    );
    let folded = std::fs::read_to_string(&out).unwrap();
    assert!(folded.contains("hot_a"), "{folded}");
}

#[test]
fn tracefs_is_mounted_when_missing_and_missing_tracefs_is_explained() {
    require!(Need::SystemWide);
    let _g = serial();
    // In a private mount namespace, hide tracefs and debugfs under empty tmpfs mounts. As root
    // psample mounts tracefs itself; as nobody it cannot and must say how to fix it.
    let script = |inner: &str| {
        format!(
            "set -e; mount -t tmpfs none /sys/kernel/tracing; \
             mount -t tmpfs none /sys/kernel/debug 2>/dev/null || true; {inner}"
        )
    };
    let ps = psample();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.folded");
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(script(&format!(
            "{ps} record -e tracepoint:sched:sched_switch -a -d 1 -o {}; \
             test -d /sys/kernel/tracing/events",
            out.display()
        )))
        .output()
        .expect("unshare (util-linux)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "root must mount tracefs itself: {err}");

    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(script(&format!(
            "exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups \
             {ps} offcpu -a -d 1"
        )))
        .output()
        .expect("unshare (util-linux)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no tracing filesystem is mounted") && err.contains("mount -t tracefs"),
        "{err}"
    );
    no_panic(&err);
}

#[test]
fn conflicting_flags_are_usage_errors() {
    // Two targets at once.
    for args in [
        &["record", "-p", "1", "-a"][..],
        &["record", "-p", "1", "-t", "2"],
        &["offcpu", "-a", "-t", "2"],
    ] {
        let (code, err) = run(&mut psample_cmd(args));
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("cannot be used with"), "{args:?}: {err}");
    }
    // A target and a command.
    fails_with(&["record", "-p", "1", "--", "true"], 1, "choose one target");
    // No target at all.
    fails_with(&["record", "-d", "1"], 1, "nothing to profile");
    // A ring too small for one DWARF sample would silently drop every sample.
    fails_with(
        &[
            "record",
            "--call-graph",
            "dwarf,8192",
            "--mmap-pages",
            "1",
            "-a",
            "-d",
            "1",
        ],
        1,
        "smaller than one DWARF sample",
    );
    // Impossible values.
    let (code, err) = run(&mut psample_cmd(&[
        "record",
        "--call-graph",
        "lbr",
        "-p",
        "1",
    ]));
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(&mut psample_cmd(&["offcpu", "-m", "100", "-M", "10", "-a"]));
    assert_eq!(code, Some(1), "{err}");
    no_panic(&err);
}

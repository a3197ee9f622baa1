//! `psample offcpu` on real processes.

mod support;

use support::*;

/// 7 ms nanosleep + ~3 ms pipe wait per iteration, single thread, launched for 3 s: the
/// blocked time under each phase matches what the workload measured itself. (On an idle
/// machine that is a 70/30 split; under load wake-up latency adds to both phases, and the
/// workload's own clock is the reference that moves with it.)
#[test]
fn sleep_and_pipe_waits_split_as_measured() {
    require!(Need::SystemWide);
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("off.folded");
    let o = std::process::Command::new(psample())
        .args(["offcpu", "-o"])
        .arg(&out_path)
        .arg("--")
        .arg(workload("sleep_pipe"))
        .args(["-s", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "psample failed: {stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let measured = |key: &str| -> f64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in the workload's output: {stdout}"))
    };
    let (sleep_ref, wait_ref) = (measured("sleep_us="), measured("wait_us="));
    let folded = parse_folded(&std::fs::read_to_string(&out_path).unwrap());
    // The parent's phases (the forked helper's own sleeps are under child_loop).
    let sleep_us = count_with(&folded, "sleep_phase") as f64;
    let pipe_us = count_with(&folded, "wait_phase") as f64;
    let split = 100.0 * sleep_us / (sleep_us + pipe_us);
    let expect = 100.0 * sleep_ref / (sleep_ref + wait_ref);
    eprintln!(
        "nanosleep {sleep_us} us (measured {sleep_ref}), pipe {pipe_us} us (measured \
         {wait_ref}), split {split:.1}% (measured {expect:.1}%)"
    );
    assert!(
        (split - expect).abs() <= 3.0,
        "split {split:.1}%, the workload measured {expect:.1}%\n{stderr}"
    );
    // The thread is blocked for nearly all of each phase (it runs microseconds each).
    let (ours, theirs) = (sleep_us + pipe_us, sleep_ref + wait_ref);
    assert!(
        (ours - theirs).abs() <= 0.1 * theirs,
        "blocked {ours} us in the phases, the workload measured {theirs} us\n{stderr}"
    );
    // Counts are microseconds and stacks end in the kernel's scheduler path.
    assert!(folded
        .keys()
        .any(|s| s.contains("schedule_[k]") || s.contains("[blocked at start]")));
}

#[test]
fn wakers_are_joined_offwaketime_style() {
    require!(Need::SystemWide);
    let _serial = serial();
    let w = start("sleep_pipe", &["-s", "10"]);
    let pid = w.pid.to_string();
    let out = run_psample(&["offcpu", "-p", &pid, "-d", "2", "--wakers"]);
    check_pipe_wakers(&out);
}

/// The same with the workload launched by psample (`-- CMD`): its pipe waits get waker
/// stacks too (once recorded 0 wakeups), and most of the pipe wait has one.
#[test]
fn wakers_of_a_launched_command() {
    require!(Need::SystemWide);
    let _serial = serial();
    let wl = workload("sleep_pipe");
    let out = run_psample(&["offcpu", "--wakers", "--", wl.to_str().unwrap(), "-s", "2"]);
    check_pipe_wakers(&out);
    let wakeups = out
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("events")?.split(", ").nth(2))
        .and_then(|w| w.strip_suffix(" wakeups")?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no wakeups count in\n{}", out.stderr));
    // ~100 iterations a second, each a sleep and a pipe wait woken by the child.
    assert!(wakeups >= 100, "{wakeups} wakeups:\n{}", out.stderr);
    let folded = parse_folded(&out.folded);
    let pipe_wait: u64 = folded
        .iter()
        .filter(|(s, _)| s.contains(";wait_phase;"))
        .map(|(_, c)| c)
        .sum();
    let woken: u64 = folded
        .iter()
        .filter(|(s, _)| s.contains(";wait_phase;") && s.contains("pipe_write"))
        .map(|(_, c)| c)
        .sum();
    assert!(
        woken * 10 >= pipe_wait * 9,
        "{woken} of {pipe_wait} us of pipe wait have the writer as waker"
    );
}

fn check_pipe_wakers(out: &Output) {
    assert_eq!(out.status, 0, "psample failed: {}", out.stderr);
    let folded = parse_folded(&out.folded);
    let with_waker: Vec<&String> = folded.keys().filter(|s| s.contains(";--;")).collect();
    assert!(!with_waker.is_empty(), "no waker stacks:\n{}", out.folded);
    // The pipe wait is ended by the child's write(): its kernel path is in the waker part.
    assert!(
        with_waker.iter().any(|s| s
            .split(";--;")
            .nth(1)
            .is_some_and(|w| w.contains("pipe_write"))),
        "no pipe writer among the wakers:\n{}",
        out.folded
    );
    // Waker frames are annotated and the waker's name is the last frame.
    for s in &with_waker {
        let waker = s.split(";--;").nth(1).unwrap();
        let frames: Vec<&str> = waker.split(';').collect();
        assert!(
            frames[..frames.len() - 1]
                .iter()
                .all(|f| f.ends_with("_[w]")),
            "{s}"
        );
        assert!(!frames.last().unwrap().ends_with("_[w]"), "{s}");
    }
}

#[test]
fn offcpu_rejects_impossible_filters() {
    let o = std::process::Command::new(psample())
        .args(["offcpu", "-p", "1", "-m", "100", "-M", "10"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("-M"));
}

/// An HTTP server that fsyncs a log line per request, under wrk on loopback: the fsync stack
/// carries a large share of blocked time, and --wakers shows the block-completion path that
/// ends it and the load generator's socket writes that wake the request reader.
#[test]
fn fsync_server_under_load_shows_fsync_and_its_wakers() {
    require!(Need::SystemWide);
    let _serial = serial();
    assert!(
        std::process::Command::new("wrk")
            .arg("--version")
            .output()
            .is_ok(),
        "wrk is needed (apt-get install wrk; .ci/setup installs it)"
    );
    let logdir = tempfile::tempdir().unwrap();
    let port = 18000 + (std::process::id() % 1000) as u16;
    let w = start(
        "fsync_server",
        &[
            "-p",
            &port.to_string(),
            "-d",
            logdir.path().to_str().unwrap(),
            "-t",
            "2",
            "-s",
            "20",
        ],
    );
    // Killed once psample is done (or the test fails: Running kills on drop).
    let load = std::process::Command::new("wrk")
        .args(["-t1", "-c8", "-d60s", &format!("http://127.0.0.1:{port}/")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let load = Running {
        pid: load.id(),
        child: load,
    };
    // Profile once requests flow (each appends a line to the log), however long wrk takes
    // to get going here.
    let log = logdir.path().join("fsync_server.log");
    wait_until("requests from wrk", || {
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 4096)
    });
    let pid = w.pid.to_string();
    let out = run_psample(&["offcpu", "-p", &pid, "-d", "3", "--wakers"]);
    drop(load);
    assert_eq!(out.status, 0, "psample failed: {}", out.stderr);
    let folded = parse_folded(&out.folded);
    // The blocked part's frames, without the comm ("fsync_server" itself contains "fsync").
    let blocked = |s: &str| {
        let b = s.split(";--;").next().unwrap_or(s);
        b.split_once(';')
            .map_or(String::new(), |(_, frames)| frames.to_string())
    };
    let fsync_us: u64 = folded
        .iter()
        .filter(|(s, _)| blocked(s).contains("fsync"))
        .map(|(_, c)| c)
        .sum();
    let epoll_us: u64 = folded
        .iter()
        .filter(|(s, _)| blocked(s).contains("epoll_wait"))
        .map(|(_, c)| c)
        .sum();
    let total: u64 = folded.values().sum();
    eprintln!("fsync {fsync_us} us, epoll {epoll_us} us, total {total} us");
    // Apart from the accept loop idling in epoll_wait, request threads mostly wait on fsync.
    assert!(
        fsync_us * 2 > total - epoll_us,
        "fsync should dominate the request threads' blocked time:\n{}",
        out.folded
    );
    let wakers_of = |pred: &dyn Fn(&str) -> bool| {
        folded
            .keys()
            .filter(|s| pred(&blocked(s)))
            .filter_map(|s| s.split(";--;").nth(1))
            .collect::<Vec<_>>()
    };
    let fsync_wakers = wakers_of(&|b| b.contains("fsync"));
    assert!(
        fsync_wakers
            .iter()
            .any(|w| w.contains("blk_") || w.contains("end_io") || w.contains("bio")),
        "no block-device completion among the fsync wakers:\n{}",
        out.folded
    );
    let all_wakers = wakers_of(&|_| true);
    assert!(
        all_wakers
            .iter()
            .any(|w| w.ends_with(";wrk") && (w.contains("tcp_") || w.contains("sock"))),
        "no wrk socket write among the wakers:\n{}",
        out.folded
    );
}

/// System-wide, an interval ends at the blocked task's next switch-in; with no lost records
/// none may go unseen. The sched_switch tracepoint does not fire for switches away from the
/// idle task on every CPU (on this 6.18 VM never on CPU 1), so switch-ins taken from its
/// next_pid missed every task woken on an idle CPU: a `sleep 0.02` loop lost hundreds of
/// intervals a second. Switch-ins now come from SWITCH_CPU_WIDE records.
#[test]
fn system_wide_sees_the_switch_in_of_every_interval() {
    require!(Need::SystemWide);
    let _serial = serial();
    // Each iteration appends a line once its `sleep 0.02` has exited.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("iterations");
    let churn = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while :; do sleep 0.02; echo >> {}; done",
            log.display()
        ))
        .spawn()
        .unwrap();
    let churn = Running {
        pid: churn.id(),
        child: churn,
    };
    let done = || std::fs::read(&log).map_or(0, |b| b.len());
    let out_path = dir.path().join("off.folded");
    let ps = std::process::Command::new(psample())
        .args(["offcpu", "-a", "-o"])
        .arg(&out_path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = KillGuard(Some(ps.id()));
    // 100 iterations while sampled, however long they take on this machine: all but the
    // first started after sampling did.
    wait_until_sampling(ps.id());
    let first = done();
    wait_until("100 sleeps", || done() >= first + 100);
    let whole = (done() - first - 1) as u64;
    sigint(ps.id());
    let o = ps.wait_with_output().unwrap();
    guard.defuse();
    drop(churn);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "psample failed: {stderr}");
    let lost = summary_number(&stderr, "lost").unwrap_or(0.0);
    let dropped = summary_number(&stderr, "not counted").unwrap_or(0.0);
    assert!(
        dropped == 0.0 || lost > 0.0,
        "{dropped} intervals dropped with no lost records:\n{stderr}"
    );
    let folded = parse_folded(&std::fs::read_to_string(&out_path).unwrap());
    let sleep_us: u64 = folded
        .iter()
        .filter(|(s, _)| s.starts_with("sleep;") && s.contains("nanosleep"))
        .map(|(_, c)| *c)
        .sum();
    eprintln!("{whole} whole sleeps sampled: {sleep_us} us in nanosleep");
    // Each whole sleep is off CPU for its 20 ms less the few µs between entering nanosleep
    // and switching out; load only makes it longer. 19 ms each leaves room for that.
    assert!(
        sleep_us >= whole * 19_000,
        "sleep processes blocked {sleep_us} us in nanosleep, {whole} whole sleeps of 20 ms \
         were sampled:\n{stderr}"
    );
}

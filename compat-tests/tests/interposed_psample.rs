//! The real psample binary on this machine's real kernel, with its perf_event_open, perf
//! ioctls and bpf answered as upstream 3.10, an early RHEL 7 and RHEL 7.9 answer them
//! (`compat_tests::interpose`), compared with the same commands without the interposer, on
//! workloads whose answer is known by construction (workloads/).
//!
//! Needs root (tracepoints, and the interposer reads psample's memory): skipped with a
//! message otherwise, failed under `PSAMPLE_REQUIRE_PERF=1`. Uses the static release binary
//! that is shipped (`PSAMPLE_BIN` overrides).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use compat_tests::interpose::{self, Tally};
use compat_tests::profile::{self, KernelProfile};
use test_support::{require, Need};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The shipped static binary, built once per test run.
fn psample() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let ws = workspace();
        if let Some(bin) = std::env::var_os("PSAMPLE_BIN") {
            let bin = ws.join(bin);
            assert!(bin.is_file(), "PSAMPLE_BIN: no file {}", bin.display());
            return bin;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(&ws)
            .args([
                "build",
                "--release",
                "--target",
                "x86_64-unknown-linux-musl",
            ])
            .args(["-p", "psample"])
            .status()
            .expect("running cargo");
        assert!(
            st.success(),
            "building the static psample failed (rustup target add x86_64-unknown-linux-musl?)"
        );
        ws.join("target/x86_64-unknown-linux-musl/release/psample")
    })
}

fn workload(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let out = workspace().join("target/test-workloads");
        let st = Command::new("bash")
            .arg(workspace().join("workloads/build.sh"))
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .expect("bash");
        assert!(
            st.success(),
            "workloads/build.sh failed (is gcc installed?)"
        );
        out
    });
    dir.join(name)
}

/// Runs measure CPU shares and blocked time on a 2-CPU machine: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

struct Run {
    label: String,
    status: i32,
    /// The launched workload's output (psample passes its stdout on).
    stdout: String,
    stderr: String,
    folded: BTreeMap<String, u64>,
    tally: Option<Tally>,
}

impl Run {
    /// The value of a summary line (`  key   value`).
    fn summary(&self, key: &str) -> Option<&str> {
        self.stderr.lines().find_map(|l| {
            let rest = l.trim_start().strip_prefix(key)?;
            rest.starts_with("  ").then(|| rest.trim())
        })
    }

    fn lost(&self) -> u64 {
        self.summary("lost")
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: no lost line\n{}", self.label, self.stderr))
    }

    fn fallbacks(&self) -> Vec<String> {
        let line = self.summary("fallbacks").unwrap_or("none");
        if line == "none" {
            return Vec::new();
        }
        line.split("; ")
            .filter_map(|f| f.strip_prefix("no "))
            .filter_map(|f| f.split(" → ").next())
            .map(str::to_string)
            .collect()
    }

    /// Total of stacks containing the frame `frame`.
    fn count_with(&self, frame: &str) -> u64 {
        self.folded
            .iter()
            .filter(|(s, _)| s.split(';').any(|f| f == frame))
            .map(|(_, c)| c)
            .sum()
    }

    fn context(&self) -> String {
        let tally = self
            .tally
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default();
        format!("--- {} ---\n{}{tally}", self.label, self.stderr)
    }
}

/// A psample run under way, its output going to a temp file.
struct Started {
    label: String,
    out: PathBuf,
    _dir: tempfile::TempDir,
    proc: Proc,
}

enum Proc {
    Plain(std::process::Child),
    Interposed(interpose::Supervised),
}

/// Start `psample ARGS` (with `-o` inserted before `--`), under `profile`'s kernel or
/// plainly.
fn start(profile: Option<&KernelProfile>, args: &[&str]) -> Started {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.folded");
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let at = full.iter().position(|a| a == "--").unwrap_or(full.len());
    full.insert(at, out.display().to_string());
    full.insert(at, "-o".into());
    let mut cmd = Command::new(psample());
    cmd.args(&full)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let label = format!(
        "{} psample {}",
        profile.map_or("plain", |p| p.name),
        args.join(" ")
    );
    let proc = match profile {
        Some(p) => Proc::Interposed(
            interpose::spawn(p.clone(), &mut cmd).unwrap_or_else(|e| panic!("{label}: {e}")),
        ),
        None => Proc::Plain(cmd.spawn().expect("running psample")),
    };
    Started {
        label,
        out,
        _dir: dir,
        proc,
    }
}

impl Started {
    fn finish(self) -> Run {
        let (output, tally) = match self.proc {
            Proc::Interposed(s) => {
                let (o, t) = s
                    .wait_with_output()
                    .unwrap_or_else(|e| panic!("{}: {e}", self.label));
                (o, Some(t))
            }
            Proc::Plain(c) => (c.wait_with_output().expect("waiting for psample"), None),
        };
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut folded = BTreeMap::new();
        for line in text.lines() {
            let (stack, n) = line.rsplit_once(' ').expect("folded line");
            *folded.entry(stack.to_string()).or_insert(0) += n.parse::<u64>().expect("count");
        }
        let run = Run {
            label: self.label,
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            folded,
            tally,
        };
        assert_eq!(run.status, 0, "psample failed\n{}", run.context());
        if let Some(t) = &run.tally {
            assert!(t.errors.is_empty(), "interposer errors\n{}", run.context());
        }
        run
    }
}

fn run(profile: Option<&KernelProfile>, args: &[&str]) -> Run {
    start(profile, args).finish()
}

/// A workload left running (killed on drop), with its pid.
struct Running {
    child: std::process::Child,
    pid: String,
}

impl Running {
    fn start(path: &Path, args: &[&str]) -> Running {
        use std::io::BufRead;
        let mut child = Command::new(path)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the workload");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("workload output");
        let pid = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .unwrap_or_else(|| panic!("no pid= in {line:?}"))
            .to_string();
        Running { child, pid }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn old_profiles() -> [KernelProfile; 3] {
    [
        profile::upstream_3_10(),
        profile::rhel_7_early(),
        profile::rhel_7_9(),
    ]
}

/// The fallbacks psample must report for `record` on each kernel (kernel-compat.md; record
/// asks for neither use_clockid nor sample_max_stack), reached through the real syscall path.
fn expected_record_fallbacks(p: &KernelProfile) -> Vec<&'static str> {
    match p.name {
        "3.10" => vec![
            "PERF_FLAG_FD_CLOEXEC",
            "mmap2",
            "comm_exec",
            "PERF_EVENT_IOC_ID",
            "ring data_offset/data_size",
        ],
        "rhel-7-early" => vec!["ring data_offset/data_size"],
        "rhel-7.9" => vec![],
        other => panic!("no expectation for {other}"),
    }
}

/// What the interposer itself refused, per profile: it is the profile's rules that psample
/// met, not the real kernel's.
#[test]
fn each_profile_refuses_what_its_kernel_lacks() {
    require!(Need::Root);
    let _one = serial();
    let w = workload("cpu_split_fp");
    let w = w.to_str().unwrap();
    for p in old_profiles() {
        let r = run(Some(&p), &["record", "-F", "99", "--", w, "-s", "1"]);
        let t = r.tally.as_ref().unwrap();
        let mut got = r.fallbacks();
        got.sort();
        let mut want: Vec<String> = expected_record_fallbacks(&p)
            .into_iter()
            .map(String::from)
            .collect();
        want.sort();
        assert_eq!(got, want, "fallbacks\n{}", r.context());
        // Rings: one per CPU, each header hidden where the kernel lacks data_offset.
        let hidden = if p.ring_data_offset { 0 } else { 1 };
        assert!(
            (t.headers_hidden >= 1) == (hidden == 1),
            "ring headers\n{}",
            r.context()
        );
        assert_eq!(
            t.ioctls_refused.contains_key("ID"),
            !p.ioc_id,
            "IOC_ID\n{}",
            r.context()
        );
        // record tries in-kernel aggregation (--bpf auto): bpf(2) refused before 3.18.
        assert_eq!(t.bpf_refused > 0, !p.bpf_syscall, "bpf\n{}", r.context());
        if !p.bpf_syscall {
            assert!(
                r.summary("bpf").is_some_and(|b| b.contains("ENOSYS")),
                "bpf line\n{}",
                r.context()
            );
        }
    }
}

/// Largest difference (points) between the hot_a shares with and without the interposer.
const SPLIT_TOLERANCE: f64 = 3.0;

/// Samples each side of a comparison gathers (over several runs when the machine is busy):
/// binomial noise of a 70 % share is then σ ≈ 0.5 points a side.
const MIN_SAMPLES: u64 = 8_000;
const MAX_RUNS: usize = 8;

/// hot_a/hot_b samples of one side, with the lost records and the context of runs that lost.
#[derive(Default)]
struct Split {
    hot_a: u64,
    hot_b: u64,
    lost: u64,
    runs: usize,
    contexts: Vec<String>,
}

impl Split {
    fn add(&mut self, r: &Run) {
        self.hot_a += r.count_with("hot_a");
        self.hot_b += r.count_with("hot_b");
        self.lost += r.lost();
        self.runs += 1;
        if r.lost() != 0 {
            self.contexts.push(r.context());
        }
    }

    fn samples(&self) -> u64 {
        self.hot_a + self.hot_b
    }

    fn share(&self) -> f64 {
        100.0 * self.hot_a as f64 / self.samples().max(1) as f64
    }

    fn describe(&self) -> String {
        format!(
            "hot_a {:.1}% of {} samples in {} runs, lost {}",
            self.share(),
            self.samples(),
            self.runs,
            self.lost
        )
    }
}

/// `record ARGS -p PID` plainly and under `p` at the same time, on the same running
/// workload, until each side has [`MIN_SAMPLES`]: both sample the same execution, so only
/// sampling noise separates them (the workload's own split drifts by a point between runs).
fn split_pair(p: &KernelProfile, args: &[&str], pid: &str) -> (Split, Split) {
    let args: Vec<&str> = args.iter().copied().chain(["-p", pid, "-d", "2"]).collect();
    let (mut plain, mut old) = (Split::default(), Split::default());
    while (plain.samples() < MIN_SAMPLES || old.samples() < MIN_SAMPLES) && plain.runs < MAX_RUNS {
        let a = start(None, &args);
        let b = start(Some(p), &args);
        plain.add(&a.finish());
        old.add(&b.finish());
    }
    (plain, old)
}

/// `record` in fp and DWARF mode gives the same hot_a/hot_b split under each old-kernel
/// profile as without the interposer (within [`SPLIT_TOLERANCE`]), with no lost records.
///
/// cpu_split runs hot_a 70 % / hot_b 30 % by iteration count. DWARF mode copies 4 KiB of
/// stack (the workload's stacks are far shallower) to keep the data rate at these sample
/// rates within what the default ring absorbs under load.
#[test]
fn record_split_is_the_same_under_old_kernels() {
    require!(Need::Root);
    let _one = serial();
    let modes: [(&str, &str, Vec<&str>); 2] = [
        ("fp", "cpu_split_fp", vec!["record", "-F", "9999"]),
        (
            "dwarf",
            "cpu_split_nofp",
            vec!["record", "-F", "4999", "--call-graph", "dwarf,4096"],
        ),
    ];
    let mut report = String::new();
    let mut failures = Vec::new();
    for (mode, name, args) in &modes {
        let w = Running::start(&workload(name), &["-t", "2", "-s", "0"]);
        for p in old_profiles() {
            let (plain, old) = split_pair(&p, args, &w.pid);
            report.push_str(&format!(
                "{mode} {}: {} / plain: {}\n",
                p.name,
                old.describe(),
                plain.describe()
            ));
            let enough = plain.samples() >= MIN_SAMPLES && old.samples() >= MIN_SAMPLES;
            if !enough || (old.share() - plain.share()).abs() > SPLIT_TOLERANCE {
                failures.push(format!(
                    "{mode} {}: {} / plain {}",
                    p.name,
                    old.describe(),
                    plain.describe()
                ));
            }
            failures.extend(plain.contexts.into_iter().chain(old.contexts));
        }
    }
    eprint!("{report}");
    assert!(failures.is_empty(), "{report}\n{}", failures.join("\n"));
}

/// Where the old kernel accepts a field but treats it as padding (RHEL 7.9's
/// sample_max_stack), the interposer opens the event with the attr that kernel stores and
/// hands the caller the fd (flags included): the callchain comes back unlimited, as on RHEL.
#[test]
fn fields_an_old_kernel_ignores_have_no_effect() {
    require!(Need::Root);
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = dir.path().join("max_stack");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interposed/max_stack.c");
    let st = Command::new("gcc")
        .args(["-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(st.success(), "building {}", src.display());
    let depth = |out: &[u8]| -> (u64, String) {
        let text = String::from_utf8_lossy(out).into_owned();
        let nr = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("nr="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("max_stack printed {text:?}"));
        assert!(text.contains("cloexec=1"), "fd lost FD_CLOEXEC: {text:?}");
        (nr, text)
    };
    let plain = Command::new(&exe).output().expect("max_stack");
    let (limited, _) = depth(&plain.stdout);
    let mut cmd = Command::new(&exe);
    cmd.stdout(Stdio::piped());
    let (out, tally) = interpose::spawn(profile::rhel_7_9(), &mut cmd)
        .and_then(|s| s.wait_with_output())
        .expect("max_stack under rhel-7.9");
    let (full, text) = depth(&out.stdout);
    // The PERF_CONTEXT_USER marker plus at most two frames, against the whole 6-deep chain.
    assert!(
        limited <= 3,
        "sample_max_stack not honoured here: {limited}"
    );
    assert!(full > 6, "rhel-7.9 limited the chain: {text}\n{tally}");
    assert_eq!(tally.opens_rewritten, 1, "{tally}");
}

/// N of the `switch-ins` summary line's "N intervals ended at the thread's next syscall exit".
fn ended_at_syscall_exit(line: &str) -> u64 {
    let Some((before, _)) = line.split_once(" intervals ended at the thread's next syscall exit")
    else {
        return 0;
    };
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl Run {
    /// (tid, seconds blocked, % of the window) from the summary's per-thread lines.
    fn blocked_shares(&self) -> Vec<(u32, f64, f64)> {
        self.stderr
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.trim().split_once("  ")?;
                let tid = name.rsplit_once('/')?.1.parse().ok()?;
                let (secs, rest) = rest.trim().split_once(" s blocked (")?;
                let pct = rest.split_once('%')?.0;
                Some((tid, secs.parse().ok()?, pct.trim().parse().ok()?))
            })
            .collect()
    }

    /// A `key=value` number from the workload's output.
    fn workload_value(&self, key: &str) -> f64 {
        self.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{}: workload printed no {key}\n{}", self.label, self.stdout))
    }

    /// Blocked µs of stacks with `frame`, and of those that also carry a waker.
    fn blocked_under(&self, frame: &str) -> (u64, u64) {
        let mut all = 0;
        let mut woken = 0;
        for (s, n) in &self.folded {
            if s.split(";--;")
                .next()
                .unwrap_or("")
                .split(';')
                .any(|f| f == frame)
            {
                all += n;
                if s.contains(";--;") {
                    woken += n;
                }
            }
        }
        (all, woken)
    }
}

/// `offcpu` of sleep_pipe (each iteration 7 ms in nanosleep under sleep_phase, then ~3 ms
/// blocked on a pipe under wait_phase, which a forked child's write ends) under each profile
/// and plainly: both processes blocked ≥ 90 % of the window, the parent's split within
/// [`SPLIT_TOLERANCE`] of the split the workload measured itself (and within 60–80 % with
/// it, unless load on the machine moved the workload's own split out of that band: a
/// slow child lengthens the pipe wait for real), waker stacks on ≥ 90 % of the pipe wait,
/// nothing lost — in fp and DWARF mode.
///
/// On the kernels without context-switch records the forked child is not in the CPU-wide
/// switch-in filter (it is not a target pid), so its intervals can only end at its syscall
/// exits: the second source is exercised whatever the CPU-wide tracepoint does here.
#[test]
fn offcpu_blocked_time_under_old_kernels() {
    require!(Need::Root);
    let _one = serial();
    let w = workload("sleep_pipe");
    let w = w.to_str().unwrap();
    let variants: [&[&str]; 3] = [
        &["offcpu"],
        &["offcpu", "--wakers"],
        &["offcpu", "--wakers", "--call-graph", "dwarf"],
    ];
    let mut report = String::new();
    let mut failures = Vec::new();
    let profiles: Vec<Option<KernelProfile>> = std::iter::once(None)
        .chain(old_profiles().into_iter().map(Some))
        .collect();
    for p in &profiles {
        let legacy = p
            .as_ref()
            .is_some_and(|p| !p.knows_flag(perfring::attr::flag::CONTEXT_SWITCH));
        for v in variants {
            let args: Vec<&str> = v.iter().copied().chain(["--", w, "-s", "2"]).collect();
            let r = run(p.as_ref(), &args);
            let mut bad = Vec::new();
            // The parent blocks ≥ 90 % of the window; the child, forked after the parent's
            // start-up (which the interposer slows under load: every mmap of the dynamic
            // loader waits for it), ≥ 90 % of the workload's loop.
            let shares = r.blocked_shares();
            let parent = r.workload_value("pid") as u32;
            let looped = r.workload_value("seconds");
            let parent_ok = shares.iter().any(|&(t, _, pct)| t == parent && pct >= 90.0);
            let child_ok = shares
                .iter()
                .any(|&(t, secs, _)| t != parent && secs >= 0.9 * looped);
            if !parent_ok || !child_ok {
                bad.push(format!("blocked (tid, s, %) {shares:?}, loop {looped} s"));
            }
            let (sleep, _) = r.blocked_under("sleep_phase");
            let (pipe, woken) = r.blocked_under("wait_phase");
            let split = 100.0 * sleep as f64 / (sleep + pipe).max(1) as f64;
            let (in_sleep, in_wait) = (r.workload_value("sleep_us"), r.workload_value("wait_us"));
            let truth = 100.0 * in_sleep / (in_sleep + in_wait);
            let band = 60.0..=80.0;
            if (split - truth).abs() > SPLIT_TOLERANCE
                || (band.contains(&truth) && !band.contains(&split))
            {
                bad.push(format!("split {split:.1}%, the workload's own {truth:.1}%"));
            }
            let coverage = 100.0 * woken as f64 / pipe.max(1) as f64;
            if v.contains(&"--wakers") && coverage < 90.0 {
                bad.push(format!("waker stacks on {coverage:.1}% of the pipe wait"));
            }
            if r.lost() != 0 {
                bad.push(format!("{} lost", r.lost()));
            }
            let ends = r.summary("switch-ins").unwrap_or("");
            let mechanisms = r.summary("mechanisms").unwrap_or("");
            if legacy {
                // The child's ~200 blocks a second can end nowhere else.
                let at_exit = ended_at_syscall_exit(ends);
                if !mechanisms.contains("raw_syscalls:sys_exit") || at_exit < 100 {
                    bad.push(format!("{at_exit} intervals ended at syscall exits"));
                }
            } else if !mechanisms.contains("context-switch records") || !ends.is_empty() {
                bad.push("the context-switch path changed".into());
            }
            report.push_str(&format!(
                "{}: blocked {:?}, split {split:.1}% (own {truth:.1}%), wakers {coverage:.1}%, \
                 lost {}{}\n",
                r.label,
                shares.iter().map(|&(_, _, p)| p).collect::<Vec<_>>(),
                r.lost(),
                if ends.is_empty() {
                    String::new()
                } else {
                    format!("\n    switch-ins: {ends}")
                }
            ));
            if !bad.is_empty() {
                failures.push(format!("{}\n{}", bad.join("; "), r.context()));
            }
        }
    }
    eprint!("{report}");
    assert!(failures.is_empty(), "{report}\n{}", failures.join("\n"));
}

/// `wall` of wall_split (one worker looping 4 ms of CPU time and a 6 ms nanosleep, which
/// reports its own CPU, sleep and loop time) under each old profile and plainly: the
/// worker's on-CPU time matches the CPU time it measured, and its three kinds of time add
/// up to its loop, each within 5 % of the loop; every line ends in its kind. Before 4.3 the
/// off-CPU intervals end at the CPU-wide sched_switch, the thread's syscall exit or its next
/// on-CPU sample, whichever comes first.
#[test]
fn wall_time_adds_up_under_old_kernels() {
    require!(Need::Root);
    let _one = serial();
    let w = workload("wall_split");
    let w = w.to_str().unwrap();
    let mut report = String::new();
    let mut failures = Vec::new();
    let profiles: Vec<Option<KernelProfile>> = std::iter::once(None)
        .chain(old_profiles().into_iter().map(Some))
        .collect();
    for p in &profiles {
        let r = run(p.as_ref(), &["wall", "-F", "499", "--", w, "-s", "1.5"]);
        let mut kinds = [0u64; 3];
        for (stack, n) in &r.folded {
            let frames: Vec<&str> = stack.split(';').collect();
            let i = match *frames.last().unwrap_or(&"") {
                "[on-cpu]" => 0,
                "[off-cpu]" => 1,
                "[runnable]" => 2,
                other => {
                    failures.push(format!("{}: a line ends in {other:?}", r.label));
                    continue;
                }
            };
            if frames[0] == "wall_w0" {
                kinds[i] += n;
            }
        }
        let (cpu, looped) = (
            r.workload_value("cpu_us") * 1e3,
            r.workload_value("wall_us") * 1e3,
        );
        let [on, off, runnable] = kinds.map(|k| k as f64);
        let total = on + off + runnable;
        let mut bad = Vec::new();
        if (on - cpu).abs() > 0.05 * looped {
            bad.push(format!("on-CPU {on} ns, the worker measured {cpu} ns"));
        }
        if (total - looped).abs() > 0.05 * looped {
            bad.push(format!(
                "kinds sum to {total} ns, the loop took {looped} ns"
            ));
        }
        if r.lost() != 0 {
            bad.push(format!("{} lost", r.lost()));
        }
        report.push_str(&format!(
            "{}: on {:.1}% off {:.1}% runnable {:.1}% = {:.1}% of the loop (cpu measured \
             {:.1}%)\n",
            r.label,
            100.0 * on / looped,
            100.0 * off / looped,
            100.0 * runnable / looped,
            100.0 * total / looped,
            100.0 * cpu / looped
        ));
        if !bad.is_empty() {
            failures.push(format!("{}\n{}", bad.join("; "), r.context()));
        }
    }
    eprint!("{report}");
    assert!(failures.is_empty(), "{report}\n{}", failures.join("\n"));
}

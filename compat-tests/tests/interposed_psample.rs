//! The real psample binary on this machine's real kernel, with its perf_event_open, perf
//! ioctls and bpf answered as upstream 3.10, an early RHEL 7 and RHEL 7.9 answer them
//! (`compat_tests::interpose`), compared with the same commands without the interposer, on
//! workloads whose answer is known by construction (workloads/).
//!
//! Needs root (tracepoints, and the interposer reads psample's memory); fails saying so
//! otherwise. Uses the static release binary that is shipped (`PSAMPLE_BIN` overrides).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use compat_tests::interpose::{self, Tally};
use compat_tests::profile::{self, KernelProfile};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "these tests run psample on the real kernel under a seccomp supervisor that reads its \
         memory: run them as root"
    );
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

    /// Share (%) of `a` among stacks with `a` or `b`, and their total.
    fn share(&self, a: &str, b: &str) -> (f64, u64) {
        let (x, y) = (self.count_with(a), self.count_with(b));
        assert!(
            x + y > 0,
            "{}: neither {a} nor {b} seen\n{}",
            self.label,
            self.stderr
        );
        (100.0 * x as f64 / (x + y) as f64, x + y)
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

/// `psample ARGS` (with `-o` inserted before `--`), under `profile`'s kernel or plainly.
fn run(profile: Option<&KernelProfile>, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.folded");
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let at = full.iter().position(|a| a == "--").unwrap_or(full.len());
    full.insert(at, out.display().to_string());
    full.insert(at, "-o".into());
    let mut cmd = Command::new(psample());
    cmd.args(&full)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let label = format!(
        "{} psample {}",
        profile.map_or("plain", |p| p.name),
        args.join(" ")
    );
    let (output, tally) = match profile {
        Some(p) => {
            let (o, t) = interpose::spawn(p.clone(), &mut cmd)
                .and_then(|s| s.wait_with_output())
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            (o, Some(t))
        }
        None => (cmd.output().expect("running psample"), None),
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let mut folded = BTreeMap::new();
    for line in text.lines() {
        let (stack, n) = line.rsplit_once(' ').expect("folded line");
        *folded.entry(stack.to_string()).or_insert(0) += n.parse::<u64>().expect("count");
    }
    let run = Run {
        label,
        status: output.status.code().unwrap_or(-1),
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
    require_root();
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

/// `record` in fp and DWARF mode gives the same hot_a/hot_b split under each old-kernel
/// profile as without the interposer, with no lost records.
///
/// cpu_split runs hot_a 70 % / hot_b 30 % by iteration count. The rates give several thousand
/// samples per run, so sampling noise (binomial, σ ≈ 0.5 points at 8000 samples) stays well
/// inside the tolerance; DWARF mode copies 4 KiB of stack (the workload's stacks are far
/// shallower) to keep the data rate within what the default ring absorbs under load.
#[test]
fn record_split_is_the_same_under_old_kernels() {
    require_root();
    let _one = serial();
    let fp = workload("cpu_split_fp");
    let nofp = workload("cpu_split_nofp");
    let modes: [(&str, Vec<&str>); 2] = [
        (
            "fp",
            vec!["record", "-F", "4999", "--", fp.to_str().unwrap()],
        ),
        (
            "dwarf",
            vec![
                "record",
                "-F",
                "2999",
                "--call-graph",
                "dwarf,4096",
                "--",
                nofp.to_str().unwrap(),
            ],
        ),
    ];
    let mut report = String::new();
    let mut failures = Vec::new();
    for (mode, base) in &modes {
        let args: Vec<&str> = base.iter().copied().chain(["-t", "2", "-s", "3"]).collect();
        let plain = run(None, &args);
        let (want, n0) = plain.share("hot_a", "hot_b");
        report.push_str(&format!("{mode} plain: hot_a {want:.1}% of {n0}\n"));
        for p in old_profiles() {
            let r = run(Some(&p), &args);
            let (got, n) = r.share("hot_a", "hot_b");
            report.push_str(&format!(
                "{mode} {}: hot_a {got:.1}% of {n}, lost {}\n",
                p.name,
                r.lost()
            ));
            if (got - want).abs() > SPLIT_TOLERANCE || r.lost() != 0 {
                failures.push(r.context());
            }
        }
        if plain.lost() != 0 {
            failures.push(plain.context());
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
    require_root();
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

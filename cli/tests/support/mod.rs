//! Helpers for integration tests that profile real processes on this machine.
//!
//! These tests need perf_event access (root, or kernel.perf_event_paranoid ≤ 1 for
//! per-process, ≤ -1 for tracepoints). Without it they are skipped with a message saying
//! so ([`require!`]), and fail under `PSAMPLE_REQUIRE_PERF=1` (as `.ci/run` sets).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub use test_support::{require, Need};

pub fn psample() -> &'static str {
    env!("CARGO_BIN_EXE_psample")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Build every bundled workload once per test binary.
pub fn workloads() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = repo_root().join("target").join("test-workloads");
        let st = Command::new("bash")
            .arg(repo_root().join("workloads/build.sh"))
            .arg(&out)
            .status()
            .expect("bash");
        assert!(
            st.success(),
            "workloads/build.sh failed (is gcc installed?)"
        );
        out
    })
}

pub fn workload(name: &str) -> PathBuf {
    workloads().join(name)
}

/// Live tests in one binary run one at a time: they measure CPU shares and sample rates,
/// which concurrent busy workloads on a 2-CPU machine would distort.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// CPU seconds (user + system) a process has used so far, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process alive");
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the comm: state is [0]; utime and stime are fields 14 and 15 overall.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// A running workload; killed on drop.
pub struct Running {
    pub child: Child,
    pub pid: u32,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a workload and wait for its `pid=` line.
pub fn start(name: &str, args: &[&str]) -> Running {
    let mut child = Command::new(workload(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let pid = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{name} did not print pid=: {line:?}"));
    // Let its threads get going.
    std::thread::sleep(Duration::from_millis(300));
    Running { child, pid }
}

pub struct Output {
    pub status: i32,
    pub stderr: String,
    pub folded: String,
}

/// Run psample with `args`, writing folded output to a temp file.
pub fn run_psample(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.folded");
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    // Insert -o before a trailing `-- CMD`.
    let pos = full.iter().position(|a| a == "--").unwrap_or(full.len());
    full.insert(pos, out.display().to_string());
    full.insert(pos, "-o".into());
    let o = Command::new(psample())
        .args(&full)
        .output()
        .expect("run psample");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let folded = std::fs::read_to_string(&out).unwrap_or_default();
    Output {
        status: o.status.code().unwrap_or(-1),
        stderr,
        folded,
    }
}

/// Parse folded text into stack → count.
pub fn parse_folded(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let (stack, count) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed folded line {line:?}"));
        let n: u64 = count
            .parse()
            .unwrap_or_else(|_| panic!("count is not an integer in {line:?}"));
        *m.entry(stack.to_string()).or_insert(0) += n;
    }
    m
}

/// Total count of stacks whose frames contain `frame` exactly.
pub fn count_with(folded: &BTreeMap<String, u64>, frame: &str) -> u64 {
    folded
        .iter()
        .filter(|(s, _)| s.split(';').any(|f| f == frame))
        .map(|(_, c)| c)
        .sum()
}

/// Share (0–100) of `a` among stacks containing `a` or `b`.
pub fn share(folded: &BTreeMap<String, u64>, a: &str, b: &str) -> f64 {
    let (x, y) = (count_with(folded, a) as f64, count_with(folded, b) as f64);
    assert!(x + y > 0.0, "neither {a} nor {b} was sampled");
    100.0 * x / (x + y)
}

/// A number after `key` in psample's stderr summary (e.g. "samples").
pub fn summary_number(stderr: &str, key: &str) -> Option<f64> {
    stderr.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(key)?.trim();
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?
            .parse()
            .ok()
    })
}

/// `perf record` + `perf script`, folded the way stackcollapse-perf does (comm first, root
/// first; kernel frames get `_[k]`), for comparison.
pub fn perf_folded(record_args: &[&str]) -> BTreeMap<String, u64> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("perf.data");
    let st = Command::new("perf")
        .arg("record")
        .arg("-o")
        .arg(&data)
        .args(record_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("perf is needed for the comparison (apt-get install linux-perf)");
    assert!(st.success(), "perf record failed");
    let o = Command::new("perf")
        .args(["script", "-F", "comm,ip,sym", "-i"])
        .arg(&data)
        .output()
        .expect("perf script");
    let text = String::from_utf8_lossy(&o.stdout);
    let mut m = BTreeMap::new();
    let mut comm = String::new();
    let mut frames: Vec<String> = Vec::new();
    let mut flush = |comm: &str, frames: &mut Vec<String>| {
        if !comm.is_empty() {
            frames.reverse();
            let stack = std::iter::once(comm.replace(' ', "_"))
                .chain(frames.drain(..))
                .collect::<Vec<_>>()
                .join(";");
            *m.entry(stack).or_insert(0u64) += 1;
        }
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&comm, &mut frames);
            comm.clear();
        } else if !line.starts_with(char::is_whitespace) {
            flush(&comm, &mut frames);
            comm = line.trim().to_string();
        } else {
            let mut parts = line.split_whitespace();
            let ip = parts.next().unwrap_or("0");
            let sym = parts.next().unwrap_or("[unknown]");
            let sym = sym.split('+').next().unwrap_or(sym);
            let kernel = u64::from_str_radix(ip, 16).is_ok_and(|a| a >= 0xffff_8000_0000_0000);
            frames.push(if kernel {
                format!("{sym}_[k]")
            } else {
                sym.to_string()
            });
        }
    }
    flush(&comm, &mut frames);
    m
}

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
use std::time::{Duration, Instant};

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

/// How long a wait for something that must happen may take before the test is declared
/// hung. Not a timing check: every wait below ends on an event, however slow the machine.
pub const HANG: Duration = Duration::from_secs(300);

/// Poll `done` until it holds (or the test is hung).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < HANG,
            "gave up after {HANG:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` has a perf ring mapped: psample (or perf) has opened its events.
pub fn has_perf_ring(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|m| m.contains("anon_inode:[perf_event]"))
}

/// Whether the main thread of `pid` is blocked in poll/ppoll/epoll_wait (x86_64 numbers).
fn in_poll(pid: u32) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/syscall")) else {
        return false;
    };
    matches!(
        s.split_whitespace().next(),
        Some("7" | "271" | "232" | "281")
    )
}

/// Block until the profiler `pid` is sampling: it mapped its rings and waits in its read
/// loop. Rings are mapped before the events are enabled (and before the processes' maps
/// are read, and a BPF program loaded): only the read loop's poll comes after all that, for
/// psample as for perf. A launched command is sampled from its exec on.
pub fn wait_until_sampling(pid: u32) {
    wait_until(&format!("process {pid} to sample"), || {
        has_perf_ring(pid) && in_poll(pid)
    });
}

/// Block until `pid` has used `secs` more CPU seconds (all threads) than now.
pub fn wait_for_cpu(pid: u32, secs: f64) {
    let from = cpu_seconds(pid);
    wait_until(&format!("{secs} CPU-s of process {pid}"), || {
        cpu_seconds(pid) >= from + secs
    });
}

pub fn sigint(pid: u32) {
    // SAFETY: sending a signal to a process the test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
}

/// SIGKILLs a process when dropped, unless defused: a test that fails midway leaves nothing
/// running (a profiler of `-a` or `--comm` would otherwise run on forever).
pub struct KillGuard(pub Option<u32>);

impl KillGuard {
    pub fn defuse(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) of a process the test started and has not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A profiler run stopped by the test once its target had used a given amount of CPU.
pub struct Sampled {
    pub status: i32,
    pub stderr: String,
    /// CPU seconds `target` used between sampling start and the stop.
    pub cpu: f64,
}

/// Run `program ARGS` (psample or perf, sampling `target`) until `target` has used `cpu`
/// CPU-seconds while sampled, then stop it with SIGINT as Ctrl-C would. What is sampled then
/// depends on the work done, not on how fast or loaded the machine is.
pub fn profile_until_cpu(program: &str, args: &[String], target: u32, cpu: f64) -> Sampled {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let mut guard = KillGuard(Some(child.id()));
    wait_until_sampling(child.id());
    let c0 = cpu_seconds(target);
    wait_until(&format!("{cpu} CPU-s of process {target}"), || {
        cpu_seconds(target) >= c0 + cpu
    });
    let c1 = cpu_seconds(target);
    sigint(child.id());
    let o = child.wait_with_output().expect("wait for the profiler");
    guard.defuse();
    Sampled {
        status: o.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        cpu: c1 - c0,
    }
}

/// [`run_psample`], stopped once `target` used `cpu` CPU-seconds while sampled (no `-d`).
pub fn run_psample_until_cpu(args: &[&str], target: u32, cpu: f64) -> (Output, f64) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.folded");
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    full.push("-o".into());
    full.push(out.display().to_string());
    let s = profile_until_cpu(psample(), &full, target, cpu);
    let folded = std::fs::read_to_string(&out).unwrap_or_default();
    let o = Output {
        status: s.status,
        stderr: s.stderr,
        folded,
    };
    (o, s.cpu)
}

/// [`run_psample`] with extra environment variables (for the launched command, e.g.
/// `WL_CPU_SECONDS`, which makes a workload stop after that much CPU).
pub fn run_psample_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_psample_with(args, |c| {
        c.envs(env.iter().copied());
    })
}

/// Names in a directory, sorted: tests check what was (and was not) left behind.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub struct Output {
    pub status: i32,
    pub stderr: String,
    pub folded: String,
}

/// Run psample with `args`, writing folded output to a temp file.
pub fn run_psample(args: &[&str]) -> Output {
    run_psample_with(args, |_| {})
}

fn run_psample_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.folded");
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    // Insert -o before a trailing `-- CMD`.
    let pos = full.iter().position(|a| a == "--").unwrap_or(full.len());
    full.insert(pos, out.display().to_string());
    full.insert(pos, "-o".into());
    let mut cmd = Command::new(psample());
    cmd.args(&full);
    adjust(&mut cmd);
    let o = cmd.output().expect("run psample");
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
    perf_script_folded(&data)
}

/// `perf record ARGS -p target` stopped once `target` used `cpu` CPU-seconds while sampled
/// (see [`profile_until_cpu`]): the folded stacks and the CPU seconds sampled.
pub fn perf_folded_until_cpu(
    record_args: &[&str],
    target: u32,
    cpu: f64,
) -> (BTreeMap<String, u64>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("perf.data");
    let mut args: Vec<String> = vec!["record".into(), "-o".into(), data.display().to_string()];
    args.extend(record_args.iter().map(|s| s.to_string()));
    args.extend(["-p".to_string(), target.to_string()]);
    let s = profile_until_cpu("perf", &args, target, cpu);
    // After SIGINT perf writes its data, then exits 0 or 130 or re-raises SIGINT, depending
    // on its version: what counts is that it wrote the data.
    assert!(
        s.stderr.contains("Captured and wrote"),
        "perf record failed (status {}): {}",
        s.status,
        s.stderr
    );
    (perf_script_folded(&data), s.cpu)
}

fn perf_script_folded(data: &Path) -> BTreeMap<String, u64> {
    let o = Command::new("perf")
        .args(["script", "-F", "comm,ip,sym", "-i"])
        .arg(data)
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

/// A cgroup v2 group made for one test (`psample-test-PID-N.scope`, in the unified
/// hierarchy whether it is mounted at /sys/fs/cgroup or, hybrid, at
/// /sys/fs/cgroup/unified). Dropping it kills what is left in it and removes it.
pub struct TestCgroup {
    pub path: PathBuf,
    /// The group's path as /proc/PID/cgroup shows it on the `0::` line.
    pub name: String,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
            .expect("a cgroup v2 (unified) hierarchy");
        Self::new_in(root)
    }

    /// A group in the hierarchy mounted at `root` (a cgroup v1 one too).
    pub fn new_in(root: &Path) -> TestCgroup {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("psample-test-{}-{n}.scope", std::process::id());
        let path = root.join(&name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestCgroup {
            path,
            name: format!("/{name}"),
        }
    }

    /// Move `pid` into the group.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..500 {
            let procs = self.procs();
            if procs.is_empty() {
                break;
            }
            for p in procs {
                // SAFETY: kill has no memory preconditions; these are the test's processes.
                unsafe { libc::kill(p as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A test certificate authority and a server certificate for 127.0.0.1 it signed (EC
/// P-256, valid one day), made with the openssl tool in `dir`.
pub struct TestTls {
    pub ca_pem: PathBuf,
    pub leaf_pem: PathBuf,
    pub leaf_key: PathBuf,
}

impl TestTls {
    pub fn new(dir: &Path) -> TestTls {
        std::fs::create_dir_all(dir).unwrap();
        let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
        let openssl = |args: &[&str]| {
            let o = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
        let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=psample test CA"];
        ca.extend(ec);
        ca.extend(["-keyout", &ca_key, "-out", &ca_pem]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca.extend(["-addext", "keyUsage=critical,keyCertSign"]);
        openssl(&ca);
        let (leaf_key, leaf_csr, leaf_pem, ext) =
            (p("leaf.key"), p("leaf.csr"), p("leaf.pem"), p("ext"));
        let mut csr = vec![
            "req",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &leaf_key,
            "-out",
            &leaf_csr,
        ];
        csr.extend(ec);
        openssl(&csr);
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &leaf_csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &leaf_pem,
            "-extfile",
            &ext,
        ]);
        TestTls {
            ca_pem: ca_pem.into(),
            leaf_pem: leaf_pem.into(),
            leaf_key: leaf_key.into(),
        }
    }
}

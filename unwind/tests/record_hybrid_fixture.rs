//! Regenerates `tests/fixtures/offmix/` and `tests/fixtures/libcsplit/` (run explicitly:
//! `cargo test -p unwind --test record_hybrid_fixture -- --ignored --test-threads 1`).
//! Ignored by default because it rewrites committed files; the fixtures are checked by
//! `hybrid_fixture.rs`.
//!
//! Each sample is what a perf event with PERF_SAMPLE_CALLCHAIN (user part, frame pointers
//! walked by the kernel) + REGS_USER + STACK_USER (16 KiB) delivers (`common::perf`),
//! recorded from the
//! bundled workloads built with frame pointers over the host's libc (without them):
//! `sleep_pipe_libc` at sched_switch (off-CPU) and `libc_split` at cpu-clock (on-CPU).

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::perf::{self, Scope};
use perfring::attr::EventKind;
use unwind::fixture::{encode_samples, FixtureSample};
use unwind::Processes;

fn workloads() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workloads/build.sh");
    let ok = Command::new("bash")
        .arg(script)
        .arg(dir.path())
        .stdout(Stdio::null())
        .status()
        .expect("bash");
    assert!(ok.success(), "building the workloads failed");
    dir
}

/// A running workload, killed when dropped.
struct Workload(Child, u32);

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(prog: &Path, args: &[&str]) -> Workload {
    let mut child = Command::new(prog)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn workload");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    out.read_line(&mut line).expect("ready line");
    let pid = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .expect("pid= line");
    // Keep reading so the workload never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Workload(child, pid)
}

fn record(kind: EventKind, period: Option<u64>, tid: u32, count: usize) -> Vec<FixtureSample> {
    let limit = Duration::from_secs(60);
    let got = perf::record(kind, period, Scope::Thread(tid), count, limit);
    assert_eq!(got.len(), count, "samples recorded within a minute");
    got.into_iter().map(|(_, s)| s).collect()
}

/// Write maps, module files (the workload and libc, under their basenames) and samples.
fn write_fixture(name: &str, pid: u32, samples: &[FixtureSample]) {
    let out: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::create_dir_all(&out).expect("mkdir");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    for line in Processes::parse_maps(&maps) {
        if !line.exec || !line.path.starts_with('/') {
            continue;
        }
        let file = Path::new(&line.path).file_name().expect("file name");
        if file.to_string_lossy().starts_with("ld-linux") {
            // The dynamic loader has no frames in steady-state samples.
            continue;
        }
        std::fs::copy(&line.path, out.join(file)).expect("copy module");
    }
    std::fs::write(out.join("maps.txt"), &maps).expect("write maps");
    std::fs::write(out.join("samples.bin"), encode_samples(samples)).expect("write samples");
}

#[test]
#[ignore]
fn record_offmix_fixture() {
    let built = workloads();
    let w = start(&built.path().join("sleep_pipe_libc"), &["-s", "0"]);
    // Every switch-out of the parent: ~70 % in nanosleep under sleep_phase, ~30 % in read
    // under wait_phase.
    let samples = record(
        EventKind::Tracepoint(perf::sched_switch_id()),
        Some(1),
        w.1,
        80,
    );
    write_fixture("offmix", w.1, &samples);
}

#[test]
#[ignore]
fn record_libcsplit_fixture() {
    let built = workloads();
    let w = start(&built.path().join("libc_split"), &["-s", "0"]);
    let samples = record(EventKind::CpuClock, None, w.1, 80);
    write_fixture("libcsplit", w.1, &samples);
}

#[test]
#[ignore]
fn record_rbpclobber_fixture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = dir.path().join("rbp_clobber");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/rbp_clobber.c");
    let ok = Command::new("gcc")
        .args([
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
        ])
        .arg(source)
        .arg("-o")
        .arg(&prog)
        .status()
        .expect("gcc");
    assert!(ok.success(), "building rbp_clobber.c failed");
    let w = start(&prog, &[]);
    let samples = record(EventKind::CpuClock, None, w.1, 40);
    write_fixture("rbpclobber", w.1, &samples);
}

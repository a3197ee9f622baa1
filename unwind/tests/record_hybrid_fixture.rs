//! Regenerates `tests/fixtures/offmix/` and `tests/fixtures/libcsplit/` (run explicitly:
//! `cargo test -p unwind --test record_hybrid_fixture -- --ignored --test-threads 1`).
//! Ignored by default because it rewrites committed files; the fixtures are checked by
//! `hybrid_fixture.rs`.
//!
//! Each sample is what a perf event with PERF_SAMPLE_CALLCHAIN (user part, frame pointers
//! walked by the kernel) + REGS_USER + STACK_USER (16 KiB) delivers, recorded from the
//! bundled workloads built with frame pointers over the host's libc (without them):
//! `sleep_pipe_libc` at sched_switch (off-CPU) and `libc_split` at cpu-clock (on-CPU).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use perfring::attr::{flag, sample, AttrBuilder, EventKind};
use perfring::event::Session;
use perfring::record::{parse_record, CallchainContext, Record};
use perfring::sys::{Kernel, LinuxKernel};
use unwind::arch::x86_64::{PERF_REG_BP, PERF_REG_IP, PERF_REG_SP, SAMPLE_REGS_USER};
use unwind::fixture::{encode_samples, FixtureSample};
use unwind::{Processes, UserRegs};

const STACK_COPY: u32 = 16384;

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

/// `count` samples of `kind` on thread `tid`, each with the kernel's user callchain, user
/// registers and STACK_COPY bytes of user stack.
fn record(kind: EventKind, period: Option<u64>, tid: u32, count: usize) -> Vec<FixtureSample> {
    let kernel: Arc<dyn Kernel> = Arc::new(LinuxKernel);
    let cpus = kernel.online_cpus().expect("online cpus");
    let mut session = Session::new(kernel, 256);
    let attr = AttrBuilder::new(kind)
        .sample_type(
            sample::TID | sample::TIME | sample::CALLCHAIN | sample::REGS_USER | sample::STACK_USER,
        )
        .sample_regs_user(SAMPLE_REGS_USER)
        .sample_stack_user(STACK_COPY)
        .flag(flag::EXCLUDE_CALLCHAIN_KERNEL, true)
        .disabled(true)
        .sample_id_all(true);
    let attr = match period {
        Some(n) => attr.period(n),
        None => attr.frequency(499),
    }
    .build();
    let spec = session.add_spec("fixture", attr);
    for cpu in cpus {
        session
            .open(spec, tid as i32, cpu)
            .expect("perf_event_open");
    }
    let fmt = session.sample_format().expect("format");
    session.enable().expect("enable");
    let mut samples = Vec::new();
    while samples.len() < count {
        session.wait(100).expect("poll");
        session.drain(|_, bytes| {
            let Ok(Record::Sample(s)) = parse_record(bytes, &fmt) else {
                return;
            };
            let (Some(regs), Some(stack), Some(cc)) = (s.regs_user, s.stack_user, s.callchain)
            else {
                return;
            };
            let get = |i: usize| regs.get(i as u32);
            let (Some(ip), Some(sp), Some(bp)) =
                (get(PERF_REG_IP), get(PERF_REG_SP), get(PERF_REG_BP))
            else {
                return;
            };
            let chain: Vec<u64> = cc
                .frames()
                .filter(|(ctx, _)| *ctx == Some(CallchainContext::User))
                .map(|(_, v)| v)
                .collect();
            samples.push(FixtureSample {
                tid: s.tid.unwrap_or(tid),
                regs: UserRegs { ip, sp, bp },
                stack: stack.to_vec(),
                chain,
            });
        });
    }
    session.disable();
    samples.truncate(count);
    samples
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

fn sched_switch_id() -> u64 {
    let path = "/sys/kernel/tracing/events/sched/sched_switch/id";
    std::fs::read_to_string(path)
        .expect("tracefs mounted at /sys/kernel/tracing")
        .trim()
        .parse()
        .expect("tracepoint id")
}

#[test]
#[ignore]
fn record_offmix_fixture() {
    let built = workloads();
    let w = start(&built.path().join("sleep_pipe_libc"), &["-s", "0"]);
    // Every switch-out of the parent: ~70 % in nanosleep under sleep_phase, ~30 % in read
    // under wait_phase.
    let samples = record(EventKind::Tracepoint(sched_switch_id()), Some(1), w.1, 80);
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

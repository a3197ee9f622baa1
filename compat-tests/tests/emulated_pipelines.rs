//! The whole `psample record`, `psample offcpu` and `psample wall` pipelines against every
//! emulated kernel.
//!
//! The workload is a real process (so /proc, maps and symbols are real); the emulated
//! kernel produces that kernel version's records for a scripted timeline whose samples point
//! into the workload's functions. Every profile must give byte-identical folded output, and
//! that output must be exactly what the script implies.

use std::path::Path;
use std::sync::Arc;

use collect::offcpu::{OffCpuOptions, StateFilter};
use collect::oncpu::{bpf::BpfMode, OnCpuOptions};
use collect::session::{Quiet, SessionOptions};
use collect::stack::StackMode;
use collect::target::{Target, TargetSpec};
use collect::wall::WallOptions;
use compat_tests::profile::{self, KernelProfile};
use compat_tests::workload::Workload;
use compat_tests::{BlockState, BpfPolicy, EmulatedKernel, Script};
use perfring::attr::{event_type, flag};
use perfring::sys::Errno;

const MS: u64 = 1_000_000;

/// Which pipeline to run, through the library API as `psample` would.
enum Run {
    Record {
        bpf: BpfMode,
        mmap_pages: Option<usize>,
    },
    Offcpu {
        wakers: bool,
    },
    Wall,
}

/// The options `psample -p PID -d 0.4 -o FILE` gives a session.
fn session(pid: u32, out: &Path, mmap_pages: Option<usize>) -> SessionOptions {
    SessionOptions {
        target: TargetSpec::Fixed(Target::Pids(vec![pid])),
        continuous: None,
        duration: Some(std::time::Duration::from_millis(400)),
        output: Some(out.to_path_buf()),
        format: None,
        verbose: false,
        mmap_pages,
        stack: StackMode::Fp,
        keep_root: false,
        symbols: symbolize::SymbolizeOptions::default(),
        labels: Vec::new(),
    }
}

/// Runs `run` for `pid` against `kernel` and returns the folded output.
fn run_psample(kernel: Arc<EmulatedKernel>, pid: u32, run: Run) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.folded");
    let name = kernel.profile().name;
    let result = match run {
        Run::Record { bpf, mmap_pages } => {
            let opts = OnCpuOptions {
                session: session(pid, &out, mmap_pages),
                freq: 99,
                event: "cpu-clock".into(),
                bpf,
            };
            collect::oncpu::run(&opts, kernel.clone(), &mut Quiet)
        }
        Run::Offcpu { wakers } => {
            let opts = OffCpuOptions {
                session: session(pid, &out, None),
                min_us: 1,
                max_us: None,
                state: StateFilter::Blocked,
                wakers,
                bpf: collect::offcpu::bpf::BpfMode::Never,
            };
            collect::offcpu::run(&opts, kernel.clone(), &mut Quiet)
        }
        Run::Wall => {
            let opts = WallOptions {
                session: session(pid, &out, None),
                freq: 100,
                min_us: 0,
                max_us: None,
                states: true,
                wakers: false,
            };
            collect::wall::run(&opts, kernel.clone(), &mut Quiet)
        }
    };
    result.unwrap_or_else(|e| panic!("{name}: psample failed: {e}"));
    assert!(
        kernel.script_done(),
        "{name}: the run ended before the script did"
    );
    read(&out)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn record_run(bpf: BpfMode) -> Run {
    Run::Record {
        bpf,
        mmap_pages: None,
    }
}

fn on_cpu_script(w: &Workload) -> Script {
    let main = w.main_task();
    let worker = w.worker_task();
    let a = w
        .stack(&["emu_leaf_a", "emu_work", "emu_run", "main"])
        .unwrap();
    let b = w
        .stack(&["emu_leaf_b", "emu_work", "emu_run", "main"])
        .unwrap();
    let spin = w.stack(&["emu_worker_spin", "emu_worker_main"]).unwrap();
    let mut s = Script::new();
    // The text mapping again (as after an mprotect split): MMAP or MMAP2 by kernel.
    s.push(
        20 * MS,
        0,
        compat_tests::Action::Mmap {
            task: main.clone(),
            map: w.text_mapping(),
        },
    );
    // Samples on both CPUs, interleaved in time, so rings are merged by timestamp.
    s.on_cpu(&main, &a, 0, 25 * MS, MS, 30);
    s.on_cpu(&main, &b, 1, 25 * MS + MS / 2, 2 * MS, 15);
    s.on_cpu(&worker, &spin, 1, 26 * MS, MS, 20);
    s
}

const RECORD_EXPECTED: &str = "\
emu_worker;emu_worker_main;emu_worker_spin 20
emu_workload;main;emu_run;emu_work;emu_leaf_a 30
emu_workload;main;emu_run;emu_work;emu_leaf_b 15
";

/// Blocked 7 ms in emu_sleep_phase and 3 ms in emu_wait_phase, ten times each (woken by
/// the worker), the worker blocked in D twice and preempted three times (not blocked time).
fn off_cpu_script(w: &Workload) -> Script {
    let main = w.main_task();
    let worker = w.worker_task();
    let sleep = w.stack(&["emu_sleep_phase", "main"]).unwrap();
    let wait = w.stack(&["emu_wait_phase", "main"]).unwrap();
    let waker = w.stack(&["emu_wake_peer", "emu_worker_main"]).unwrap();
    let spin = w.stack(&["emu_worker_spin", "emu_worker_main"]).unwrap();
    let run = w.stack(&["emu_run", "main"]).unwrap();
    let mut s = Script::new();
    for i in 0..10 {
        let t = 30 * MS + i * 11 * MS;
        s.block(
            &main,
            BlockState::Sleeping,
            &sleep,
            0,
            t,
            7 * MS,
            (&worker, &waker, 1),
        );
        s.block(
            &main,
            BlockState::Sleeping,
            &wait,
            0,
            t + 7 * MS + MS / 2,
            3 * MS,
            (&worker, &waker, 1),
        );
    }
    for i in 0..2 {
        let t = 32 * MS + i * 40 * MS;
        s.block(
            &worker,
            BlockState::DiskWait,
            &spin,
            1,
            t,
            2 * MS,
            (&main, &run, 0),
        );
    }
    for i in 0..3 {
        let t = 100 * MS + i * 10 * MS;
        s.block(
            &worker,
            BlockState::Preempted,
            &spin,
            1,
            t,
            MS,
            (&main, &run, 0),
        );
    }
    s
}

/// Each interval ends at the switch-in, one microsecond after the wakeup.
const OFFCPU_EXPECTED: &str = "\
emu_worker;emu_worker_main;emu_worker_spin 4002
emu_workload;main;emu_sleep_phase 70010
emu_workload;main;emu_wait_phase 30010
";

fn kernel_for(
    p: KernelProfile,
    w: &Workload,
    script: fn(&Workload) -> Script,
) -> Arc<EmulatedKernel> {
    Arc::new(EmulatedKernel::new(p, script(w)).expect("profile"))
}

fn record(p: KernelProfile) {
    let w = Workload::start().expect("workload");
    let k = kernel_for(p, &w, on_cpu_script);
    // The emulator cannot run BPF programs: the ring-buffer path is what is compared here
    // (BPF fallback is tested in `record_bpf_auto_falls_back`).
    let folded = run_psample(k.clone(), w.pid, record_run(BpfMode::Never));
    assert_eq!(folded, RECORD_EXPECTED, "{}", k.profile().name);
    let d = k.delivery();
    let name = k.profile().name;
    assert_eq!((d.samples, d.lost), (65, 0), "{name}");
    // One MMAP-family record per ring that saw the step: MMAP2 only where mmap2 exists.
    let mmap2 = k.profile().knows_flag(flag::MMAP2);
    for (a, _, _) in k.open_events() {
        assert_eq!(a.has(flag::MMAP2), mmap2, "{name}");
        assert!(a.has(flag::MMAP), "{name}");
    }
}

/// `--bpf auto` where the kernel refuses PERF_EVENT_IOC_SET_BPF (no SET_BPF before 4.1, or
/// perf_event programs not permitted, as on RHEL 7's tracing-only eBPF): the program is
/// loaded on the host but the attach is refused, and auto falls back to the ring buffer with
/// the same profile as `--bpf never`.
fn record_bpf_auto_falls_back(p: KernelProfile) {
    let name = p.name;
    let w = Workload::start().expect("workload");
    let k = kernel_for(p, &w, on_cpu_script);
    let errno = if k.profile().knows_flag(flag::CONTEXT_SWITCH) {
        Errno::EINVAL
    } else {
        Errno::ENOTTY
    };
    k.set_bpf_policy(BpfPolicy::Refuse(errno));
    let folded = run_psample(k.clone(), w.pid, record_run(BpfMode::Auto));
    assert_eq!(folded, RECORD_EXPECTED, "{name}");
    let attaches: Vec<_> = k
        .ioctls()
        .into_iter()
        .filter(|i| i.name == "SET_BPF")
        .collect();
    assert!(
        attaches.len() <= 1,
        "{name}: auto must stop at the first refused attach, tried {}",
        attaches.len()
    );
}

fn offcpu(p: KernelProfile) {
    let name = p.name;
    let switch_records = p.knows_flag(flag::CONTEXT_SWITCH);
    let w = Workload::start().expect("workload");
    let k = kernel_for(p, &w, off_cpu_script);
    let folded = run_psample(k.clone(), w.pid, Run::Offcpu { wakers: false });
    assert_eq!(folded, OFFCPU_EXPECTED, "{name}");
    // The same answer by different means: context-switch records from 4.3 (and RHEL 7.9),
    // CPU-wide sched_switch filtered in the kernel before.
    let switch_id = k.sched_events().switch_id();
    let events = k.open_events();
    let per_task = events
        .iter()
        .filter(|(a, pid, _)| a.config == switch_id && *pid > 0)
        .collect::<Vec<_>>();
    let cpu_wide: Vec<i32> = events
        .iter()
        .filter(|(a, pid, _)| a.type_ == event_type::TRACEPOINT && *pid == -1)
        .map(|(_, _, cpu)| *cpu)
        .collect();
    assert_eq!(per_task.len(), 4, "{name}: two threads on two CPUs");
    assert!(
        per_task
            .iter()
            .all(|(a, _, _)| a.has(flag::CONTEXT_SWITCH) == switch_records),
        "{name}"
    );
    if switch_records {
        assert!(cpu_wide.is_empty(), "{name}");
    } else {
        assert_eq!(
            cpu_wide,
            vec![0, 1],
            "{name}: CPU-wide sched_switch fallback"
        );
        let filters = k.ioctls().into_iter().filter(|i| i.name == "SET_FILTER");
        assert!(filters.map(|i| i.result).all(|r| r == Ok(0)), "{name}");
    }
}

fn offcpu_wakers(p: KernelProfile) -> String {
    let w = Workload::start().expect("workload");
    let k = kernel_for(p, &w, off_cpu_script);
    run_psample(k, w.pid, Run::Offcpu { wakers: true })
}

/// The waker's stack follows `--`, root-last, and the waker's comm ends the line.
const OFFCPU_WAKERS_EXPECTED: &str = "\
emu_worker;emu_worker_main;emu_worker_spin;--;emu_run_[w];main_[w];emu_workload 4002
emu_workload;main;emu_sleep_phase;--;emu_wake_peer_[w];emu_worker_main_[w];emu_worker 70010
emu_workload;main;emu_wait_phase;--;emu_wake_peer_[w];emu_worker_main_[w];emu_worker 30010
";

/// `off_cpu_script` with on-CPU samples of both threads while neither is off CPU.
fn wall_script(w: &Workload) -> Script {
    let mut s = off_cpu_script(w);
    let a = w
        .stack(&["emu_leaf_a", "emu_work", "emu_run", "main"])
        .unwrap();
    let spin = w.stack(&["emu_worker_spin", "emu_worker_main"]).unwrap();
    s.on_cpu(&w.main_task(), &a, 0, 20 * MS, MS, 4);
    s.on_cpu(&w.worker_task(), &spin, 1, 20 * MS + MS / 2, MS, 3);
    s.on_cpu(&w.worker_task(), &spin, 1, 140 * MS, MS, 2);
    s
}

/// `wall` at 100 Hz (each on-CPU sample 10 ms of CPU time), with `--state`: blocked time
/// until the wakeup, runnable from there (one microsecond) or from a preemption (the
/// worker's three, 1 ms each) to the switch-in. The same on every kernel.
const WALL_EXPECTED: &str = "\
emu_worker;emu_worker_main;emu_worker_spin;[off-cpu:D] 4000000
emu_worker;emu_worker_main;emu_worker_spin;[on-cpu] 50000000
emu_worker;emu_worker_main;emu_worker_spin;[runnable] 3005000
emu_workload;main;emu_run;emu_work;emu_leaf_a;[on-cpu] 40000000
emu_workload;main;emu_sleep_phase;[off-cpu:S] 70000000
emu_workload;main;emu_sleep_phase;[runnable] 10000
emu_workload;main;emu_wait_phase;[off-cpu:S] 30000000
emu_workload;main;emu_wait_phase;[runnable] 10000
";

fn wall(p: KernelProfile) {
    let name = p.name;
    let w = Workload::start().expect("workload");
    let k = kernel_for(p, &w, wall_script);
    let folded = run_psample(k.clone(), w.pid, Run::Wall);
    assert_eq!(folded, WALL_EXPECTED, "{name}");
    // One layout for every event: cpu-clock carries RAW like the tracepoints it shares
    // rings with.
    let events = k.open_events();
    let clocks: Vec<_> = events
        .iter()
        .filter(|(a, _, _)| a.type_ == event_type::SOFTWARE)
        .collect();
    assert_eq!(
        clocks.len(),
        4,
        "{name}: cpu-clock on two threads, two CPUs"
    );
    let st = events[0].0.sample_type;
    assert!(events.iter().all(|(a, _, _)| a.sample_type == st), "{name}");
}

macro_rules! per_profile {
    ($($module:ident => $profile:expr),* $(,)?) => {$(
        mod $module {
            use super::*;

            #[test]
            fn record_gives_the_scripted_profile() {
                record($profile);
            }

            #[test]
            fn record_bpf_auto_falls_back_to_the_ring() {
                record_bpf_auto_falls_back($profile);
            }

            #[test]
            fn offcpu_gives_the_scripted_blocked_time() {
                offcpu($profile);
            }

            #[test]
            fn offcpu_with_wakers_names_the_waker() {
                assert_eq!(offcpu_wakers($profile), OFFCPU_WAKERS_EXPECTED);
            }

            #[test]
            fn wall_gives_the_scripted_kinds_of_time() {
                wall($profile);
            }
        }
    )*};
}

per_profile! {
    upstream_3_10 => profile::upstream_3_10(),
    rhel_7_early => profile::rhel_7_early(),
    rhel_7_9 => profile::rhel_7_9(),
    v4_9 => profile::v4_9(),
    v4_19 => profile::v4_19(),
    v5_4 => profile::v5_4(),
    v5_15 => profile::v5_15(),
    v6_x => profile::v6_x(),
}

#[test]
fn every_profile_is_covered() {
    assert_eq!(profile::all().len(), 8);
}

/// A burst far larger than a one-page ring: every kernel reports the loss (PERF_RECORD_LOST
/// before the next record that fits), and record folds exactly the samples that were written.
#[test]
fn record_survives_a_full_ring_on_every_kernel() {
    for p in profile::all() {
        let name = p.name;
        let w = Workload::start().expect("workload");
        let main = w.main_task();
        let a = w
            .stack(&["emu_leaf_a", "emu_work", "emu_run", "main"])
            .unwrap();
        let mut s = Script::new();
        s.on_cpu(&main, &a, 0, 20 * MS, 10, 3_000);
        // After the reader has caught up: these fit, and carry the LOST record in front.
        s.on_cpu(&main, &a, 0, 250 * MS, MS, 5);
        let k = Arc::new(EmulatedKernel::new(p, s).unwrap());
        let folded = run_psample(
            k.clone(),
            w.pid,
            Run::Record {
                bpf: BpfMode::Never,
                mmap_pages: Some(1),
            },
        );
        let d = k.delivery();
        assert!(d.lost > 0, "{name}: nothing was lost");
        assert_eq!(d.samples + d.lost, 3_005, "{name}");
        assert_eq!(
            folded,
            format!(
                "emu_workload;main;emu_run;emu_work;emu_leaf_a {}\n",
                d.samples
            ),
            "{name}"
        );
    }
}

/// `record -a`: samples of the idle task (pid 0, whatever its per-CPU comm `swapper/N`) fold
/// under `swapper`, as perf names it, next to a busy task's, on every kernel.
#[test]
fn record_all_names_the_idle_task_swapper_on_every_kernel() {
    for p in profile::all() {
        let name = p.name;
        let w = Workload::start().expect("workload");
        let main = w.main_task();
        let a = w
            .stack(&["emu_leaf_a", "emu_work", "emu_run", "main"])
            .unwrap();
        let mut s = Script::new();
        s.on_cpu(
            &compat_tests::Task::idle(0),
            &Default::default(),
            0,
            20 * MS,
            MS,
            12,
        );
        s.on_cpu(
            &compat_tests::Task::idle(1),
            &Default::default(),
            1,
            20 * MS,
            MS,
            5,
        );
        s.on_cpu(&main, &a, 1, 40 * MS, MS, 7);
        let k = Arc::new(EmulatedKernel::new(p, s).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("all.folded");
        // `psample record -a -d 0.4 --bpf never -o FILE`.
        let opts = OnCpuOptions {
            session: SessionOptions {
                target: TargetSpec::Fixed(Target::AllCpus),
                ..session(0, &out, None)
            },
            freq: 99,
            event: "cpu-clock".into(),
            bpf: BpfMode::Never,
        };
        collect::oncpu::run(&opts, k.clone(), &mut Quiet)
            .unwrap_or_else(|e| panic!("{name}: record -a failed: {e}"));
        assert!(
            k.script_done(),
            "{name}: the run ended before the script did"
        );
        let folded = read(&out);
        let idle: u64 = folded
            .lines()
            .filter(|l| l.starts_with("swapper ") || l.starts_with("swapper;"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum();
        assert_eq!(idle, 17, "{name}:\n{folded}");
        assert!(
            folded.contains("emu_workload;main;emu_run;emu_work;emu_leaf_a 7"),
            "{name}:\n{folded}"
        );
        assert!(!folded.contains("[pid"), "{name}:\n{folded}");
    }
}

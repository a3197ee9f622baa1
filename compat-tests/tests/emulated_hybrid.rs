//! The default call graph (`auto`: the kernel's frame-pointer chain plus user registers and
//! a small stack copy, spliced by `unwind::Unwinder::unwind_hybrid`) against every emulated
//! kernel, 3.10 and RHEL 7 included (REGS_USER, STACK_USER and exclude_callchain_user exist
//! since 3.7).
//!
//! The scripted samples carry a real stack: the workload's main thread blocked in libc's
//! `read` under `emu_wait_stdin`, its registers, stack bytes and frame-pointer chain taken
//! from the live process (libc is built without frame pointers, so that chain lacks
//! `emu_wait_stdin`). Each kernel writes them in its own record layout; every profile must
//! give the same folded output, with the caller restored, where `fp` loses it.

use std::path::Path;
use std::sync::Arc;

use collect::offcpu::{OffCpuOptions, StateFilter};
use collect::oncpu::{bpf::BpfMode, OnCpuOptions};
use collect::session::{Observer, SessionOptions, Summary};
use collect::stack::StackMode;
use collect::target::{Target, TargetSpec};
use compat_tests::profile::{self, KernelProfile};
use compat_tests::workload::{blocked_main_stack, Workload};
use compat_tests::{BlockState, EmulatedKernel, Script, Stack};
use perfring::attr::{flag, sample};

const MS: u64 = 1_000_000;

fn session(pid: u32, out: &Path, stack: StackMode) -> SessionOptions {
    SessionOptions {
        target: TargetSpec::Fixed(Target::Pids(vec![pid])),
        continuous: None,
        duration: Some(std::time::Duration::from_millis(400)),
        output: Some(out.to_path_buf()),
        format: None,
        verbose: false,
        mmap_pages: None,
        stack,
        keep_root: false,
        symbols: symbolize::SymbolizeOptions::default(),
        labels: Vec::new(),
    }
}

/// The main thread blocked ten times 5 ms with the captured stack (woken by the worker),
/// and sampled on-CPU 20 times with it.
fn script(w: &Workload, blocked: &Stack) -> Script {
    let (main, worker) = (w.main_task(), w.worker_task());
    let waker = w.stack(&["emu_wake_peer", "emu_worker_main"]).unwrap();
    let mut s = Script::new();
    for i in 0..10 {
        let t = 30 * MS + i * 7 * MS;
        s.block(
            &main,
            BlockState::Sleeping,
            blocked,
            0,
            t,
            5 * MS,
            (&worker, &waker, 1),
        );
    }
    s.on_cpu(&main, blocked, 1, 31 * MS, MS, 20);
    s
}

/// The rendered summaries of the sessions run.
#[derive(Default)]
struct Summaries(Vec<String>);

impl Observer for Summaries {
    fn summary(&mut self, s: &Summary) {
        self.0.push(s.render());
    }
}

/// Folded output of offcpu and record under `p` in `mode` (the events each opened checked).
fn run(p: KernelProfile, mode: StackMode) -> (String, String) {
    let (offcpu, record, _) = run_summarized(p, mode);
    (offcpu, record)
}

/// [`run`], with both sessions' summaries.
fn run_summarized(p: KernelProfile, mode: StackMode) -> (String, String, Summaries) {
    let mut summaries = Summaries::default();
    let w = Workload::start().expect("workload");
    let blocked = blocked_main_stack(w.pid, 16384).expect("the blocked stack");
    let name = p.name;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.folded");
    let k = Arc::new(EmulatedKernel::new(p.clone(), script(&w, &blocked)).expect("profile"));
    let opts = OffCpuOptions {
        session: session(w.pid, &out, mode),
        min_us: 1,
        max_us: None,
        state: StateFilter::Blocked,
        wakers: false,
        bpf: BpfMode::Never,
    };
    collect::offcpu::run(&opts, k.clone(), &mut summaries)
        .unwrap_or_else(|e| panic!("{name}: offcpu failed: {e}"));
    assert!(k.script_done(), "{name}");
    check_attrs(&k, mode);
    let offcpu = std::fs::read_to_string(&out).unwrap();

    let k = Arc::new(EmulatedKernel::new(p, script(&w, &blocked)).expect("profile"));
    let opts = OnCpuOptions {
        session: session(w.pid, &out, mode),
        freq: 99,
        event: "cpu-clock".into(),
        bpf: BpfMode::Never,
    };
    collect::oncpu::run(&opts, k.clone(), &mut summaries)
        .unwrap_or_else(|e| panic!("{name}: record failed: {e}"));
    check_attrs(&k, mode);
    (offcpu, std::fs::read_to_string(&out).unwrap(), summaries)
}

/// The kernel was asked for what the mode needs: the user callchain always, registers and
/// the stack copy in auto mode.
fn check_attrs(k: &EmulatedKernel, mode: StackMode) {
    let name = k.profile().name;
    for (a, pid, _) in k.open_events() {
        if pid <= 0 || a.sample_type & sample::CALLCHAIN == 0 {
            continue;
        }
        assert!(!a.has(flag::EXCLUDE_CALLCHAIN_USER), "{name}");
        let copies = a.sample_type & (sample::REGS_USER | sample::STACK_USER) != 0;
        let refused = k.profile().known_sample_type & sample::REGS_USER == 0;
        assert_eq!(copies, mode != StackMode::Fp && !refused, "{name}");
        if let (StackMode::Auto(size), false) = (mode, refused) {
            assert_eq!(a.sample_stack_user, size, "{name}");
        }
    }
}

/// The user part (before the first kernel frame) of the main thread's lines, with their
/// counts. (The worker thread's real blocked interval, seen at attach, is not scripted.)
fn user_parts(folded: &str) -> Vec<(String, u64)> {
    folded
        .lines()
        .filter(|l| l.starts_with("emu_workload;"))
        .map(|l| {
            let (stack, n) = l.rsplit_once(' ').expect("folded line");
            let user: Vec<&str> = stack
                .split(';')
                .take_while(|f| !f.ends_with("_[k]"))
                .collect();
            (user.join(";"), n.parse().expect("count"))
        })
        .collect()
}

fn check(p: KernelProfile) -> (String, String) {
    let name = p.name;
    let (offcpu, record) = run(p.clone(), StackMode::DEFAULT);
    for (what, folded, total) in [("offcpu", &offcpu, 50_010), ("record", &record, 20)] {
        let parts = user_parts(folded);
        let sum: u64 = parts.iter().map(|(_, n)| n).sum();
        assert_eq!(sum, total, "{name} {what}:\n{folded}");
        for (user, _) in &parts {
            assert!(
                user.contains(";main;emu_wait_stdin;"),
                "{name} {what}: the caller of read is missing: {user}"
            );
        }
    }
    // Frame pointers alone lose it, on every kernel.
    let (fp_off, fp_rec) = run(p, StackMode::Fp);
    for folded in [&fp_off, &fp_rec] {
        assert!(!folded.contains("emu_wait_stdin"), "{name}:\n{folded}");
        assert!(folded.contains(";main;"), "{name}:\n{folded}");
    }
    let main_lines = |f: &str| -> Vec<(String, u64)> { user_parts(f) };
    (
        format!("{:?}", main_lines(&offcpu)),
        format!("{:?}", main_lines(&record)),
    )
}

/// 3.10 gives exactly what a current kernel gives.
#[test]
fn hybrid_stacks_on_3_10_are_those_of_6_x() {
    assert_eq!(check(profile::upstream_3_10()), check(profile::v6_x()));
}

macro_rules! per_profile {
    ($($module:ident => $profile:expr),* $(,)?) => {$(
        mod $module {
            use super::*;

            #[test]
            fn auto_restores_the_caller_of_a_libc_leaf() {
                check($profile);
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

/// 3.10 built without perf_regs support (an architecture without it, or a kernel configured
/// without it) refuses REGS_USER and STACK_USER with EINVAL: the ladder drops the copy, says
/// so among the fallbacks, and the default call graph gives the frame-pointer stacks, exactly
/// those of `--call-graph fp` (the caller of libc's read lost, as fp loses it), not nothing.
#[test]
fn a_kernel_refusing_the_stack_copy_falls_back_to_frame_pointers() {
    let mut p = profile::upstream_3_10();
    p.name = "3.10-no-perf-regs";
    p.known_sample_type &= !(sample::REGS_USER | sample::STACK_USER);
    let (offcpu, record, summaries) = run_summarized(p.clone(), StackMode::DEFAULT);
    assert_eq!(summaries.0.len(), 2);
    for s in &summaries.0 {
        let fallbacks = s
            .lines()
            .find(|l| l.trim_start().starts_with("fallbacks"))
            .unwrap_or_else(|| panic!("no fallbacks line:\n{s}"));
        assert!(
            fallbacks.contains("no user regs/stack copy → frame-pointer user stacks"),
            "{s}"
        );
        assert!(s.contains("hybrid") && s.contains("no stack copies"), "{s}");
    }
    let (fp_off, fp_rec) = run(p.clone(), StackMode::Fp);
    assert_eq!(user_parts(&offcpu), user_parts(&fp_off));
    assert_eq!(user_parts(&record), user_parts(&fp_rec));
    let sum: u64 = user_parts(&record).iter().map(|(_, n)| n).sum();
    assert_eq!(sum, 20, "{record}");
    assert!(record.contains(";main;"), "{record}");
    // DWARF mode on the same kernel: the kernel's chain too, rather than empty user stacks.
    let (dw_off, _) = run(p, StackMode::Dwarf(8192));
    assert_eq!(user_parts(&dw_off), user_parts(&fp_off));
}

//! `psample offcpu`: blocked time by stack, and who woke it, from perf_event tracepoints
//! alone (no eBPF, so it works on 3.10 kernels).
//!
//! Mechanism (fallback-first, reported in the summary):
//! - switch-outs with stacks: `sched:sched_switch` opened on the target tasks (with inherit,
//!   one event per task and CPU); it fires in the blocked task's context, so its callchain
//!   (or copied user stack, in DWARF mode) is the blocked stack;
//! - switch-ins: context-switch records (attr.context_switch, 4.3+) on those same events
//!   (SWITCH per task, SWITCH_CPU_WIDE system-wide); where the kernel refuses them (before
//!   4.3), CPU-wide `sched_switch` events whose `next_pid` is a target thread (filtered in
//!   the kernel with PERF_EVENT_IOC_SET_FILTER where it accepts the filter, and always in
//!   userspace), or the thread's own next syscall exit, whichever comes first ([`legacy`]). The
//!   records are preferred even system-wide, where every sched_switch sample carries
//!   next_pid: the tracepoint does not fire for switches away from the idle task on every
//!   CPU, so next_pid alone misses tasks woken on an idle CPU;
//! - wakers (`--wakers`): `sched:sched_wakeup` opened per CPU for every task and filtered
//!   to the target threads (in the kernel where it takes the filter). The tracepoint runs in
//!   the waker's context, so the sample's callchain is the waker's stack; per-task events
//!   would only see wakeups the target performs, not the ones it receives.
//!
//! Sample times use CLOCK_MONOTONIC (use_clockid) so that the start and stop of the window
//! are on the same clock as the events; without it the window is taken from the events.
//!
//! - [`events`]: the tracepoints and how switch-ins and wakeups are seen on this kernel;
//! - [`legacy`]: where switch-ins come from on kernels without context-switch records;
//! - [`filter`]: kernel-side filters passing only the targets' threads;
//! - [`collector`]: records to engine events, threads blocked at the start;
//! - [`delivery`]: wakeups the kernel counted but never wrote as samples;
//! - [`intervals`]: the engine that turns switch-out / switch-in / wakeup / lost / exit
//!   events into blocked intervals, aggregated per stack (and waker stack) — pure logic, no
//!   syscalls, tested on synthetic event streams;
//! - [`render`]: reports as folded lines or pprof;
//! - [`bpf`] and [`in_kernel`] (`--bpf`): the same report from blocked time summed in the
//!   kernel by BPF programs, where the kernel allows it; the ring path otherwise.

use std::sync::Arc;

use perfring::features::{Feature, Support};
use perfring::sys::Kernel;

use crate::continuous::Intervals;
use crate::output::Labels;
use crate::session::{self, DefaultPages, Observer, SessionOptions, Setup, StopCause};
use crate::target::Target;
use crate::Error;

pub mod bpf;
pub mod collector;
pub mod delivery;
pub mod events;
pub mod filter;
pub mod in_kernel;
pub mod intervals;
pub mod legacy;
pub mod render;

pub use collector::{OffCpu, Plan};
pub use intervals::{
    Engine, OffcpuEvent, Options, Report, StackId, StackKey, StateFilter, ThreadTotals, WakerKey,
};
pub use render::OffCpuReport;

/// What `offcpu` takes besides the session options.
#[derive(Debug, Clone)]
pub struct OffCpuOptions {
    /// Targets, output, stack mode, symbolization.
    pub session: SessionOptions,
    /// Intervals shorter than this many microseconds are not counted (`-m`).
    pub min_us: u64,
    /// Intervals longer than this many microseconds are not counted (`-M`).
    pub max_us: Option<u64>,
    /// Which switch-out states open an interval (`--state`).
    pub state: StateFilter,
    /// Attribute each interval to the stack that woke it (`--wakers`).
    pub wakers: bool,
    /// Sum blocked time in the kernel (`--bpf`).
    pub bpf: bpf::BpfMode,
}

/// Ring sizes: every switch-out is a sample.
/// Hybrid samples are ~3 times an fp sample (512 bytes of stack), and a switch-heavy
/// server system-wide writes tens of thousands a second per CPU while the reader competes
/// with it for the CPU: 256 pages lost records on a 2-CPU machine under pgbench, 512 do not.
const PAGES: DefaultPages = DefaultPages {
    fp: 128,
    auto: 512,
    dwarf: 512,
};

fn labels(wakers: bool, extra: &[(String, String)]) -> Labels {
    Labels {
        title: if wakers {
            "psample offcpu (with wakers)".into()
        } else {
            "psample offcpu".into()
        },
        count_name: "us".into(),
        extra: extra.to_vec(),
    }
}

/// `psample offcpu` against any [`Kernel`] (compat-tests pass emulated kernels).
pub fn run(
    args: &OffCpuOptions,
    kernel: Arc<dyn Kernel>,
    observer: &mut dyn Observer,
) -> Result<(), Error> {
    let labels = labels(args.wakers, &args.session.labels);
    session::run_command(
        &args.session,
        "offcpu",
        labels,
        observer,
        |target, iv, obs| run_session(args, target, kernel.clone(), iv, obs),
    )
}

/// offcpu follows tasks by their switch-outs, per task: `--cgroup` profiles the processes
/// in the group when the session starts (and the threads and children they create).
pub(crate) fn cgroup_as_processes(target: Target) -> Result<(Target, Option<String>), Error> {
    let Target::Cgroup(dir) = target else {
        return Ok((target, None));
    };
    let procs = crate::target::cgroup_procs(&dir)
        .map_err(|e| Error::new(format!("--cgroup: reading {}: {e}", dir.display())))?;
    if procs.is_empty() {
        return Err(Error::new(format!(
            "--cgroup {}: no process in the group",
            dir.display()
        )));
    }
    let note = format!(
        "--cgroup {}: offcpu follows the {} processes in the group at start",
        dir.display(),
        procs.len()
    );
    Ok((Target::Pids(procs), Some(note)))
}

/// One session on one target; in continuous mode (`intervals`) one profile per interval.
pub fn run_session(
    args: &OffCpuOptions,
    target: Target,
    kernel: Arc<dyn Kernel>,
    intervals: Option<&mut Intervals>,
    observer: &mut dyn Observer,
) -> Result<StopCause, Error> {
    if let Some(max) = args.max_us {
        if max < args.min_us {
            return Err(Error::new(format!(
                "-M {max} is below -m {}: no interval could match",
                args.min_us
            )));
        }
    }
    let not_used = match bpf::setup(args, &target, kernel.as_ref())? {
        bpf::Decision::Use(loaded) => {
            return bpf::run_session(args, target, kernel, loaded, intervals, observer)
        }
        bpf::Decision::NotUsed(why) => why,
    };
    let (target, cgroup_note) = cgroup_as_processes(target)?;
    let mut s = Setup::new("offcpu", &args.session, target, kernel.clone(), PAGES)?;
    s.session.notes.extend(cgroup_note);
    if args.bpf != bpf::BpfMode::Never {
        s.summary.line("bpf", format!("not used: {not_used}"));
    }
    if args.bpf == bpf::BpfMode::Auto
        && matches!(args.session.stack, crate::stack::StackMode::Auto(_))
    {
        let note = "BPF aggregation → ring buffer (auto stacks need the stack copy)";
        s.session.notes.push(note.into());
    }
    let tp = events::Tracepoints::locate(kernel.as_ref(), args.wakers)?;
    let (switch, wakeup) = events::add_specs(&mut s, &tp, true);
    let cpu_specs: Vec<usize> = wakeup.into_iter().collect();
    let mut a = s.attach(&[switch], &cpu_specs)?;
    let (specs, mechanisms) = events::complete(&mut a, &tp, (switch, wakeup), false)?;
    let support = |f| a.session.ladder.support(f) == Support::Yes;
    let plan = Plan {
        options: Options {
            min_ns: args.min_us.saturating_mul(1000),
            max_ns: args.max_us.map(|m| m.saturating_mul(1000)),
            states: args.state,
            wakers: args.wakers,
            runnable: false,
            // Per-thread keys only where they are written (pprof's pid/tid labels): keyed by
            // name, blocked time stays bounded when threads churn (offcpu -a for hours).
            by_thread: a.format == crate::output::Format::Pprof,
        },
        specs,
        mechanisms,
        clock_monotonic: support(Feature::UseClockid),
        switch_records: support(Feature::ContextSwitch),
        target: a.target.clone(),
        pids: a.pids.clone(),
        labels: labels(args.wakers, &args.session.labels),
    };
    let mut collector = OffCpu::new(plan, &tp);
    a.run(&mut collector, intervals, observer)
}

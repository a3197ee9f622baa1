//! `psample wall`: where a thread's wall time goes — on CPU, blocked, or runnable but waiting
//! for a CPU — in one session and one profile, in nanoseconds.
//!
//! One session opens `record`'s sampling event (`cpu-clock`, per task, every 1/HZ of the
//! task's CPU time) beside `offcpu`'s events (`sched_switch` per task with context-switch
//! records, or the pre-4.3 switch-in sources, and `sched_wakeup` per CPU), on the same
//! targets and in the same record layout, so both share the rings, the tracker and the stack
//! interner. On-CPU samples count as their period; blocked intervals as their duration (the
//! offcpu engine in wall mode, [`crate::offcpu::Options::runnable`]); the time from a
//! preemption, or from a wakeup, to the next switch-in counts as runnable. Every folded
//! line ends in its kind: `[on-cpu]`, `[off-cpu]` (`[off-cpu:S]`, `[off-cpu:D]` … with
//! `--state`) or `[runnable]`.
//!
//! - [`collector`]: on-CPU samples to the profile and the engine, the rest to offcpu's
//!   collector; the per-thread wall-time summary;
//! - [`render`]: the three kinds as folded lines or a pprof profile with three values.

use std::sync::Arc;

use perfring::features::{Feature, Support};
use perfring::sys::Kernel;

use crate::continuous::Intervals;
use crate::offcpu::{events, Options, Plan, StateFilter};
use crate::oncpu::event::clamp_frequency;
use crate::output::Labels;
use crate::session::{self, DefaultPages, Observer, SessionOptions, Setup, StopCause};
use crate::target::Target;
use crate::Error;

pub mod collector;
pub mod render;

pub use collector::Wall;
pub use render::{WallProfile, KIND_OFF, KIND_ON, KIND_RUNNABLE};

/// What `wall` takes besides the session options.
#[derive(Debug, Clone)]
pub struct WallOptions {
    /// Targets, output, stack mode, symbolization.
    pub session: SessionOptions,
    /// On-CPU samples per second of a thread's CPU time (clamped to the kernel's maximum).
    pub freq: u64,
    /// Blocked intervals shorter than this many microseconds are left out (`-m`).
    pub min_us: u64,
    /// Blocked intervals longer than this many microseconds are left out (`-M`).
    pub max_us: Option<u64>,
    /// Off-CPU leaves name the blocked state: `[off-cpu:S]`, `[off-cpu:D]` (`--state`).
    pub states: bool,
    /// Blocked and runnable stacks carry the waker's stack (`--wakers`).
    pub wakers: bool,
}

/// Ring sizes: every switch-out and on-CPU sample carries a stack (hybrid: as offcpu's).
const PAGES: DefaultPages = DefaultPages {
    fp: 128,
    auto: 512,
    dwarf: 512,
};

/// Title (with the legend of the three palettes) and unit of the flame graph.
pub fn labels(wakers: bool) -> Labels {
    let what = if wakers { " (with wakers)" } else { "" };
    Labels {
        title: format!("psample wall{what}: on-CPU (warm), off-CPU (blue), runnable (purple)"),
        count_name: "ns".into(),
        extra: Vec::new(),
    }
}

/// `psample wall` against any [`Kernel`] (compat-tests pass emulated kernels).
pub fn run(
    args: &WallOptions,
    kernel: Arc<dyn Kernel>,
    observer: &mut dyn Observer,
) -> Result<(), Error> {
    session::run_command(
        &args.session,
        "wall",
        labels(args.wakers),
        observer,
        |target, iv, obs| run_session(args, target, kernel.clone(), iv, obs),
    )
}

/// One session on one target; in continuous mode (`intervals`) one profile per interval.
pub fn run_session(
    args: &WallOptions,
    target: Target,
    kernel: Arc<dyn Kernel>,
    intervals: Option<&mut Intervals>,
    observer: &mut dyn Observer,
) -> Result<StopCause, Error> {
    let mode = args.session.stack;
    let (target, cgroup_note) = crate::offcpu::cgroup_as_processes(target)?;
    let mut s = Setup::new("wall", &args.session, target, kernel.clone(), PAGES)?;
    s.session.notes.extend(cgroup_note);
    if let Some(max) = args.max_us.filter(|&m| m < args.min_us) {
        return Err(Error::new(format!(
            "-M {max} is below -m {}: no interval could match",
            args.min_us
        )));
    }
    let hz = clamp_frequency(args.freq, kernel.as_ref(), &mut s.summary.warnings);
    let period_ns = 1_000_000_000 / hz.max(1);
    // Wakeups are always wanted: they end the blocked part of an interval and start its
    // runnable part. Their stacks only with --wakers, which then filters them to the
    // threads there are at the start, as offcpu does (new threads' wakeup latency then
    // counts as blocked time).
    let tp = events::Tracepoints::locate(kernel.as_ref(), true)?;
    let (switch, wakeup) = events::add_specs(&mut s, &tp, args.wakers);
    // Opened after the switch spec on every thread: the ring layout is the tracepoints'.
    let attr = events::cpu_clock_attr(period_ns, mode, s.inherit(), s.is_command());
    let oncpu = s.session.add_spec("cpu-clock", attr);
    let cpu_specs: Vec<usize> = wakeup.into_iter().collect();
    let mut a = s.attach(&[switch, oncpu], &cpu_specs)?;
    let (specs, mechanisms) = events::complete(&mut a, &tp, (switch, wakeup), !args.wakers)?;
    let support = |f| a.session.ladder.support(f) == Support::Yes;
    let plan = Plan {
        options: Options {
            min_ns: args.min_us.saturating_mul(1000),
            max_ns: args.max_us.map(|m| m.saturating_mul(1000)),
            states: StateFilter::Blocked,
            wakers: args.wakers,
            runnable: true,
            by_thread: false,
        },
        specs,
        mechanisms,
        clock_monotonic: support(Feature::UseClockid),
        switch_records: support(Feature::ContextSwitch),
        target: a.target.clone(),
        pids: a.pids.clone(),
        labels: labels(args.wakers),
    };
    let event = format!(
        "cpu-clock every {:.3} ms of CPU time ({hz} Hz), call graph {}",
        period_ns as f64 / 1e6,
        mode.describe()
    );
    let mut collector = Wall::new(plan, &tp, oncpu, period_ns, event, args.states);
    a.run(&mut collector, intervals, observer)
}

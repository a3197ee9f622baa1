//! `psample record`: sampled on-CPU stacks, user + kernel.
//!
//! - [`event`]: the sampling event (`-e`, `-F`) and its attr;
//! - [`bpf`]: in-kernel aggregation of frame-pointer stacks, where the kernel allows it;
//! - [`collector`]: samples counted per stack, and their rendering.

use std::sync::Arc;

use perfring::features::{Feature, Support};
use perfring::sys::Kernel;

use crate::continuous::Intervals;
use crate::output::Labels;
use crate::session::{self, DefaultPages, Observer, SessionOptions, Setup, StopCause};
use crate::stack::StackMode;
use crate::target::Target;
use crate::Error;

pub mod bpf;
pub mod collector;
pub mod event;

use bpf::BpfMode;
pub use collector::{OnCpuProfile, Recorder};

/// What `record` takes besides the session options.
#[derive(Debug, Clone)]
pub struct OnCpuOptions {
    /// Targets, output, stack mode, symbolization.
    pub session: SessionOptions,
    /// Samples per second per CPU or thread (clamped to the kernel's maximum).
    pub freq: u64,
    /// `cpu-clock`, `task-clock`, `cycles` or `tracepoint:SUBSYS:NAME`.
    pub event: String,
    /// In-kernel stack aggregation.
    pub bpf: BpfMode,
}

/// Ring sizes: a DWARF sample carries a copy of the user stack.
/// Hybrid samples are ~3 times an fp sample's size (512 bytes of stack): 4 times the ring.
const PAGES: DefaultPages = DefaultPages {
    fp: 64,
    auto: 256,
    dwarf: 512,
};

fn labels(extra: &[(String, String)]) -> Labels {
    Labels {
        title: "psample record".into(),
        count_name: "samples".into(),
        extra: extra.to_vec(),
    }
}

/// `psample record` against any [`Kernel`] (compat-tests pass emulated ones).
pub fn run(
    args: &OnCpuOptions,
    kernel: Arc<dyn Kernel>,
    observer: &mut dyn Observer,
) -> Result<(), Error> {
    session::run_command(
        &args.session,
        "record",
        labels(&args.session.labels),
        observer,
        |target, iv, obs| run_session(args, target, kernel.clone(), iv, obs),
    )
}

/// One session on one target: attach, sample until stopped, write. In continuous mode
/// (`intervals`), one profile per interval is written instead of one at the end.
pub fn run_session(
    args: &OnCpuOptions,
    target: Target,
    kernel: Arc<dyn Kernel>,
    intervals: Option<&mut Intervals>,
    observer: &mut dyn Observer,
) -> Result<StopCause, Error> {
    let mode = args.session.stack;
    let mut s = Setup::new("record", &args.session, target, kernel.clone(), PAGES)?;
    let hz = event::clamp_frequency(args.freq, kernel.as_ref(), &mut s.summary.warnings);
    if let Some(iv) = intervals.as_deref() {
        iv.set_sample_rate(hz);
    }
    let (kind, event_name) = event::parse_event(&args.event, kernel.as_ref())?;
    let attr = event::sampling_attr(kind, hz, mode, s.inherit(), s.is_command());
    s.session.ladder.allow_user_only = !crate::perms::is_root();
    let spec = s.session.add_spec(&event_name, attr);
    let mut a = s.attach(&[spec], &[])?;
    if a.session.ladder.support(Feature::Hardware) == Support::No && kind.is_hardware() {
        a.summary
            .warnings
            .push("no hardware PMU here: sampling cpu-clock instead of cycles".into());
    }
    let bpf = match bpf::setup(args.bpf, mode, &a.session, spec, args.session.verbose)? {
        bpf::Decision::Use(b) => Some(b),
        bpf::Decision::NotUsed(why) => {
            if args.bpf != BpfMode::Never {
                a.summary.line("bpf", format!("not used: {why}"));
            }
            // `--bpf auto` would aggregate fp stacks in the kernel; the default call graph
            // gives better ones only through the ring: a fallback, said where fallbacks are.
            if args.bpf == BpfMode::Auto && matches!(mode, StackMode::Auto(_)) {
                a.session
                    .notes
                    .push("BPF aggregation → ring buffer (auto stacks need the stack copy)".into());
            }
            None
        }
    };
    let event = format!("{event_name} at {hz} Hz, call graph {}", mode.describe());
    let mut recorder = Recorder::new(
        event,
        1_000_000_000 / hz.max(1),
        bpf,
        labels(&args.session.labels),
    );
    a.run(&mut recorder, intervals, observer)
}

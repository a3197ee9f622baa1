//! One session on one target, shared by every command that samples: setting it up
//! ([`attach`]), the read loop with intervals, stop and final drain, and the summary lines
//! every command reports ([`driver`]), each command supplying a small
//! [`driver::Collector`]; one-shot or continuous runs over restarting targets
//! ([`dispatch`]).

use std::sync::Arc;
use std::time::Duration;

use perfring::event::Session;
use perfring::features::Feature;
use perfring::sys::Kernel;

use crate::output::Format;
use crate::stack::StackMode;

pub mod attach;
pub mod dispatch;
pub mod driver;
pub mod signals;
pub mod stop;
pub mod summary;

pub use attach::{Attached, DefaultPages, Setup};
pub use dispatch::run_command;
pub use driver::{Aggregation, Collector, Finished, Stopped};
pub use stop::Stopper;
pub use summary::Summary;

/// What every profiling session takes besides the command's own options.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// What to profile.
    pub target: crate::target::TargetSpec,
    /// One profile per interval instead of one at the end.
    pub continuous: Option<crate::continuous::ContinuousOptions>,
    /// Stop after this long (`None`: on a signal, or when the targets exit).
    pub duration: Option<Duration>,
    /// Where the profile goes (`None`: stdout). Not used in continuous mode.
    pub output: Option<std::path::PathBuf>,
    /// The output format; `None`: what the output file name says.
    pub format: Option<Format>,
    /// More in the summary: every kernel feature, table sizes, the BPF verifier log.
    pub verbose: bool,
    /// Data pages per CPU ring (`None`: the command's default for the stack mode).
    pub mmap_pages: Option<usize>,
    /// How user stacks are collected.
    pub stack: StackMode,
    /// A command launched under sudo keeps root instead of running as the invoking user.
    pub keep_root: bool,
    /// How frames are named after collection.
    pub symbols: symbolize::SymbolizeOptions,
    /// `--label KEY=VALUE`s for every pprof sample (and the pushed name, see `continuous`).
    pub labels: Vec<(String, String)>,
}

/// What the caller sees of a run while it goes: a progress counter, the summary of each
/// session, and notices (waiting for a target to come back). The command line prints them;
/// tests and other programs may ignore them.
pub trait Observer {
    /// Events collected so far in this session (samples, switch-outs), several times a second.
    fn progress(&mut self, _count: u64) {}
    /// The session stopped reading; the progress display can go.
    fn progress_done(&mut self) {}
    /// A session ended: what it collected, lost and fell back on.
    fn summary(&mut self, _summary: &Summary) {}
    /// Something the user should know while a long run goes on.
    fn notice(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {}

/// Why the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// `-d` elapsed.
    Duration,
    /// SIGINT, SIGTERM or SIGHUP (or an error that ended reading early).
    Signal,
    /// Every target exited.
    TargetsExited,
}

impl StopCause {
    /// As the summary says it.
    pub fn describe(self) -> &'static str {
        match self {
            StopCause::Duration => "duration reached",
            StopCause::Signal => "stopped by signal",
            StopCause::TargetsExited => "targets exited",
        }
    }
}

/// Human-readable list of the fallbacks the ladder took.
pub fn fallbacks(session: &Session) -> Vec<String> {
    let mut v: Vec<String> = session
        .ladder
        .fallbacks()
        .into_iter()
        .map(|f: Feature| format!("no {} → {}", f.name(), f.fallback()))
        .collect();
    v.extend(session.notes.iter().cloned());
    v
}

/// The kernel, shared by everything in a run.
pub fn linux_kernel() -> Arc<dyn Kernel> {
    Arc::new(perfring::sys::LinuxKernel)
}

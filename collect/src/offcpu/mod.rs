//! Off-CPU profiling: blocked time by stack, and who woke it, from perf_event tracepoints
//! alone (no eBPF, so it works on 3.10 kernels).
//!
//! - [`intervals`]: the engine that turns switch-out / switch-in / wakeup / lost / exit
//!   events into blocked intervals, aggregated per stack (and waker stack).
//!
//! Both are pure logic with no syscalls, so they are tested on synthetic event streams.

pub mod command;
pub mod intervals;

pub use command::run;
pub use intervals::{
    Engine, OffcpuEvent, Options, Report, StackId, StackKey, StateFilter, ThreadTotals, WakerKey,
};

/// What `offcpu` takes besides the session options.
#[derive(Debug, Clone)]
pub struct OffCpuOptions {
    /// Targets, output, stack mode, symbolization.
    pub session: crate::session::SessionOptions,
    /// Intervals shorter than this many microseconds are not counted (`-m`).
    pub min_us: u64,
    /// Intervals longer than this many microseconds are not counted (`-M`).
    pub max_us: Option<u64>,
    /// Which switch-out states open an interval (`--state`).
    pub state: StateFilter,
    /// Attribute each interval to the stack that woke it (`--wakers`).
    pub wakers: bool,
}

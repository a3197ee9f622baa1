//! Tracepoints without eBPF: finding the tracing filesystem, reading an event's id and
//! `format` file, and decoding the RAW payloads of the scheduler tracepoints.
//!
//! Field offsets and sizes move between kernel versions (a `common_lock_depth` on 2.6.x,
//! `success` dropped from `sched_wakeup` in 5.14, …), so nothing here assumes a layout:
//! every decoder is built from the format file of the running kernel, and every read of a
//! payload is bounds-checked because the payload comes from the kernel's ring buffer.

mod format;
mod sched;
mod task_state;
mod tracing_fs;

pub use format::{DecodeError, Field, FormatError, TracepointFormat};
pub use sched::{Comm, SchedSwitch, SchedSwitchDecoder, SchedWakeup, SchedWakeupDecoder};
pub use task_state::{StateTable, StateTableSource, TaskState};
pub use tracing_fs::{FileAccess, Tracing, TracingError, TracingKind};

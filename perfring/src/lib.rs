//! # perfring — psample's kernel interface
//!
//! Everything that talks to `perf_event_open(2)` lives here and nowhere else:
//!
//! - [`attr`]: a typed builder for `perf_event_attr` (no raw bit twiddling elsewhere);
//! - [`sys`]: the [`sys::Kernel`] trait (open / ioctl / mmap / read of tracefs and procfs
//!   files) with the real Linux implementation, so tests can substitute an emulated kernel;
//! - [`features`]: the fallback ladder — which attr features this kernel accepts, learned
//!   from errno on refusal, never from the version string;
//! - [`probe`]: asking the kernel feature by feature, for `psample check`;
//! - [`event`]: opening sets of events per thread or per CPU, redirecting many events into
//!   one ring per CPU with `PERF_EVENT_IOC_SET_OUTPUT`; `drain` empties those rings on a
//!   background thread when the reader falls behind;
//! - [`ring`]: the mmap'd ring buffer reader (acquire/release on head/tail, wrapped records);
//! - [`record`]: the zero-copy parser for every record type a sampler meets, and the
//!   callchain convention;
//! - [`order`]: the rings of a session merged into one stream in time order;
//! - [`tracepoint`]: tracefs/debugfs discovery and tracepoint `format` file parsing;
//! - [`bpf`]: the optional in-kernel stack aggregation (bpf(2), a tiny assembler).
//!
//! Data read from the kernel is treated as untrusted: malformed input yields an error
//! value, never a panic or an out-of-bounds read.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod attr;
pub mod bpf;
mod drain;
pub mod event;
pub mod features;
pub mod order;
pub mod probe;
pub mod record;
pub mod ring;
pub mod sys;
pub mod tracepoint;

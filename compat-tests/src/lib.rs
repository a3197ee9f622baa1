//! # compat-tests — psample against emulated and real kernels
//!
//! The emulated kernels implement [`perfring::sys::Kernel`] the way a given kernel version
//! behaves, so the fallback ladder, the ring reader, the record parser and the full `record`
//! and `offcpu` pipelines run against 3.10 … 6.x on one development machine:
//!
//! - [`profile`]: what each version knows (attr size and bits, ioctls, ring header,
//!   tracing filesystem, tracepoint formats), from shared/kernel-compat.md;
//! - [`attr_rules`]: how that kernel judges a `perf_event_open` call;
//! - [`ioctl_rules`]: which perf ioctls it has, and whether it has `bpf(2)`;
//! - [`encode`]: records in the kernel's layouts for the attr an event was opened with;
//! - [`tracefs`]: the emulated tracing filesystem, RAW payloads and ftrace filters;
//! - [`script`]: the scripted workload (samples, side-band, blocking and wakeups);
//! - [`kernel`]: [`kernel::EmulatedKernel`], tying them together behind the Kernel trait;
//! - [`workload`]: a real process to profile, with its functions' runtime addresses, so
//!   scripted samples symbolize for real.
//!
//! [`interpose`] applies the same rules to the real kernel: the real psample binary runs here
//! with its perf calls answered as an old kernel would (seccomp user notification), so its
//! fallbacks meet real events.

pub mod attr_rules;
pub mod encode;
pub mod interpose;
pub mod ioctl_rules;
pub mod kernel;
pub mod profile;
pub mod script;
pub mod tracefs;
pub mod workload;

pub use kernel::{BpfPolicy, Delivery, EmulatedKernel, IoctlAttempt, OpenAttempt};
pub use profile::KernelProfile;
pub use script::{Action, BlockState, Script, Stack, Task};

//! # unwind — process address spaces and user-stack unwinding
//!
//! [`Processes`] tracks every profiled process's mappings (from `/proc/PID/maps` and the
//! kernel's MMAP2/FORK/COMM/EXIT records) in an arena addressed by [`MappingId`].
//! [`Unwinder`] turns a sample's user registers and copied stack bytes into a list of
//! return addresses while recording, using DWARF CFI via framehop and falling back to frame
//! pointers per frame where a module has no CFI. Module unwind data is parsed once per file
//! and shared across processes. [`Unwinder::unwind_hybrid`] (module `hybrid`) combines the
//! kernel's frame-pointer callchain with DWARF CFI over a small stack copy
//! ([`HYBRID_STACK_BYTES`]) for the leaf frames.
//!
//! Architecture-specific parts live in [`arch`].

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arch;
mod code_order;
mod entry_symbols;
pub mod fixture;
mod hybrid;
mod maps;
mod module_cache;
mod module_file;
mod processes;
mod unwinder;
mod vdso;

pub use arch::UserRegs;
pub use hybrid::{Completion, HybridResult, HYBRID_STACK_BYTES};
pub use maps::ParsedMapLine;
pub use module_cache::FileResolver;
pub use processes::{Mapping, MappingId, Processes};
pub use unwinder::{StopReason, UnwindResult, Unwinder, MAX_FRAMES};

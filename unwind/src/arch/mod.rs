//! Architecture-specific facts: which perf registers to request, how to read them out of a
//! sample, and how a signal frame stores the interrupted registers.
//!
//! Only x86_64 is implemented. An aarch64 port adds a sibling module with the same items
//! (register mask, perf_regs indices, sigframe layout) and a second framehop unwinder type.

pub mod x86_64;

//! Architecture-specific facts: which perf registers to request, how to read them out of a
//! sample, and how a signal frame stores the interrupted registers.
//!
//! Only x86_64 is implemented. An aarch64 port adds a sibling module with the same items
//! (register mask, perf_regs indices, sigframe layout) and a second framehop unwinder type.

pub mod x86_64;

/// Register values at the sample point (from PERF_SAMPLE_REGS_USER): what unwinding starts
/// from, on every architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRegs {
    /// Instruction pointer.
    pub ip: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer (rbp on x86_64).
    pub bp: u64,
}

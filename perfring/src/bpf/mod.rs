//! Optional in-kernel stack aggregation through eBPF.
//!
//! Built without clang, libbpf or kernel headers: [`insn`] is a small assembler for the
//! instruction forms every eBPF kernel knows, [`sys`] wraps `bpf(2)` directly, and
//! [`stack_counter`] holds the sampling program and its maps. Nothing here is needed for
//! the ring-buffer path; callers probe with [`probe`] and fall back when it fails.

pub mod btf;
pub mod drain;
pub mod emit;
pub mod error;
pub mod helpers;
pub mod insn;
pub mod maps;
pub mod offcpu;
pub mod stack_counter;
pub mod stack_gens;
pub mod sys;

pub use error::BpfError;
pub use stack_counter::{
    probe, MissingStacks, PidNamespace, StackCount, StackCounter, StackCounterOptions,
    StackFailures,
};

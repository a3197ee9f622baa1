//! Raw stacks as collected: addresses keyed so they can be symbolized once, after collection.

use unwind::MappingId;

/// One frame before symbolization.
///
/// User addresses are tied to the mapping they fell in *at sample time* (address spaces change
/// with exec and dlopen), so the same address in two processes or before/after an exec stays
/// two distinct frames. Addresses follow perfring's callchain convention
/// ([`perfring::record::call_site`]): return addresses point into their call instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frame {
    /// A kernel address (callchain convention applied).
    Kernel(u64),
    /// A user address in a mapping known at sample time.
    User {
        /// The mapping (canonical: the same file in any process is one mapping).
        mapping: MappingId,
        /// The address, re-expressed in that mapping.
        addr: u64,
    },
    /// A user address outside every known mapping.
    Unmapped(u64),
    /// A fixed label such as `[blocked at start]` or the `--` between target and waker.
    Label(&'static str),
    /// A frame already named (e.g. from /proc/PID/task/TID/stack), interned by the caller.
    Named(u32),
}

//! Raw stacks as collected: addresses keyed so they can be symbolized once, after collection.

use unwind::MappingId;

/// One frame before symbolization.
///
/// User addresses are tied to the mapping they fell in *at sample time* (address spaces change
/// with exec and dlopen), so the same address in two processes or before/after an exec stays
/// two distinct frames. Return addresses are stored minus one, so the lookup lands inside the
/// call instruction rather than on the next line or function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frame {
    Kernel(u64),
    User {
        mapping: MappingId,
        addr: u64,
    },
    /// A user address outside every known mapping.
    Unmapped(u64),
    /// A fixed label such as `[blocked at start]` or the `--` between target and waker.
    Label(&'static str),
    /// A frame already named (e.g. from /proc/PID/task/TID/stack), interned by the caller.
    Named(u32),
}

/// perf's callchain context markers (`PERF_CONTEXT_*`, as u64).
pub mod context {
    pub const HV: u64 = -32i64 as u64;
    pub const KERNEL: u64 = -128i64 as u64;
    pub const USER: u64 = -512i64 as u64;
    pub const GUEST: u64 = -2048i64 as u64;
    pub const GUEST_KERNEL: u64 = -2176i64 as u64;
    pub const GUEST_USER: u64 = -2560i64 as u64;
    pub const MAX: u64 = -4095i64 as u64;

    pub fn is_marker(v: u64) -> bool {
        v >= MAX
    }
}

/// Split a kernel callchain into kernel and user frames, leaf first.
///
/// `first_is_ip` marks that the first entry after each context marker is the sampled IP
/// (true for PERF_SAMPLE_CALLCHAIN from a sampling interrupt), so only later entries are
/// return addresses and get the minus-one adjustment.
pub fn split_callchain(
    chain: impl Iterator<Item = u64>,
    kernel: &mut Vec<u64>,
    user: &mut Vec<u64>,
) {
    #[derive(PartialEq)]
    enum Ctx {
        Kernel,
        User,
        Other,
    }
    let mut ctx = Ctx::Other;
    let mut first = true;
    for v in chain {
        if context::is_marker(v) {
            ctx = match v {
                context::KERNEL => Ctx::Kernel,
                context::USER => Ctx::User,
                _ => Ctx::Other,
            };
            first = true;
            continue;
        }
        if v == 0 {
            continue;
        }
        let addr = if first { v } else { v.wrapping_sub(1) };
        first = false;
        match ctx {
            Ctx::Kernel => kernel.push(addr),
            Ctx::User => user.push(addr),
            Ctx::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callchain_contexts_are_split_and_return_addresses_adjusted() {
        let chain = [
            context::KERNEL,
            0xffff_0010,
            0xffff_0020,
            context::USER,
            0x4010,
            0x4020,
            0x4030,
        ];
        let (mut k, mut u) = (vec![], vec![]);
        split_callchain(chain.into_iter(), &mut k, &mut u);
        assert_eq!(k, vec![0xffff_0010, 0xffff_001f]);
        assert_eq!(u, vec![0x4010, 0x401f, 0x402f]);
    }

    #[test]
    fn guest_and_hv_frames_are_ignored_and_zeroes_skipped() {
        let chain = [
            context::HV,
            0x1,
            context::GUEST_KERNEL,
            0x2,
            context::USER,
            0,
            0x9,
        ];
        let (mut k, mut u) = (vec![], vec![]);
        split_callchain(chain.into_iter(), &mut k, &mut u);
        assert!(k.is_empty());
        assert_eq!(u, vec![0x9]);
    }
}

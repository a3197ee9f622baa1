//! PERF_SAMPLE_CALLCHAIN, its context markers, and the convention every stack in psample
//! follows.
//!
//! # The callchain convention
//!
//! Stacks are leaf first. The first address of each context (kernel, user) is where the
//! thread was: the interrupted or sampled instruction. Every later address is a return
//! address, which points after its call instruction — possibly at the next source line or
//! into the next function — so it is stored as its [`call_site`] (minus one) and symbolizes
//! to the call itself. [`Callchain::split`] does this for the kernel's callchains,
//! [`adjust_return_addresses`] for an unwinder's output, [`push_stack`] for BPF stack traces;
//! nothing else in psample subtracts from an address.

use super::sample::U64Array;

/// Which part of the machine the following callchain entries belong to. The kernel
/// interleaves these markers (values in the top 4095 of the u64 range) with addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallchainContext {
    /// PERF_CONTEXT_HV: the hypervisor.
    Hypervisor,
    /// PERF_CONTEXT_KERNEL: the kernel.
    Kernel,
    /// PERF_CONTEXT_USER: user space.
    User,
    /// Placeholder for a user stack the kernel will deliver later (6.x deferred unwinding).
    UserDeferred,
    /// PERF_CONTEXT_GUEST: a guest (any part).
    Guest,
    /// PERF_CONTEXT_GUEST_KERNEL: a guest's kernel.
    GuestKernel,
    /// PERF_CONTEXT_GUEST_USER: a guest's user space.
    GuestUser,
}

/// `PERF_CONTEXT_*` marker values as they appear in a callchain.
pub mod context {
    use perf_event_open_sys::bindings as b;
    /// Hypervisor frames follow.
    pub const HV: u64 = b::PERF_CONTEXT_HV;
    /// Kernel frames follow.
    pub const KERNEL: u64 = b::PERF_CONTEXT_KERNEL;
    /// User frames follow.
    pub const USER: u64 = b::PERF_CONTEXT_USER;
    /// A user stack delivered later follows (6.x deferred unwinding).
    pub const USER_DEFERRED: u64 = b::PERF_CONTEXT_USER_DEFERRED;
    /// Guest frames follow.
    pub const GUEST: u64 = b::PERF_CONTEXT_GUEST;
    /// Guest kernel frames follow.
    pub const GUEST_KERNEL: u64 = b::PERF_CONTEXT_GUEST_KERNEL;
    /// Guest user frames follow.
    pub const GUEST_USER: u64 = b::PERF_CONTEXT_GUEST_USER;
    /// Every value at or above this is a marker, never an address.
    pub const MAX: u64 = b::PERF_CONTEXT_MAX;
}

impl CallchainContext {
    /// The context a marker value switches to; `None` for addresses and unknown markers.
    pub fn from_marker(value: u64) -> Option<Self> {
        Some(match value {
            context::HV => CallchainContext::Hypervisor,
            context::KERNEL => CallchainContext::Kernel,
            context::USER => CallchainContext::User,
            context::USER_DEFERRED => CallchainContext::UserDeferred,
            context::GUEST => CallchainContext::Guest,
            context::GUEST_KERNEL => CallchainContext::GuestKernel,
            context::GUEST_USER => CallchainContext::GuestUser,
            _ => return None,
        })
    }

    /// True for any value in the marker range, including markers newer than this code.
    pub fn is_marker(value: u64) -> bool {
        value >= context::MAX
    }
}

/// PERF_SAMPLE_CALLCHAIN: instruction pointers, innermost first, with context markers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Callchain<'a> {
    entries: U64Array<'a>,
}

impl<'a> Callchain<'a> {
    pub(super) fn new(entries: U64Array<'a>) -> Self {
        Callchain { entries }
    }

    /// Number of entries, markers included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether the chain has no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Every raw entry, markers included.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u64> + ExactSizeIterator + 'a {
        self.entries.iter()
    }
    /// Entry `index`, markers included.
    pub fn get(&self, index: usize) -> Option<u64> {
        self.entries.get(index)
    }
    /// The entries as an array.
    pub fn as_u64_array(&self) -> U64Array<'a> {
        self.entries
    }
    /// Addresses only, each tagged with the context of the last marker before it
    /// (`None` before any marker, as in chains from kernels that omit them).
    /// Unknown markers are skipped and reset the context to `None`.
    pub fn frames(&self) -> impl Iterator<Item = (Option<CallchainContext>, u64)> + 'a {
        let mut ctx = None;
        self.entries.iter().filter_map(move |v| {
            if CallchainContext::is_marker(v) {
                ctx = CallchainContext::from_marker(v);
                None
            } else {
                Some((ctx, v))
            }
        })
    }
}

impl Callchain<'_> {
    /// The kernel and user addresses of the chain, leaf first, appended to `kernel` and
    /// `user` with the convention applied: the first address after each context marker is
    /// kept, later ones become their call sites. Zero entries (truncated frames) are
    /// skipped; hypervisor, guest and unknown contexts, and addresses before any marker,
    /// are dropped.
    pub fn split(&self, kernel: &mut Vec<u64>, user: &mut Vec<u64>) {
        let mut ctx = None;
        let mut first = true;
        for v in self.entries.iter() {
            if CallchainContext::is_marker(v) {
                ctx = CallchainContext::from_marker(v);
                first = true;
                continue;
            }
            if v == 0 {
                continue;
            }
            let addr = if first { v } else { call_site(v) };
            first = false;
            match ctx {
                Some(CallchainContext::Kernel) => kernel.push(addr),
                Some(CallchainContext::User) => user.push(addr),
                _ => {}
            }
        }
    }
}

/// A return address as the address of its call: one byte back, inside the call
/// instruction.
pub fn call_site(return_address: u64) -> u64 {
    return_address.wrapping_sub(1)
}

/// Applies the convention to the leaf-first addresses of one context, e.g. a user stack
/// unwound from a copy of the stack: the first stays, every later one becomes its call site.
pub fn adjust_return_addresses(addrs: &mut [u64]) {
    for a in addrs.iter_mut().skip(1) {
        *a = call_site(*a);
    }
}

/// Appends the leaf-first addresses of one stack of a single context (a BPF stack trace)
/// to `out` with the convention applied. Some kernels store a PERF_CONTEXT marker in such
/// stacks; markers and zeros are not addresses and are dropped.
pub fn push_stack(stack: impl IntoIterator<Item = u64>, out: &mut Vec<u64>) {
    let addrs = stack
        .into_iter()
        .filter(|&a| !CallchainContext::is_marker(a) && a != 0);
    for (i, a) in addrs.enumerate() {
        out.push(if i == 0 { a } else { call_site(a) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    fn split(values: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let bytes = chain(values);
        let cc = Callchain::new(U64Array::new(&bytes));
        let (mut k, mut u) = (vec![], vec![]);
        cc.split(&mut k, &mut u);
        (k, u)
    }

    #[test]
    fn contexts_are_split_and_return_addresses_adjusted() {
        let (k, u) = split(&[
            context::KERNEL,
            0xffff_0010,
            0xffff_0020,
            context::USER,
            0x4010,
            0x4020,
            0x4030,
        ]);
        assert_eq!(k, vec![0xffff_0010, 0xffff_001f]);
        assert_eq!(u, vec![0x4010, 0x401f, 0x402f]);
    }

    #[test]
    fn guest_and_hv_frames_are_ignored_and_zeroes_skipped() {
        let (k, u) = split(&[
            context::HV,
            0x1,
            context::GUEST_KERNEL,
            0x2,
            context::USER,
            0,
            0x9,
        ]);
        assert!(k.is_empty());
        assert_eq!(u, vec![0x9]);
        // Before any marker nothing says which side an address is on.
        let (k, u) = split(&[0x5, 0x6]);
        assert!(k.is_empty() && u.is_empty());
    }

    #[test]
    fn single_context_stacks_follow_the_same_convention() {
        let mut out = vec![];
        push_stack([context::USER, 0, 0x100, 0x200, 0x300], &mut out);
        assert_eq!(out, vec![0x100, 0x1ff, 0x2ff]);
        let mut unwound = [0x500, 0x600, 0x700];
        adjust_return_addresses(&mut unwound);
        assert_eq!(unwound, [0x500, 0x5ff, 0x6ff]);
        assert_eq!(call_site(0), u64::MAX, "never panics on a zero address");
    }
}

//! Building one sample's raw stack: kernel frames from the kernel's callchain, user frames
//! from the callchain (frame pointers), from unwinding the copied user stack (DWARF), or
//! from both (hybrid: DWARF for the leaf frames, the callchain from where they agree).

use std::collections::BTreeMap;

use perfring::record::{adjust_return_addresses, CallchainContext, Sample};
use unwind::{Completion, HybridResult, StopReason, UnwindResult, Unwinder, UserRegs};

use crate::frame::Frame;
use crate::tracker::Tracker;

/// How user stacks are collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackMode {
    /// Frame pointers, walked by the kernel (PERF_SAMPLE_CALLCHAIN).
    Fp,
    /// The kernel's frame-pointer callchain with its leaf frames redone by DWARF CFI from a
    /// copy of this many bytes of the user stack ([`Unwinder::unwind_hybrid`]).
    Auto(u32),
    /// DWARF CFI unwinding in psample from a copy of this many bytes of the user stack.
    Dwarf(u32),
}

/// Bytes of stack a hybrid sample copies by default (measured: see
/// [`unwind::HYBRID_STACK_BYTES`]).
pub const HYBRID_STACK_BYTES: u32 = unwind::HYBRID_STACK_BYTES;

impl StackMode {
    /// The default: hybrid, with the copy size measured to cover the leaf frames.
    pub const DEFAULT: StackMode = StackMode::Auto(HYBRID_STACK_BYTES);

    /// The mode as the summary shows it.
    pub fn describe(self) -> String {
        match self {
            StackMode::Fp => "fp".into(),
            StackMode::Auto(n) => {
                format!("auto (frame pointers + DWARF leaf frames from {n} bytes of stack)")
            }
            StackMode::Dwarf(n) => format!("dwarf ({n} bytes of stack)"),
        }
    }

    /// Bytes of user stack each sample carries, if any.
    pub fn stack_copy(self) -> Option<u32> {
        match self {
            StackMode::Fp => None,
            StackMode::Auto(n) | StackMode::Dwarf(n) => Some(n),
        }
    }

    /// Whether the kernel walks the user stack (DWARF mode does without it).
    pub fn kernel_user_chain(self) -> bool {
        !matches!(self, StackMode::Dwarf(_))
    }
}

/// Unwinding and completeness accounting for user stacks.
#[derive(Default, Debug, Clone)]
pub struct UnwindStats {
    /// User stacks unwound.
    pub samples: u64,
    /// Of those, stacks that reached a thread's entry point.
    pub complete: u64,
    /// Why the others stopped, by reason.
    pub reasons: BTreeMap<String, u64>,
}

impl UnwindStats {
    /// Account for one unwound stack.
    pub fn add(&mut self, reason: StopReason) {
        self.samples += 1;
        if reason == StopReason::ReachedEntry {
            self.complete += 1;
        } else {
            *self.reasons.entry(format!("{reason:?}")).or_insert(0) += 1;
        }
    }
}

/// How hybrid stacks were completed (see [`Completion`]).
#[derive(Default, Debug, Clone)]
pub struct HybridStats {
    /// Stacks completed: spliced at a frame both walks agree on.
    pub spliced: u64,
    /// DWARF frames then the kernel chain, without a frame where they agree.
    pub unanchored: u64,
    /// DWARF only.
    pub dwarf_only: u64,
    /// The kernel chain only, as in frame-pointer mode.
    pub kernel_only: u64,
    /// Samples without registers or stack (kernel threads, kernels that gave none): their
    /// kernel chain as it is.
    pub no_copy: u64,
    /// Frames the leaf fix added that the kernel chain lacked.
    pub recovered: u64,
    /// Stacks with at least one recovered frame.
    pub fixed: u64,
    /// Kernel chain entries dropped as not being return addresses.
    pub dropped: u64,
    /// Spliced stacks by copy bytes the splice needed: bucket `i` counts up to `64 << i`.
    pub used: [u64; 11],
}

impl HybridStats {
    /// Stacks that went through the hybrid walk (had a copy).
    pub fn stacks(&self) -> u64 {
        self.spliced + self.unanchored + self.dwarf_only + self.kernel_only
    }

    /// The copy size that covered 99 % of the spliced stacks (a power of two from 64).
    pub fn used_p99(&self) -> Option<u64> {
        let total: u64 = self.used.iter().sum();
        let mut seen = 0;
        for (i, n) in self.used.iter().enumerate() {
            seen += n;
            if total > 0 && seen * 100 >= total * 99 {
                return Some(64 << i);
            }
        }
        None
    }
}

impl HybridStats {
    fn add(&mut self, r: &HybridResult) {
        match r.completion {
            Completion::Spliced { .. } => self.spliced += 1,
            Completion::Unanchored { .. } => self.unanchored += 1,
            Completion::DwarfOnly => self.dwarf_only += 1,
            Completion::KernelOnly => self.kernel_only += 1,
        }
        if let Completion::Spliced { .. } = r.completion {
            let bucket = (r.stack_used.max(1).div_ceil(64))
                .next_power_of_two()
                .trailing_zeros();
            self.used[(bucket as usize).min(self.used.len() - 1)] += 1;
        }
        let recovered = r.recovered() as u64;
        self.recovered += recovered;
        self.fixed += u64::from(recovered > 0);
        self.dropped += r.dropped as u64;
    }
}

/// The summary's stack health, in every mode: user stacks that are visibly broken. A walk
/// that ended in an address outside every executable mapping followed a frame pointer of
/// code without them (or garbage); one that stopped at the sampled IP found no frame record
/// at all (rbp held something else); in hybrid mode, a stack is cut at the end of the copy
/// when the leaf fix proved the kernel's chain wrong and the copy ended before the stack
/// did. (Whether a stack reaches a thread entry is not asked: a frame-pointer chain through
/// Debian's libc ends in `__libc_start_call_main`, which only debug symbols name.)
#[derive(Default, Debug, Clone)]
pub struct StackHealth {
    /// User stacks seen.
    pub stacks: u64,
    /// Ended outside any executable mapping.
    pub outside: u64,
    /// Nothing past the sampled IP.
    pub ip_only: u64,
    /// Cut at the end of the copy (hybrid only).
    pub cut: u64,
}

impl StackHealth {
    /// Share of stacks that are broken, in percent.
    pub fn broken_pct(&self) -> f64 {
        100.0 * (self.outside + self.ip_only + self.cut) as f64 / self.stacks.max(1) as f64
    }

    /// Account for one user stack of `frames` addresses that stopped for `reason`.
    fn add(&mut self, frames: usize, reason: StopReason) {
        self.stacks += 1;
        if reason == StopReason::NoMapping {
            self.outside += 1;
        } else if frames == 1 && reason != StopReason::ReachedEntry {
            self.ip_only += 1;
        }
    }
}

/// Per-sample state reused across samples so the hot path does not allocate.
pub struct StackBuilder {
    /// How user stacks are collected.
    pub mode: StackMode,
    /// The DWARF unwinder and its per-module caches.
    pub unwinder: Unwinder,
    kernel: Vec<u64>,
    user: Vec<u64>,
    /// The kernel's user callchain as it came (hybrid mode's input).
    chain: Vec<u64>,
    /// The last stack built, leaf first.
    pub frames: Vec<Frame>,
    /// Completeness of the user stacks unwound so far (DWARF mode).
    pub unwind_stats: UnwindStats,
    /// How hybrid stacks were completed.
    pub hybrid_stats: HybridStats,
    /// Broken user stacks, in every mode.
    pub health: StackHealth,
}

impl StackBuilder {
    /// A builder for `mode`.
    pub fn new(mode: StackMode) -> Self {
        StackBuilder {
            mode,
            unwinder: Unwinder::new(),
            kernel: Vec::new(),
            user: Vec::new(),
            chain: Vec::new(),
            frames: Vec::new(),
            unwind_stats: UnwindStats::default(),
            hybrid_stats: HybridStats::default(),
            health: StackHealth::default(),
        }
    }

    /// Start over with empty caches (they follow address spaces that are gone), keeping the
    /// statistics, which describe the whole session.
    pub fn renew(&mut self) {
        let old = std::mem::replace(self, StackBuilder::new(self.mode));
        self.unwind_stats = old.unwind_stats;
        self.hybrid_stats = old.hybrid_stats;
        self.health = old.health;
    }

    /// Loads what unwinding `pid`'s samples needs (DWARF and hybrid modes: its modules'
    /// CFI) before sampling starts, so the first samples do not stall the ring reader.
    pub fn prepare(&mut self, tracker: &Tracker, pid: u32) {
        if self.mode.stack_copy().is_some() {
            self.unwinder.prepare(&tracker.procs, pid);
        }
    }

    /// Build `self.frames` (leaf first) from a sample.
    pub fn build(&mut self, tracker: &Tracker, s: &Sample<'_>, pid: u32) {
        self.kernel.clear();
        self.user.clear();
        self.frames.clear();
        if let Some(cc) = &s.callchain {
            cc.split(&mut self.kernel, &mut self.user);
        }
        match self.mode {
            StackMode::Fp => self.account_fp(tracker, pid),
            // The kernel's user callchain (if exclude_callchain_user was refused) is replaced
            // by our own unwinding of the copied stack.
            StackMode::Dwarf(_) => self.unwind_dwarf(tracker, s, pid),
            StackMode::Auto(_) => self.unwind_hybrid(tracker, s, pid),
        }
        self.frames
            .extend(self.kernel.iter().map(|a| Frame::Kernel(*a)));
        for &a in &self.user {
            self.frames.push(tracker.user_frame(pid, a));
        }
    }

    /// Where the kernel's chain ends: outside every executable mapping (a broken
    /// frame-pointer walk), or at the sampled IP itself.
    fn account_fp(&mut self, tracker: &Tracker, pid: u32) {
        let Some(&last) = self.user.last() else {
            return;
        };
        // `last` already follows the callchain convention (inside the call).
        let reason = if tracker.procs.find_code(pid, last).is_none() {
            StopReason::NoMapping
        } else if self.user.len() == 1 && self.unwinder.is_thread_entry(&tracker.procs, pid, last) {
            StopReason::ReachedEntry
        } else {
            StopReason::EndOfStack
        };
        self.health.add(self.user.len(), reason);
    }

    fn unwind_dwarf(&mut self, tracker: &Tracker, s: &Sample<'_>, pid: u32) {
        let Some((regs, stack)) = regs_and_stack(s) else {
            // No copy: a kernel thread (no user stack at all), or a kernel that refused
            // the copy (the ladder then asked for its user callchain instead).
            return self.account_fp(tracker, pid);
        };
        self.user.clear();
        let r: UnwindResult =
            self.unwinder
                .unwind_dwarf(&tracker.procs, pid, regs, stack, &mut self.user);
        self.unwind_stats.add(r.reason);
        self.health.add(r.frames, r.reason);
        adjust_return_addresses(&mut self.user);
    }

    fn unwind_hybrid(&mut self, tracker: &Tracker, s: &Sample<'_>, pid: u32) {
        let Some((regs, stack)) = regs_and_stack(s) else {
            // No user context copied (a kernel thread, or a kernel that gave none): the
            // kernel's chain as in fp mode.
            if !self.user.is_empty() {
                self.hybrid_stats.no_copy += 1;
            }
            return self.account_fp(tracker, pid);
        };
        self.chain.clear();
        if let Some(cc) = &s.callchain {
            self.chain.extend(
                cc.frames()
                    .filter(|(ctx, _)| *ctx == Some(CallchainContext::User))
                    .map(|(_, v)| v),
            );
        }
        self.user.clear();
        let r = self.unwinder.unwind_hybrid(
            &tracker.procs,
            pid,
            regs,
            stack,
            &self.chain,
            &mut self.user,
        );
        self.hybrid_stats.add(&r);
        self.health.add(r.frames, r.reason);
        let cut = r.completion == Completion::DwarfOnly && r.reason == StopReason::StackOutOfRange;
        self.health.cut += u64::from(cut);
        adjust_return_addresses(&mut self.user);
    }
}

/// The user registers and copied stack of a sample, when the kernel gave them (ABI 0, as for
/// kernel threads, carries neither).
fn regs_and_stack<'a>(s: &Sample<'a>) -> Option<(UserRegs, &'a [u8])> {
    let (regs, stack) = (s.regs_user.as_ref()?, s.stack_user?);
    let get = |i: usize| regs.get(i as u32);
    use unwind::arch::x86_64::{PERF_REG_BP, PERF_REG_IP, PERF_REG_SP};
    Some((
        UserRegs {
            ip: get(PERF_REG_IP)?,
            sp: get(PERF_REG_SP)?,
            bp: get(PERF_REG_BP)?,
        },
        stack,
    ))
}

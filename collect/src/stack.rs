//! Building one sample's raw stack: kernel frames from the kernel's callchain, user frames
//! from the callchain (frame pointers) or from unwinding the copied user stack (DWARF).

use std::collections::BTreeMap;

use perfring::record::{adjust_return_addresses, Sample};
use unwind::{StopReason, UnwindResult, Unwinder, UserRegs};

use crate::frame::Frame;
use crate::tracker::Tracker;

/// How user stacks are collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackMode {
    /// Frame pointers, walked by the kernel (PERF_SAMPLE_CALLCHAIN).
    Fp,
    /// DWARF CFI unwinding in psample from a copy of this many bytes of the user stack.
    Dwarf(u32),
}

impl StackMode {
    /// The mode as the summary shows it.
    pub fn describe(self) -> String {
        match self {
            StackMode::Fp => "fp".into(),
            StackMode::Dwarf(n) => format!("dwarf ({n} bytes of stack)"),
        }
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
    pub fn add(&mut self, r: &UnwindResult) {
        self.samples += 1;
        if r.reason == StopReason::ReachedEntry {
            self.complete += 1;
        } else {
            *self.reasons.entry(format!("{:?}", r.reason)).or_insert(0) += 1;
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
    /// The last stack built, leaf first.
    pub frames: Vec<Frame>,
    /// Completeness of the user stacks unwound so far.
    pub unwind_stats: UnwindStats,
}

impl StackBuilder {
    /// A builder for `mode`.
    pub fn new(mode: StackMode) -> Self {
        StackBuilder {
            mode,
            unwinder: Unwinder::new(),
            kernel: Vec::new(),
            user: Vec::new(),
            frames: Vec::new(),
            unwind_stats: UnwindStats::default(),
        }
    }

    /// Loads what unwinding `pid`'s samples needs (DWARF mode: its modules' CFI) before
    /// sampling starts, so the first samples do not stall the ring reader.
    pub fn prepare(&mut self, tracker: &Tracker, pid: u32) {
        if let StackMode::Dwarf(_) = self.mode {
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
        if let StackMode::Dwarf(_) = self.mode {
            // The kernel's user callchain (if exclude_callchain_user was refused) is replaced
            // by our own unwinding of the copied stack.
            self.user.clear();
            if let (Some(regs), Some(stack)) = (&s.regs_user, s.stack_user) {
                let (ip, sp, bp) = (
                    regs.get(unwind::arch::x86_64::PERF_REG_IP as u32),
                    regs.get(unwind::arch::x86_64::PERF_REG_SP as u32),
                    regs.get(unwind::arch::x86_64::PERF_REG_BP as u32),
                );
                if let (Some(ip), Some(sp), Some(bp)) = (ip, sp, bp) {
                    let r = self.unwinder.unwind_dwarf(
                        &tracker.procs,
                        pid,
                        UserRegs { ip, sp, bp },
                        stack,
                        &mut self.user,
                    );
                    self.unwind_stats.add(&r);
                    adjust_return_addresses(&mut self.user);
                }
            }
        }
        self.frames
            .extend(self.kernel.iter().map(|a| Frame::Kernel(*a)));
        for &a in &self.user {
            self.frames.push(tracker.user_frame(pid, a));
        }
    }
}

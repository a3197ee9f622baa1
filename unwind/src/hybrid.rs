//! Hybrid unwinding: the kernel's frame-pointer callchain, with its leaf frames redone by
//! DWARF CFI from a small copy of the user stack.
//!
//! A frame-pointer walk goes wrong in one place above all: the leaf. A program built with
//! frame pointers that blocks inside a libc built without them is caught in the syscall
//! wrapper, which never pushed `rbp`, so the kernel's walk starts at the wrapper's caller's
//! frame record and the caller itself is lost. DWARF CFI walks those leaf frames exactly,
//! and needs only the few hundred bytes of stack they occupy; from the first frame where
//! both walks find the same return address in the same stack slot, the kernel's chain is
//! as good as DWARF and costs nothing more.
//!
//! The kernel's chain, leaf first, is `K[0] = ip`, then `K[m+1]` read at `b[m] + 8` where
//! `b[0] = rbp` and `b[m+1] = *b[m]`. Those `b[m]` that lie in the copy can be replayed
//! here, so the stack slot of each early kernel entry is known, and the one entry beyond
//! the copy whose slot is known is served to the DWARF walk as if it were copied (the
//! kernel did read it, in the same sample). The DWARF walk then runs from the registers
//! and stops at the first return address that sits in such a slot with the same value:
//! the splice. Kernel entries before the splice point lie in stack the DWARF walk
//! accounted for without finding them, so they were not return addresses: dropped.

use std::cell::Cell;

use crate::processes::Processes;
use crate::unwinder::{
    StackCopy, StackWords, Step, StepKind, StopReason, Unwinder, WalkEnd, MAX_FRAMES,
};
use crate::UserRegs;

/// Bytes of user stack to copy per sample for [`Unwinder::unwind_hybrid`].
///
/// Sized by measurement (`tests/measure_copy.rs`, system-wide on the development VM with
/// PostgreSQL under pgbench, node and python HTTP servers under wrk, the bundled workloads
/// and the other engineers' builds, ~15 000 samples that splice): the copy only has to hold
/// the leaf frames below the first frame with a frame record, and 99 % of spliced samples
/// needed at most 128 bytes (glibc's syscall wrappers 8-24, pgbench's libpq path 128); a
/// larger copy (1 KiB) spliced no more samples than 512 bytes. 512 leaves a 4× margin and
/// stays 32 times below DWARF mode's 16 KiB, so a sample costs about what a frame-pointer
/// sample costs. What it cannot reach: a libc function that keeps data in rbp and has a
/// big frame between the sample and the program's code (stdio's vfprintf writing to a full
/// pipe: 4 KiB); such stacks end at the copy (the summary's stack health counts them) and
/// need `--call-graph dwarf` or a larger `auto,SIZE`.
pub const HYBRID_STACK_BYTES: u32 = 512;

/// How [`Unwinder::unwind_hybrid`] completed a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Completion {
    /// DWARF unwound `out[..=at]`; the frame at `at` is the kernel chain's entry `kernel`,
    /// read from the same stack slot by both walks, and the rest is the kernel chain after
    /// it. The stack is as complete as a DWARF unwind of the whole stack, up to gaps the
    /// frame-pointer walk has further out.
    Spliced {
        /// Index (from the first frame of this stack) of the frame both walks agree on.
        at: usize,
        /// Its index in the kernel chain.
        kernel: usize,
    },
    /// DWARF unwound `dwarf` frames and stopped (the copy ended, or unwind information
    /// did) before any frame where the walks agree; the kernel chain follows from entry
    /// `kernel`, whose slot lies beyond what DWARF covered. Frames between the two may be
    /// missing.
    Unanchored {
        /// Frames from DWARF, the IP included.
        dwarf: usize,
        /// First kernel chain entry appended.
        kernel: usize,
    },
    /// Only DWARF frames: the DWARF walk reached the end of the stack inside the copy, or
    /// proved the kernel chain wrong from its first entry, or there was no kernel chain.
    DwarfOnly,
    /// Only the kernel chain, as in frame-pointer mode: DWARF could not unwind even the
    /// leaf (no CFI and no frame pointer there, unknown mapping, chain of another IP).
    KernelOnly,
}

impl Completion {
    /// Short stable name for summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Completion::Spliced { .. } => "spliced",
            Completion::Unanchored { .. } => "unanchored",
            Completion::DwarfOnly => "dwarf-only",
            Completion::KernelOnly => "kernel-only",
        }
    }
}

/// Outcome of [`Unwinder::unwind_hybrid`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HybridResult {
    /// Addresses pushed.
    pub frames: usize,
    /// Why the stack ends where it does (for the kernel chain's tail: a thread entry,
    /// an address outside every executable mapping, or simply the chain's end, reported as
    /// [`StopReason::EndOfStack`]).
    pub reason: StopReason,
    /// How the stack was put together.
    pub completion: Completion,
    /// Kernel chain entries dropped because the DWARF walk showed they are not return
    /// addresses of this stack.
    pub dropped: usize,
    /// Bytes of the copy the DWARF walk read (from the start of the copy to the end of the
    /// highest word read): how much copy this stack needed, for sizing the copy.
    pub stack_used: usize,
}

impl HybridResult {
    /// Frames this stack has that the kernel chain alone lacked (the leaf fix).
    pub fn recovered(&self) -> usize {
        match self.completion {
            Completion::Spliced { at, kernel } => (at + self.dropped).saturating_sub(kernel),
            Completion::Unanchored { dwarf, kernel } => {
                (dwarf + self.dropped).saturating_sub(kernel)
            }
            Completion::DwarfOnly | Completion::KernelOnly => 0,
        }
    }
}

/// The kernel's frame-pointer walk replayed over the copy: `records[m]` is the frame
/// record address `b[m]` at which the kernel read chain entry `m + 1`.
struct KernelWalk<'a> {
    chain: &'a [u64],
    records: &'a [u64],
}

impl KernelWalk<'_> {
    /// Replay into `records` (cleared first) as far as the copy shows the same words the
    /// kernel read; the last record may lie beyond the copy.
    fn replay(copy: &StackCopy<'_>, bp: u64, chain: &[u64], records: &mut Vec<u64>) {
        records.clear();
        let mut b = bp;
        while records.len() + 1 < chain.len() && records.len() < MAX_FRAMES {
            records.push(b);
            let Some(ra_slot) = b.checked_add(8) else {
                return;
            };
            match (copy.read(b), copy.read(ra_slot)) {
                (Ok(next), Ok(ra)) if ra == chain[records.len()] => b = next,
                _ => return,
            }
        }
    }

    /// The chain entry the kernel read at `slot`, by index.
    fn entry_at(&self, slot: u64) -> Option<usize> {
        let record = slot.checked_sub(8)?;
        self.records
            .iter()
            .position(|&b| b == record)
            .map(|m| m + 1)
    }

    /// Index of the first chain entry whose slot is known to lie below `reach` (stack the
    /// DWARF walk covered, or below the stack pointer): that entry is not a return address.
    fn first_disproved(&self, reach: u64) -> Option<usize> {
        self.records
            .iter()
            .position(|&b| b.checked_add(8).is_none_or(|slot| slot < reach))
            .map(|m| m + 1)
    }
}

/// The copy, plus the words the kernel's walk read just beyond it: the return address of
/// the last replayed record, and a stand-in for its saved frame pointer. A step that uses
/// the stand-in is only kept if it anchors (its value is never used after that).
struct Extended<'a> {
    copy: StackCopy<'a>,
    /// (record address, return address the kernel read at record + 8).
    last: Option<(u64, u64)>,
    stand_in_used: Cell<bool>,
    /// End offset of the highest word read from the copy.
    used: Cell<usize>,
}

impl StackWords for Extended<'_> {
    fn read(&self, addr: u64) -> Result<u64, ()> {
        if let Ok(v) = self.copy.read(addr) {
            // In the copy, so the offset is below its length and +8 cannot overflow.
            let end = (addr - self.copy.base) as usize + 8;
            self.used.set(self.used.get().max(end));
            return Ok(v);
        }
        match self.last {
            Some((b, ra)) if b.checked_add(8) == Some(addr) => Ok(ra),
            Some((b, _)) if b == addr => {
                self.stand_in_used.set(true);
                Ok(0)
            }
            _ => Err(()),
        }
    }

    fn failure(&self, addr: u64) -> StopReason {
        self.copy.failure(addr)
    }
}

/// A chain entry worth appending: not a zero (truncated frame) nor a PERF_CONTEXT marker
/// (some kernels store them in BPF stack traces).
fn is_address(v: u64) -> bool {
    const PERF_CONTEXT_MAX: u64 = -4095i64 as u64;
    v != 0 && v < PERF_CONTEXT_MAX
}

impl Unwinder {
    /// Hybrid unwind: DWARF CFI from `regs` over `stack` (bytes copied at `regs.sp`, may be
    /// only a few hundred) through the leaf frames, then the kernel's frame-pointer chain
    /// `fp_chain` (user part, leaf first: the IP, then raw return addresses; zeros and
    /// PERF_CONTEXT markers are skipped) from the first frame both walks agree on. Same
    /// output convention as [`Self::unwind_dwarf`]: `out[0] = regs.ip`, then return
    /// addresses. See the module documentation of `hybrid` for the rules.
    pub fn unwind_hybrid(
        &mut self,
        procs: &Processes,
        pid: u32,
        regs: UserRegs,
        stack: &[u8],
        fp_chain: &[u64],
        out: &mut Vec<u64>,
    ) -> HybridResult {
        let first = out.len();
        if fp_chain.first().is_some_and(|&ip| ip != regs.ip) {
            // Not the chain of this sample's registers: nothing to line up.
            return self.kernel_only(procs, pid, fp_chain, out, first);
        }
        let copy = StackCopy {
            base: regs.sp,
            bytes: stack,
        };
        let mut records = std::mem::take(&mut self.hybrid_records);
        KernelWalk::replay(&copy, regs.bp, fp_chain, &mut records);
        let walk = KernelWalk {
            chain: fp_chain,
            records: &records,
        };
        let last = records.last().map(|&b| (b, fp_chain[records.len()]));
        let words = Extended {
            copy,
            last,
            stand_in_used: Cell::new(false),
            used: Cell::new(0),
        };
        let mut reach = regs.sp;
        let mut anchor = None;
        out.push(regs.ip);
        let end = self.walk_dwarf(procs, pid, regs, &words, out, first, |ra, sp, kind| {
            let at = (kind == StepKind::Return)
                .then(|| walk.entry_at(sp.wrapping_sub(8)))
                .flatten()
                .filter(|&k| fp_chain[k] == ra);
            if at.is_some() {
                anchor = at;
                return Step::Anchor;
            }
            if words.stand_in_used.get() {
                return Step::Refuse;
            }
            reach = sp;
            Step::Continue
        });
        let mut result = match (end, anchor) {
            (WalkEnd::Anchored, Some(kernel)) => {
                self.splice(procs, pid, fp_chain, kernel, out, first)
            }
            (WalkEnd::Stopped(reason), _) => {
                self.complete_unanchored(procs, pid, &walk, reason, reach, out, first)
            }
            (WalkEnd::Anchored, None) => self.kernel_only(procs, pid, fp_chain, out, first),
        };
        result.stack_used = words.used.get();
        self.hybrid_records = records;
        result
    }

    /// DWARF anchored at kernel entry `kernel` (already pushed): append the rest.
    fn splice(
        &mut self,
        procs: &Processes,
        pid: u32,
        chain: &[u64],
        kernel: usize,
        out: &mut Vec<u64>,
        first: usize,
    ) -> HybridResult {
        let at = out.len() - 1 - first;
        let reason = self.append_chain(procs, pid, &chain[kernel + 1..], out, first);
        HybridResult {
            frames: out.len() - first,
            reason,
            completion: Completion::Spliced { at, kernel },
            // Entries 1..kernel lie in stack the DWARF walk covered without meeting them.
            dropped: chain[1..kernel].iter().filter(|&&v| is_address(v)).count(),
            stack_used: 0,
        }
    }

    /// The DWARF walk stopped without meeting the kernel chain.
    #[allow(clippy::too_many_arguments)]
    fn complete_unanchored(
        &mut self,
        procs: &Processes,
        pid: u32,
        walk: &KernelWalk<'_>,
        reason: StopReason,
        reach: u64,
        out: &mut Vec<u64>,
        first: usize,
    ) -> HybridResult {
        let chain = walk.chain;
        let dwarf = out.len() - first;
        let rest = chain.get(1..).unwrap_or_default();
        let finished = matches!(
            reason,
            StopReason::EndOfStack | StopReason::ZeroRa | StopReason::MaxDepth
        );
        if dwarf == 1 && !finished && !chain.is_empty() {
            // DWARF could not unwind the leaf at all: today's frame-pointer behaviour.
            out.truncate(first);
            return self.kernel_only(procs, pid, chain, out, first);
        }
        let keep = if finished {
            0
        } else {
            // Entries from the first one DWARF disproves on are the kernel walking garbage.
            walk.first_disproved(reach).map_or(rest.len(), |k| k - 1)
        };
        let dropped = rest[keep..].iter().filter(|&&v| is_address(v)).count();
        if keep == 0 {
            let r = self.finish(procs, pid, out, first, reason);
            return HybridResult {
                frames: r.frames,
                reason: r.reason,
                completion: Completion::DwarfOnly,
                dropped,
                stack_used: 0,
            };
        }
        let reason = self.append_chain(procs, pid, &rest[..keep], out, first);
        HybridResult {
            frames: out.len() - first,
            reason,
            completion: Completion::Unanchored { dwarf, kernel: 1 },
            dropped,
            stack_used: 0,
        }
    }

    /// The kernel chain as it is (frame-pointer mode's stack).
    fn kernel_only(
        &mut self,
        procs: &Processes,
        pid: u32,
        chain: &[u64],
        out: &mut Vec<u64>,
        first: usize,
    ) -> HybridResult {
        let reason = self.append_chain(procs, pid, chain, out, first);
        HybridResult {
            frames: out.len() - first,
            reason,
            completion: Completion::KernelOnly,
            dropped: 0,
            stack_used: 0,
        }
    }

    /// Append kernel chain entries (addresses only, up to [`MAX_FRAMES`]) and say why the
    /// stack ends there.
    fn append_chain(
        &mut self,
        procs: &Processes,
        pid: u32,
        entries: &[u64],
        out: &mut Vec<u64>,
        first: usize,
    ) -> StopReason {
        for &v in entries.iter().filter(|&&v| is_address(v)) {
            if out.len() - first >= MAX_FRAMES {
                return StopReason::MaxDepth;
            }
            out.push(v);
        }
        let Some(&last) = out[first..].last() else {
            return StopReason::NoMapping;
        };
        let lookup = if out.len() - first > 1 {
            last.wrapping_sub(1)
        } else {
            last
        };
        if procs.find_code(pid, lookup).is_none() {
            return StopReason::NoMapping;
        }
        self.finish(procs, pid, out, first, StopReason::EndOfStack)
            .reason
    }
}

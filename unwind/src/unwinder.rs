//! Online user-stack unwinding of sampled (registers, stack bytes) pairs.

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{FrameAddress, Unwinder as _};

use crate::arch::x86_64::sigframe;
use crate::arch::UserRegs;
use crate::module_cache::{default_resolver, FileResolver, LoadedModule, ModuleStore, SectionData};
use crate::processes::{MappingId, Processes};

/// Deepest stack reported; beyond this the sample is cut with [`StopReason::MaxDepth`].
pub const MAX_FRAMES: usize = 1024;

/// Why an unwind stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StopReason {
    /// The outermost frame is a thread entry (`_start`, `__libc_start_main`, `start_thread`,
    /// `clone`, `clone3`, or a function whose CFI marks it as the stack root).
    ReachedEntry,
    /// The stack ended (CFI end marker or null frame pointer) somewhere that is not a known
    /// thread entry.
    EndOfStack,
    /// An address was not inside any executable mapping of the process (or the process is
    /// unknown).
    NoMapping,
    /// The frame's module has no CFI and the frame-pointer fallback failed there.
    NoUnwindInfo,
    /// Needed stack bytes lie beyond the sampled copy (stack deeper than the dump size).
    StackOutOfRange,
    /// The CFA or a saved register location was impossible (below SP, overflow, ...).
    BadCfa,
    /// The stack pointer did not move towards the stack base.
    Loop,
    /// [`MAX_FRAMES`] reached.
    MaxDepth,
    /// A return address of zero.
    ZeroRa,
}

impl StopReason {
    /// Short stable name for summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::ReachedEntry => "reached-entry",
            StopReason::EndOfStack => "end-of-stack",
            StopReason::NoMapping => "no-mapping",
            StopReason::NoUnwindInfo => "no-unwind-info",
            StopReason::StackOutOfRange => "stack-out-of-range",
            StopReason::BadCfa => "bad-cfa",
            StopReason::Loop => "loop",
            StopReason::MaxDepth => "max-depth",
            StopReason::ZeroRa => "zero-return-address",
        }
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Outcome of one unwind: how many addresses were pushed and why it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindResult {
    /// Addresses pushed.
    pub frames: usize,
    /// Why it stopped.
    pub reason: StopReason,
}

/// Per-process framehop state, kept in step with the process's executable mappings.
struct ProcState {
    incarnation: u64,
    exec_version: u64,
    framehop: UnwinderX86_64<SectionData>,
    modules: FxHashMap<MappingId, Arc<LoadedModule>>,
}

/// User-stack unwinder for all processes; see [`Unwinder::unwind_dwarf`].
pub struct Unwinder {
    store: ModuleStore,
    /// Looked up several times per sample: a fast hasher (keys are pids, not chosen by
    /// anyone psample does not trust to choose them).
    states: FxHashMap<u32, ProcState>,
    cache: CacheX86_64,
    seen_removals: u64,
    /// Scratch for [`Self::unwind_hybrid`]'s replay of the kernel's walk (no allocation per
    /// sample).
    pub(crate) hybrid_records: Vec<u64>,
}

impl Default for Unwinder {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a walk reads stack words from. Never the process itself: only bytes the kernel
/// handed over with the sample.
pub(crate) trait StackWords {
    /// The 8-byte word at `addr`, if known.
    fn read(&self, addr: u64) -> Result<u64, ()>;
    /// Classify a failed read at `addr`.
    fn failure(&self, addr: u64) -> StopReason;
}

/// Reads 8-byte words from the sampled stack copy only; the process itself is never read.
pub(crate) struct StackCopy<'a> {
    pub(crate) base: u64,
    pub(crate) bytes: &'a [u8],
}

impl StackWords for StackCopy<'_> {
    fn read(&self, addr: u64) -> Result<u64, ()> {
        StackCopy::read(self, addr)
    }
    fn failure(&self, addr: u64) -> StopReason {
        StackCopy::failure(self, addr)
    }
}

/// What a walk's step hook decides about the frame just unwound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Keep the frame and go on.
    Continue,
    /// Keep the frame and stop: the rest of the stack comes from elsewhere.
    Anchor,
    /// Drop the frame and stop with [`StopReason::StackOutOfRange`]: it was unwound from
    /// words the sample does not really hold.
    Refuse,
}

/// How a frame was unwound, for the step hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepKind {
    /// A return address read at `new_sp - 8` (the CFA minus 8, on x86_64 always).
    Return,
    /// The interrupted context restored from a signal frame.
    Signal,
}

/// How a DWARF walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WalkEnd {
    /// It stopped on its own, for this reason.
    Stopped(StopReason),
    /// The step hook anchored the last frame.
    Anchored,
}

impl StackCopy<'_> {
    fn read(&self, addr: u64) -> Result<u64, ()> {
        let offset = usize::try_from(addr.checked_sub(self.base).ok_or(())?).map_err(|_| ())?;
        let end = offset.checked_add(8).ok_or(())?;
        let word = self.bytes.get(offset..end).ok_or(())?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(word);
        Ok(u64::from_le_bytes(buf))
    }

    /// Classify a failed read at `addr`.
    fn failure(&self, addr: u64) -> StopReason {
        if addr >= self.base {
            StopReason::StackOutOfRange
        } else {
            StopReason::BadCfa
        }
    }
}

impl Unwinder {
    /// An unwinder with empty caches.
    pub fn new() -> Self {
        Self::with_resolver(default_resolver())
    }

    /// An unwinder that opens module files through `resolver` instead of
    /// `/proc/PID/root/...` (for recorded fixtures and offline use).
    pub fn with_resolver(resolver: FileResolver) -> Self {
        Self {
            store: ModuleStore::new(resolver),
            states: FxHashMap::default(),
            cache: CacheX86_64::new(),
            seen_removals: 0,
            hybrid_records: Vec::new(),
        }
    }

    /// DWARF CFI unwind (framehop), falling back to frame pointers per frame when a module
    /// has no CFI. Pushes absolute addresses, leaf first: `out[0] = regs.ip`, then return
    /// addresses (the caller subtracts 1 for lookups). Reads stack memory ONLY from `stack`
    /// (bytes copied at `regs.sp`; pass the `dyn_size` prefix of the sample's dump).
    pub fn unwind_dwarf(
        &mut self,
        procs: &Processes,
        pid: u32,
        regs: UserRegs,
        stack: &[u8],
        out: &mut Vec<u64>,
    ) -> UnwindResult {
        let first = out.len();
        out.push(regs.ip);
        let copy = StackCopy {
            base: regs.sp,
            bytes: stack,
        };
        let reason = match self.walk_dwarf(procs, pid, regs, &copy, out, first, |_, _, _| {
            Step::Continue
        }) {
            WalkEnd::Stopped(reason) => reason,
            // Not produced by a hook that never anchors; kept total for the compiler.
            WalkEnd::Anchored => StopReason::EndOfStack,
        };
        self.finish(procs, pid, out, first, reason)
    }

    /// Pure frame-pointer walk over the sampled bytes (for modules without CFI and for
    /// testing). Same output convention as [`Self::unwind_dwarf`].
    pub fn unwind_fp(
        &mut self,
        procs: &Processes,
        pid: u32,
        regs: UserRegs,
        stack: &[u8],
        out: &mut Vec<u64>,
    ) -> UnwindResult {
        let first = out.len();
        out.push(regs.ip);
        let reason = Self::walk_fp(procs, pid, regs, stack, out, first);
        self.finish(procs, pid, out, first, reason)
    }

    /// Whether `addr` (an IP or a return address) lies in a known thread entry function.
    /// Return addresses of `noreturn` calls can point just past the function, so `addr - 1`
    /// is checked too.
    pub fn is_thread_entry(&mut self, procs: &Processes, pid: u32, addr: u64) -> bool {
        [addr, addr.wrapping_sub(1)].into_iter().any(|a| {
            self.module_at(procs, pid, a)
                .and_then(|m| Some(m.file.is_entry(m.svma(a)?)))
                .unwrap_or(false)
        })
    }

    /// Like [`Self::is_thread_entry`] but only by symbol name (no CFI root markers).
    pub fn is_named_thread_entry(&mut self, procs: &Processes, pid: u32, addr: u64) -> bool {
        [addr, addr.wrapping_sub(1)].into_iter().any(|a| {
            self.module_at(procs, pid, a)
                .and_then(|m| Some(m.file.is_named_entry(m.svma(a)?)))
                .unwrap_or(false)
        })
    }

    /// Loads the modules of `pid`'s executable mappings now. Called before sampling starts,
    /// it keeps the first samples from stalling the ring reader while big binaries (node,
    /// 2.7 MB of `.eh_frame`) are read and scanned — at 999 Hz with 16 KiB stacks a stall of
    /// a few tenths of a second overflows the default rings.
    pub fn prepare(&mut self, procs: &Processes, pid: u32) {
        if !self.sync(procs, pid) {
            return;
        }
        let Some(space) = procs.space(pid) else {
            return;
        };
        let Some(state) = self.states.get_mut(&pid) else {
            return;
        };
        for (id, _) in procs.exec_mappings(space) {
            ensure_module(state, &mut self.store, procs, pid, id);
        }
    }

    /// Number of (parsed files, mapping modules) currently cached; for memory diagnostics.
    pub fn cache_sizes(&self) -> (usize, usize) {
        (self.store.cached_files(), self.store.cached_mappings())
    }

    pub(crate) fn finish(
        &mut self,
        procs: &Processes,
        pid: u32,
        out: &[u64],
        first: usize,
        reason: StopReason,
    ) -> UnwindResult {
        let frames = out.len() - first;
        let reason = match out.last() {
            Some(&last) if reason != StopReason::ReachedEntry => {
                if self.is_thread_entry(procs, pid, last) {
                    StopReason::ReachedEntry
                } else {
                    reason
                }
            }
            _ => reason,
        };
        UnwindResult { frames, reason }
    }

    fn module_at(&mut self, procs: &Processes, pid: u32, addr: u64) -> Option<Arc<LoadedModule>> {
        let id = procs.find(pid, addr)?;
        let mapping = procs.get(id)?;
        if !mapping.exec {
            return None;
        }
        if let Some(m) = self.states.get(&pid).and_then(|s| s.modules.get(&id)) {
            return Some(m.clone());
        }
        self.store.module(pid, id, mapping)
    }

    /// Bring `pid`'s framehop unwinder in line with its current executable mappings: drop
    /// modules whose mappings are gone. Modules are added as the walk meets them
    /// ([`ensure_module`]), or all at once for the targets named on the command line
    /// ([`Self::prepare`]): a process maps far more code than its stacks run through, and
    /// system-wide every process would otherwise have all its libraries parsed at its first
    /// sample.
    fn sync(&mut self, procs: &Processes, pid: u32) -> bool {
        if procs.removals() != self.seen_removals {
            self.seen_removals = procs.removals();
            self.states.retain(|pid, state| {
                procs
                    .space(*pid)
                    .is_some_and(|s| s.incarnation == state.incarnation)
            });
        }
        let Some(space) = procs.space(pid) else {
            self.states.remove(&pid);
            return false;
        };
        let state = self.states.entry(pid).or_insert_with(|| ProcState {
            incarnation: space.incarnation,
            exec_version: 0,
            framehop: UnwinderX86_64::new(),
            modules: FxHashMap::default(),
        });
        if state.incarnation != space.incarnation {
            *state = ProcState {
                incarnation: space.incarnation,
                exec_version: 0,
                framehop: UnwinderX86_64::new(),
                modules: FxHashMap::default(),
            };
        }
        if state.exec_version == space.exec_version {
            return true;
        }
        state.exec_version = space.exec_version;
        let wanted_ids: FxHashSet<MappingId> =
            procs.exec_mappings(space).map(|(id, _)| id).collect();
        let stale: Vec<MappingId> = state
            .modules
            .keys()
            .filter(|id| !wanted_ids.contains(id))
            .copied()
            .collect();
        for id in stale {
            if let Some(module) = state.modules.remove(&id) {
                state
                    .framehop
                    .remove_module(module.framehop.avma_range().start);
            }
        }
        true
    }

    /// The DWARF walk shared by [`Self::unwind_dwarf`] and [`Self::unwind_hybrid`]: pushes
    /// each return address it unwinds onto `out` after asking `hook` (return address, new
    /// stack pointer, kind of step) whether to keep it and go on.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn walk_dwarf<S: StackWords>(
        &mut self,
        procs: &Processes,
        pid: u32,
        regs: UserRegs,
        words: &S,
        out: &mut Vec<u64>,
        first: usize,
        mut hook: impl FnMut(u64, u64, StepKind) -> Step,
    ) -> WalkEnd {
        use WalkEnd::Stopped;
        if !self.sync(procs, pid) {
            return Stopped(StopReason::NoMapping);
        }
        let Some(state) = self.states.get_mut(&pid) else {
            return Stopped(StopReason::NoMapping);
        };
        let mut read_stack = |addr: u64| words.read(addr);
        let mut fh_regs = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
        let mut frame = FrameAddress::from_instruction_pointer(regs.ip);
        loop {
            if out.len() - first >= MAX_FRAMES {
                return Stopped(StopReason::MaxDepth);
            }
            let lookup = frame.address_for_lookup();
            let Some(id) = procs.find(pid, lookup) else {
                return Stopped(StopReason::NoMapping);
            };
            ensure_module(state, &mut self.store, procs, pid, id);
            let module = state.modules.get(&id);
            if module.is_none() && !procs.get(id).is_some_and(|m| m.exec) {
                return Stopped(StopReason::NoMapping);
            }
            let has_cfi = module.is_some_and(|m| m.file.has_cfi());

            let in_trampoline = module
                .and_then(|m| Some(m.file.is_signal_trampoline(m.svma(lookup)?)))
                .unwrap_or(false);
            if in_trampoline {
                let (ip, sp, bp) = match restore_sigframe(procs, pid, fh_regs.sp(), words) {
                    Ok(v) => v,
                    Err(reason) => return Stopped(reason),
                };
                if let Some(end) = apply(hook(ip, sp, StepKind::Signal), ip, out) {
                    return end;
                }
                fh_regs = UnwindRegsX86_64::new(ip, sp, bp);
                // The interrupted instruction has not executed: look it up as-is, not -1.
                frame = FrameAddress::from_instruction_pointer(ip);
                continue;
            }

            let prev_sp = fh_regs.sp();
            let step =
                state
                    .framehop
                    .unwind_frame(frame, &mut fh_regs, &mut self.cache, &mut read_stack);
            let moved = fh_regs.sp() > prev_sp;
            let ra = match step
                .map_err(|err| framehop_failure(err, has_cfi, words))
                .and_then(|ra| check_return(ra, moved, has_cfi, procs, pid))
            {
                Ok(ra) => ra,
                Err(reason) => return Stopped(reason),
            };
            if let Some(end) = apply(hook(ra, fh_regs.sp(), StepKind::Return), ra, out) {
                return end;
            }
            frame = match FrameAddress::from_return_address(ra) {
                Some(f) => f,
                None => return Stopped(StopReason::ZeroRa),
            };
        }
    }

    fn walk_fp(
        procs: &Processes,
        pid: u32,
        regs: UserRegs,
        stack: &[u8],
        out: &mut Vec<u64>,
        first: usize,
    ) -> StopReason {
        let copy = StackCopy {
            base: regs.sp,
            bytes: stack,
        };
        if procs.find(pid, regs.ip).is_none() {
            return StopReason::NoMapping;
        }
        let mut bp = regs.bp;
        let mut floor = regs.sp;
        loop {
            if out.len() - first >= MAX_FRAMES {
                return StopReason::MaxDepth;
            }
            if bp == 0 {
                return StopReason::EndOfStack;
            }
            if bp < floor || bp % 8 != 0 {
                return StopReason::BadCfa;
            }
            let Some(ra_slot) = bp.checked_add(8) else {
                return StopReason::BadCfa;
            };
            let next_bp = match copy.read(bp) {
                Ok(v) => v,
                Err(()) => return copy.failure(bp),
            };
            let ra = match copy.read(ra_slot) {
                Ok(v) => v,
                Err(()) => return copy.failure(ra_slot),
            };
            if ra == 0 {
                return StopReason::ZeroRa;
            }
            if procs.find(pid, ra - 1).is_none() {
                return StopReason::NoMapping;
            }
            out.push(ra);
            if next_bp != 0 && next_bp <= bp {
                return StopReason::Loop;
            }
            floor = bp + 16;
            bp = next_bp;
        }
    }
}

/// A return address framehop found (`None`: the CFI says the stack ends here), checked:
/// non-zero, with the stack pointer having `moved` up, and inside a mapping.
fn check_return(
    ra: Option<u64>,
    moved: bool,
    has_cfi: bool,
    procs: &Processes,
    pid: u32,
) -> Result<u64, StopReason> {
    let ra = ra.ok_or(StopReason::EndOfStack)?;
    if ra == 0 {
        return Err(StopReason::ZeroRa);
    }
    if !moved {
        return Err(StopReason::Loop);
    }
    if procs.find(pid, ra - 1).is_none() {
        return Err(if has_cfi {
            StopReason::NoMapping
        } else {
            StopReason::NoUnwindInfo
        });
    }
    Ok(ra)
}

/// Act on the step hook's verdict for the frame at `addr`: `Some` ends the walk.
fn apply(step: Step, addr: u64, out: &mut Vec<u64>) -> Option<WalkEnd> {
    match step {
        Step::Refuse => Some(WalkEnd::Stopped(StopReason::StackOutOfRange)),
        Step::Anchor => {
            out.push(addr);
            Some(WalkEnd::Anchored)
        }
        Step::Continue => {
            out.push(addr);
            None
        }
    }
}

/// Why a framehop step failed, as a [`StopReason`].
fn framehop_failure<S: StackWords>(err: framehop::Error, has_cfi: bool, words: &S) -> StopReason {
    if !has_cfi {
        return StopReason::NoUnwindInfo;
    }
    match err {
        framehop::Error::CouldNotReadStack(addr) => words.failure(addr),
        framehop::Error::DidNotAdvance => StopReason::Loop,
        framehop::Error::ReturnAddressIsNull => StopReason::ZeroRa,
        framehop::Error::FramepointerUnwindingMovedBackwards | framehop::Error::IntegerOverflow => {
            StopReason::BadCfa
        }
    }
}

/// The interrupted (ip, sp, bp) saved in the kernel's signal frame, with SP inside the
/// signal trampoline. framehop cannot evaluate the trampoline's DW_OP_deref CFA, so the
/// context is restored here.
fn restore_sigframe<S: StackWords>(
    procs: &Processes,
    pid: u32,
    sp: u64,
    words: &S,
) -> Result<(u64, u64, u64), StopReason> {
    let read = |off: u64| -> Result<u64, StopReason> {
        let addr = sp.checked_add(off).ok_or(StopReason::BadCfa)?;
        words.read(addr).map_err(|_| words.failure(addr))
    };
    let ip = read(sigframe::IP_OFFSET)?;
    let new_sp = read(sigframe::SP_OFFSET)?;
    let bp = read(sigframe::BP_OFFSET)?;
    if ip == 0 {
        return Err(StopReason::ZeroRa);
    }
    if new_sp <= sp {
        return Err(StopReason::BadCfa);
    }
    if procs.find(pid, ip).is_none() {
        return Err(StopReason::NoMapping);
    }
    Ok((ip, new_sp, bp))
}

/// Add the module of mapping `id` to `pid`'s unwinder if it is executable and loads (the
/// store remembers files that do not, so a failure costs one lookup per frame after that).
fn ensure_module(
    state: &mut ProcState,
    store: &mut ModuleStore,
    procs: &Processes,
    pid: u32,
    id: MappingId,
) {
    if state.modules.contains_key(&id) {
        return;
    }
    let Some(mapping) = procs.get(id).filter(|m| m.exec) else {
        return;
    };
    if let Some(module) = store.module(pid, id, mapping) {
        state.framehop.add_module(module.framehop.clone());
        state.modules.insert(id, module);
    }
}

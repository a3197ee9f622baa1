//! Online user-stack unwinding of sampled (registers, stack bytes) pairs.

use std::collections::{HashMap, HashSet};
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
    modules: HashMap<MappingId, Arc<LoadedModule>>,
}

/// User-stack unwinder for all processes; see [`Unwinder::unwind_dwarf`].
pub struct Unwinder {
    store: ModuleStore,
    states: HashMap<u32, ProcState>,
    cache: CacheX86_64,
    seen_removals: u64,
}

impl Default for Unwinder {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads 8-byte words from the sampled stack copy only; the process itself is never read.
struct StackCopy<'a> {
    base: u64,
    bytes: &'a [u8],
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
            states: HashMap::new(),
            cache: CacheX86_64::new(),
            seen_removals: 0,
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
        let reason = self.walk_dwarf(procs, pid, regs, stack, out, first);
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

    /// Number of (parsed files, mapping modules) currently cached; for memory diagnostics.
    pub fn cache_sizes(&self) -> (usize, usize) {
        (self.store.cached_files(), self.store.cached_mappings())
    }

    fn finish(
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

    /// Bring `pid`'s framehop unwinder in line with its current executable mappings.
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
            modules: HashMap::new(),
        });
        if state.incarnation != space.incarnation {
            *state = ProcState {
                incarnation: space.incarnation,
                exec_version: 0,
                framehop: UnwinderX86_64::new(),
                modules: HashMap::new(),
            };
        }
        if state.exec_version == space.exec_version {
            return true;
        }
        state.exec_version = space.exec_version;
        let wanted: Vec<_> = procs.exec_mappings(space).collect();
        let wanted_ids: HashSet<MappingId> = wanted.iter().map(|(id, _)| *id).collect();
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
        for (id, mapping) in wanted {
            if state.modules.contains_key(&id) {
                continue;
            }
            if let Some(module) = self.store.module(pid, id, mapping) {
                state.framehop.add_module(module.framehop.clone());
                state.modules.insert(id, module);
            }
        }
        true
    }

    fn walk_dwarf(
        &mut self,
        procs: &Processes,
        pid: u32,
        regs: UserRegs,
        stack: &[u8],
        out: &mut Vec<u64>,
        first: usize,
    ) -> StopReason {
        if !self.sync(procs, pid) {
            return StopReason::NoMapping;
        }
        let Some(state) = self.states.get(&pid) else {
            return StopReason::NoMapping;
        };
        let copy = StackCopy {
            base: regs.sp,
            bytes: stack,
        };
        let mut read_stack = |addr: u64| copy.read(addr);
        let mut fh_regs = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
        let mut frame = FrameAddress::from_instruction_pointer(regs.ip);
        loop {
            if out.len() - first >= MAX_FRAMES {
                return StopReason::MaxDepth;
            }
            let lookup = frame.address_for_lookup();
            let Some(id) = procs.find(pid, lookup) else {
                return StopReason::NoMapping;
            };
            let module = state.modules.get(&id);
            if module.is_none() && !procs.get(id).is_some_and(|m| m.exec) {
                return StopReason::NoMapping;
            }
            let has_cfi = module.is_some_and(|m| m.file.has_cfi());

            let in_trampoline = module
                .and_then(|m| Some(m.file.is_signal_trampoline(m.svma(lookup)?)))
                .unwrap_or(false);
            if in_trampoline {
                // framehop cannot evaluate the trampoline's DW_OP_deref CFA, so restore the
                // interrupted context from the kernel's sigframe ourselves.
                let sp = fh_regs.sp();
                let at = |off: u64| sp.checked_add(off).ok_or(StopReason::BadCfa);
                let read = |addr: Result<u64, StopReason>| -> Result<u64, StopReason> {
                    let addr = addr?;
                    copy.read(addr).map_err(|_| copy.failure(addr))
                };
                let restored = read(at(sigframe::IP_OFFSET)).and_then(|ip| {
                    Ok((
                        ip,
                        read(at(sigframe::SP_OFFSET))?,
                        read(at(sigframe::BP_OFFSET))?,
                    ))
                });
                let (ip, new_sp, bp) = match restored {
                    Ok(v) => v,
                    Err(reason) => return reason,
                };
                if ip == 0 {
                    return StopReason::ZeroRa;
                }
                if new_sp <= sp {
                    return StopReason::BadCfa;
                }
                if procs.find(pid, ip).is_none() {
                    return StopReason::NoMapping;
                }
                out.push(ip);
                fh_regs = UnwindRegsX86_64::new(ip, new_sp, bp);
                // The interrupted instruction has not executed: look it up as-is, not -1.
                frame = FrameAddress::from_instruction_pointer(ip);
                continue;
            }

            let prev_sp = fh_regs.sp();
            match state
                .framehop
                .unwind_frame(frame, &mut fh_regs, &mut self.cache, &mut read_stack)
            {
                Ok(Some(ra)) => {
                    if ra == 0 {
                        return StopReason::ZeroRa;
                    }
                    if fh_regs.sp() <= prev_sp {
                        return StopReason::Loop;
                    }
                    if procs.find(pid, ra - 1).is_none() {
                        return if has_cfi {
                            StopReason::NoMapping
                        } else {
                            StopReason::NoUnwindInfo
                        };
                    }
                    out.push(ra);
                    frame = match FrameAddress::from_return_address(ra) {
                        Some(f) => f,
                        None => return StopReason::ZeroRa,
                    };
                }
                Ok(None) => return StopReason::EndOfStack,
                Err(err) => {
                    if !has_cfi {
                        return StopReason::NoUnwindInfo;
                    }
                    return match err {
                        framehop::Error::CouldNotReadStack(addr) => copy.failure(addr),
                        framehop::Error::DidNotAdvance => StopReason::Loop,
                        framehop::Error::ReturnAddressIsNull => StopReason::ZeroRa,
                        framehop::Error::FramepointerUnwindingMovedBackwards
                        | framehop::Error::IntegerOverflow => StopReason::BadCfa,
                    };
                }
            }
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

//! Budgets: every amount of memory or work that something a profiled process controls can
//! make psample spend is capped here, in one place, and every cap that was hit is counted so
//! the end-of-run summary can say what was left out ([`report`]).
//!
//! Beyond a budget psample degrades instead of growing: a section too large to inflate leaves
//! its module without DWARF or CFI, a perf map is read only up to its caps (further JIT frames
//! show as `[jit]`), per-process code mappings beyond their cap are forgotten oldest first
//! (their frames show as `[jit]`), and a symbolizer over its memory cap stops loading new
//! files (their frames show as `module+0xOFFSET`).
//!
//! The counters are process-wide atomics: unwinding (the read loop) and symbolization (the
//! writer thread in continuous mode) both charge them, and the summary reads them once.

use crate::error::BudgetError;
use std::sync::atomic::{AtomicU64, Ordering};

const MIB: u64 = 1024 * 1024;

/// Largest compressed ELF section (`SHF_COMPRESSED`, `.zdebug_*`) psample inflates. Real
/// compressed debug sections are a few MiB (libc6-dbg's `.debug_info` inflates to 2.3 MiB);
/// a section declaring more is left compressed and its module goes without that data.
pub const SECTION_INFLATED_MAX: u64 = 32 * MIB;
/// Inflated section bytes held at once by the whole process (unwinder and symbolizer).
pub const INFLATED_HELD_MAX: u64 = 48 * MIB;

/// Bytes of one process's JIT map (`/tmp/perf-PID.map`) read. Maps only grow (runtimes
/// append every compiled function), so a larger file is read from its end: later lines
/// describe the code that is live now, and override earlier ones anyway.
pub const PERF_MAP_READ_MAX: u64 = 16 * MIB;
/// Address ranges kept from one process's JIT map.
pub const PERF_MAP_ENTRIES_MAX: usize = 200_000;
/// Bytes of function names kept from one process's JIT map.
pub const PERF_MAP_NAME_BYTES_MAX: usize = 8 * MIB as usize;
/// Longest JIT map line read; a longer name is cut to this many bytes.
pub const PERF_MAP_LINE_MAX: usize = 8 * 1024;

/// Mappings of one process held at once (the kernel's default `vm.max_map_count`: a process
/// cannot have more, so beyond it are unmaps psample was not told about); further ones are
/// not tracked and their frames show as `[unknown]`.
pub const CODE_MAPPINGS_LIVE_MAX: usize = 65_530;
/// Executable mappings of one process held at once (real processes have a few hundred). The
/// kernel reports no munmap, so churn looks like growth: beyond this the least recently
/// mapped is dropped from the process's map (retired, see below).
pub const CODE_MAPPINGS_LIVE_PER_PROCESS: usize = 4096;
/// Unmapped per-process code mappings (anonymous/JIT memory, deleted files) kept per process
/// so that frames already collected in them still symbolize; beyond it the oldest go.
pub const CODE_MAPPINGS_RETIRED_PER_PROCESS: usize = 4096;
/// The same, over all processes together.
pub const CODE_MAPPINGS_RETIRED_MAX: usize = 32_768;

/// Function symbols kept from one file (with its debug file and MiniDebugInfo); the largest
/// real binaries have about a million. Beyond it further symbols are not kept.
pub const SYMBOLS_PER_FILE_MAX: usize = 2_000_000;
/// Bytes of symbol names kept from one file: names are indexed only from this many bytes of
/// its string tables (together).
pub const SYMBOL_NAME_BYTES_PER_FILE_MAX: usize = 64 * MIB as usize;
/// Compilation units and address ranges the DWARF index keeps of one file.
pub const DWARF_UNITS_PER_FILE_MAX: usize = 1_000_000;
/// Address ranges of DWARF units indexed per file.
pub const DWARF_RANGES_PER_FILE_MAX: usize = 2_000_000;
/// Bytes of an uncompressed CFI section (`.eh_frame`, `.debug_frame`) the unwinder copies;
/// real ones are a few MiB (a browser's `.eh_frame` is about 10 MiB).
pub const CFI_SECTION_COPY_MAX: u64 = 64 * MIB;

/// Estimated heap a symbolizer may hold (parsed symbol tables, DWARF indexes, cached
/// answers, JIT maps). Over it, files not loaded yet stay unsymbolized.
pub const SYMBOLIZER_HEAP_MAX: usize = 256 * MIB as usize;
/// Cached per-address answers of one parsed file; the cache is cleared when it is full.
pub const ANSWERS_PER_FILE_MAX: usize = 65_536;

/// What was left out because a budget was reached, since the process started.
struct Hits {
    sections_refused: AtomicU64,
    section_bytes_refused: AtomicU64,
    inflated_held: AtomicU64,
    perf_maps_truncated: AtomicU64,
    perf_map_bytes_unread: AtomicU64,
    code_mappings_evicted: AtomicU64,
    code_mappings_untracked: AtomicU64,
    code_mappings_dropped: AtomicU64,
    files_unsymbolized: AtomicU64,
    files_capped: AtomicU64,
}

static HITS: Hits = Hits {
    sections_refused: AtomicU64::new(0),
    section_bytes_refused: AtomicU64::new(0),
    inflated_held: AtomicU64::new(0),
    perf_maps_truncated: AtomicU64::new(0),
    perf_map_bytes_unread: AtomicU64::new(0),
    code_mappings_evicted: AtomicU64::new(0),
    code_mappings_untracked: AtomicU64::new(0),
    code_mappings_dropped: AtomicU64::new(0),
    files_unsymbolized: AtomicU64::new(0),
    files_capped: AtomicU64::new(0),
};

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Inflated bytes accounted against [`INFLATED_HELD_MAX`]; given back when dropped.
#[derive(Debug)]
pub struct InflateCharge(u64);

impl InflateCharge {
    /// Reserves `len` inflated bytes for one section, or says why not (and counts the refusal).
    pub fn reserve(len: u64) -> Result<InflateCharge, BudgetError> {
        if len > SECTION_INFLATED_MAX {
            refuse_section(len);
            return Err(BudgetError::Section {
                mib: len / MIB,
                max_mib: SECTION_INFLATED_MAX / MIB,
            });
        }
        let held = &HITS.inflated_held;
        let mut now = held.load(Ordering::Relaxed);
        loop {
            if now.saturating_add(len) > INFLATED_HELD_MAX {
                refuse_section(len);
                return Err(BudgetError::Held {
                    mib: len.div_ceil(MIB),
                    max_mib: INFLATED_HELD_MAX / MIB,
                });
            }
            match held.compare_exchange_weak(now, now + len, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(InflateCharge(len)),
                Err(actual) => now = actual,
            }
        }
    }
}

impl Drop for InflateCharge {
    fn drop(&mut self) {
        HITS.inflated_held.fetch_sub(self.0, Ordering::Relaxed);
    }
}

fn refuse_section(len: u64) {
    bump(&HITS.sections_refused, 1);
    bump(&HITS.section_bytes_refused, len);
}

/// Inflated section bytes held right now (tests check that they are given back).
pub fn inflated_held() -> u64 {
    HITS.inflated_held.load(Ordering::Relaxed)
}

pub(crate) fn perf_map_truncated(bytes_unread: u64) {
    bump(&HITS.perf_maps_truncated, 1);
    bump(&HITS.perf_map_bytes_unread, bytes_unread);
}

/// A per-process code mapping was forgotten to stay within the retired-mapping budget.
pub fn code_mapping_evicted() {
    bump(&HITS.code_mappings_evicted, 1);
}

/// A process had [`CODE_MAPPINGS_LIVE_PER_PROCESS`] executable mappings; its oldest
/// was dropped from its map.
pub fn code_mapping_dropped() {
    bump(&HITS.code_mappings_dropped, 1);
}

/// A process had [`CODE_MAPPINGS_LIVE_MAX`] mappings; one more was not tracked.
pub fn code_mapping_untracked() {
    bump(&HITS.code_mappings_untracked, 1);
}

/// A file had more symbols, DWARF units or ranges, or CFI than kept of one file.
pub fn file_capped() {
    bump(&HITS.files_capped, 1);
}

pub(crate) fn file_unsymbolized() {
    bump(&HITS.files_unsymbolized, 1);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// One line per budget that was hit since the process started, for the summary; empty when
/// none was.
pub fn report() -> Vec<String> {
    let mut out = Vec::new();
    let refused = get(&HITS.sections_refused);
    if refused > 0 {
        out.push(format!(
            "{refused} compressed section(s) (declaring {} MiB) not inflated: over {} MiB each or \
             {} MiB held; their modules have no DWARF/CFI from them",
            get(&HITS.section_bytes_refused) / MIB,
            SECTION_INFLATED_MAX / MIB,
            INFLATED_HELD_MAX / MIB
        ));
    }
    let maps = get(&HITS.perf_maps_truncated);
    if maps > 0 {
        out.push(format!(
            "{maps} JIT map(s) read only in part ({} MiB left unread: over {} MiB, {} entries \
             or {} MiB of names); JIT frames they do not name show as [anon]+0xOFFSET",
            get(&HITS.perf_map_bytes_unread) / MIB,
            PERF_MAP_READ_MAX / MIB,
            PERF_MAP_ENTRIES_MAX,
            PERF_MAP_NAME_BYTES_MAX as u64 / MIB
        ));
    }
    let evicted = get(&HITS.code_mappings_evicted);
    let dropped = get(&HITS.code_mappings_dropped);
    let untracked = get(&HITS.code_mappings_untracked);
    if evicted > 0 || dropped > 0 || untracked > 0 {
        out.push(format!(
            "code mappings: {dropped} dropped from their process's map (over \
             {CODE_MAPPINGS_LIVE_PER_PROCESS} executable ones in one process; the kernel \
             reports no munmap), {evicted} unmapped ones forgotten (over \
             {CODE_MAPPINGS_RETIRED_PER_PROCESS} per process or {CODE_MAPPINGS_RETIRED_MAX} in \
             all; their frames show as [jit]), {untracked} not tracked (over \
             {CODE_MAPPINGS_LIVE_MAX} mappings in one process)"
        ));
    }
    let capped = get(&HITS.files_capped);
    if capped > 0 {
        out.push(format!(
            "{capped} time(s) a file had more than psample keeps of one file ({} symbols, \
             {} MiB of names, {} DWARF units or {} ranges, {} MiB of CFI); the rest is not used",
            SYMBOLS_PER_FILE_MAX,
            SYMBOL_NAME_BYTES_PER_FILE_MAX as u64 / MIB,
            DWARF_UNITS_PER_FILE_MAX,
            DWARF_RANGES_PER_FILE_MAX,
            CFI_SECTION_COPY_MAX / MIB
        ));
    }
    let unsym = get(&HITS.files_unsymbolized);
    if unsym > 0 {
        out.push(format!(
            "{unsym} file(s) left unsymbolized: the symbolizer held its {} MiB budget",
            SYMBOLIZER_HEAP_MAX as u64 / MIB
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_over_budget_and_given_back() {
        assert!(InflateCharge::reserve(SECTION_INFLATED_MAX + 1).is_err());
        // Charges held at once are bounded whatever their sizes.
        let mut held = Vec::new();
        while let Ok(c) = InflateCharge::reserve(SECTION_INFLATED_MAX / 4) {
            held.push(c);
            assert!(held.len() as u64 <= INFLATED_HELD_MAX / (SECTION_INFLATED_MAX / 4));
        }
        assert!(inflated_held() <= INFLATED_HELD_MAX);
        held.clear();
        assert!(InflateCharge::reserve(SECTION_INFLATED_MAX / 4).is_ok());
        assert!(report().iter().any(|l| l.contains("compressed section(s)")));
    }
}

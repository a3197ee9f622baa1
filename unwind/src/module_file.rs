//! What the unwinder needs from one ELF file: CFI sections, load segments (to relate file
//! offsets to addresses), the thread-entry functions, and the FDEs that mark signal
//! trampolines and stack roots. Parsed once per file and shared through an `Arc`.
//!
//! Files are untrusted: every lookup is bounds-checked and a malformed part is dropped
//! instead of failing the whole module.

use std::ops::Range;

use gimli::{
    BaseAddresses, CallFrameInstruction, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian,
    UnwindSection,
};
use object::{Object, ObjectSection, ObjectSegment, ReadRef, SegmentFlags};
use symbolize::budget::CFI_SECTION_COPY_MAX;
use symbolize::compressed::section_contents;
use symbolize::FileBytes;

use crate::entry_symbols::{self, ReadAt};

/// Function names at which a user stack legitimately ends (glibc, musl, bionic-like libcs).
pub(crate) const THREAD_ENTRY_NAMES: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_main_impl",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "__clone",
    "clone3",
    "__clone3",
    "_start_c",
];

/// Upper bound on FDEs scanned per file, so a hostile `.eh_frame` cannot stall loading.
const MAX_FDES_SCANNED: usize = 2_000_000;

#[derive(Clone, Debug)]
struct LoadSegment {
    offset: u64,
    vaddr: u64,
    filesz: u64,
    exec: bool,
}

/// A section's bytes plus its stated address. Inflated sections hold their budget charge
/// for as long as any framehop module uses them.
#[derive(Clone, Debug)]
pub(crate) struct SectionBytes {
    pub svma: Range<u64>,
    pub data: FileBytes,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct ModuleFile {
    pub build_id: Option<Vec<u8>>,
    segments: Vec<LoadSegment>,
    pub text_svma: Option<Range<u64>>,
    pub got_svma: Option<Range<u64>>,
    pub eh_frame: Option<SectionBytes>,
    pub eh_frame_hdr: Option<SectionBytes>,
    pub debug_frame: Option<FileBytes>,
    /// Sorted, stated addresses of functions named in [`THREAD_ENTRY_NAMES`] (and the FDE
    /// around the ELF entry point, which is `_start` even in stripped executables).
    entry_ranges: Vec<Range<u64>>,
    /// FDEs whose CFI declares the return address undefined: the toolchain's own
    /// "outermost frame" marker (`_start`, `clone`, `clone3` child paths).
    root_ranges: Vec<Range<u64>>,
    /// FDEs of signal trampolines (CIE augmentation `S`), e.g. glibc `__restore_rt`.
    signal_ranges: Vec<Range<u64>>,
}

/// Inputs needed to go looking for a separate debug file.
pub(crate) struct DebugHints {
    /// `.gnu_debuglink`: file name and CRC.
    pub debuglink: Option<(String, u32)>,
    pub wants_symbols: bool,
    pub wants_cfi: bool,
}

impl ModuleFile {
    /// Parse an ELF image (`data` for object's parser, `raw` the same bytes for streamed
    /// reads). Returns `None` for non-ELF or unparsable files.
    pub(crate) fn parse<'a, R: ReadRef<'a>>(
        data: R,
        raw: &(impl ReadAt + ?Sized),
    ) -> Option<(ModuleFile, DebugHints)> {
        let file = object::File::parse(data).ok()?;
        if file.format() != object::BinaryFormat::Elf {
            return None;
        }
        let mut module = ModuleFile {
            build_id: file.build_id().ok().flatten().map(<[u8]>::to_vec),
            ..ModuleFile::default()
        };
        for segment in file.segments() {
            let (offset, filesz) = segment.file_range();
            let exec = matches!(segment.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0);
            module.segments.push(LoadSegment {
                offset,
                vaddr: segment.address(),
                filesz,
                exec,
            });
        }
        let range_of = |name: &str| {
            let s = file.section_by_name(name)?;
            Some(s.address()..s.address().checked_add(s.size())?)
        };
        let bytes_of = |name: &str| -> Option<SectionBytes> {
            let s = file.section_by_name(name)?;
            // Compressed sections are inflated within budget, plain ones copied within it
            // (symbolize::budget).
            if s.size() > CFI_SECTION_COPY_MAX {
                symbolize::budget::file_capped();
                return None;
            }
            let data = section_contents(&s).ok()?.into_file_bytes();
            if data.is_empty() {
                return None;
            }
            Some(SectionBytes {
                svma: s.address()..s.address().checked_add(s.size())?,
                data,
            })
        };
        module.text_svma = range_of(".text");
        module.got_svma = range_of(".got");
        module.eh_frame = bytes_of(".eh_frame");
        module.eh_frame_hdr = bytes_of(".eh_frame_hdr").filter(has_search_table);
        module.debug_frame = bytes_of(".debug_frame").map(|s| s.data);

        let has_symtab = file.section_by_name(".symtab").is_some();
        module.add_entry_symbols(&file, raw);
        let debuglink = file
            .gnu_debuglink()
            .ok()
            .flatten()
            .and_then(|(name, crc)| Some((std::str::from_utf8(name).ok()?.to_string(), crc)));
        let hints = DebugHints {
            debuglink,
            wants_symbols: !has_symtab,
            wants_cfi: module.eh_frame.is_none() && module.debug_frame.is_none(),
        };
        module.scan_cfi(file.entry());
        module.finish();
        Some((module, hints))
    }

    /// Take what the main file lacks from its separate debug file.
    pub(crate) fn merge_debug_file<'a, R: ReadRef<'a>>(
        &mut self,
        data: R,
        raw: &(impl ReadAt + ?Sized),
        hints: &DebugHints,
    ) {
        let Ok(file) = object::File::parse(data) else {
            return;
        };
        if let (Some(ours), Ok(Some(theirs))) = (&self.build_id, file.build_id()) {
            if ours.as_slice() != theirs {
                return;
            }
        }
        if hints.wants_symbols {
            self.add_entry_symbols(&file, raw);
        }
        if hints.wants_cfi {
            if let Some(s) = file
                .section_by_name(".debug_frame")
                .filter(|s| s.size() <= CFI_SECTION_COPY_MAX)
            {
                if let Ok(data) = section_contents(&s) {
                    let data = data.into_file_bytes();
                    if !data.is_empty() {
                        self.debug_frame = Some(data);
                        self.scan_cfi(0);
                    }
                }
            }
        }
        self.finish();
    }

    fn add_entry_symbols<'a, R: ReadRef<'a>>(
        &mut self,
        file: &object::File<'a, R>,
        raw: &(impl ReadAt + ?Sized),
    ) {
        self.entry_ranges
            .extend(entry_symbols::find(file, raw, THREAD_ENTRY_NAMES));
    }

    fn scan_cfi(&mut self, entry_point: u64) {
        let mut bases = BaseAddresses::default();
        if let Some(text) = &self.text_svma {
            bases = bases.set_text(text.start);
        }
        if let Some(got) = &self.got_svma {
            bases = bases.set_got(got.start);
        }
        if let Some(hdr) = &self.eh_frame_hdr {
            bases = bases.set_eh_frame_hdr(hdr.svma.start);
        }
        let mut found = CfiMarks::default();
        if let Some(eh) = &self.eh_frame {
            let bases = bases.clone().set_eh_frame(eh.svma.start);
            let section = EhFrame::new(&eh.data, LittleEndian);
            scan_section(&section, &bases, entry_point, &mut found);
        } else if let Some(debug_frame) = &self.debug_frame {
            let mut section = DebugFrame::new(debug_frame, LittleEndian);
            section.set_address_size(8);
            scan_section(&section, &bases, entry_point, &mut found);
        }
        self.root_ranges.extend(found.roots);
        self.signal_ranges.extend(found.signals);
        self.entry_ranges.extend(found.entry);
    }

    fn finish(&mut self) {
        for ranges in [
            &mut self.entry_ranges,
            &mut self.root_ranges,
            &mut self.signal_ranges,
        ] {
            ranges.sort_by_key(|r| (r.start, r.end));
            ranges.dedup();
        }
    }

    pub(crate) fn has_cfi(&self) -> bool {
        self.eh_frame.is_some() || self.debug_frame.is_some()
    }

    /// Process address of stated address 0 for a mapping of this file at `start` with file
    /// offset `pgoff`, from the load segment that covers `pgoff`.
    pub(crate) fn base_avma(&self, start: u64, pgoff: u64) -> Option<u64> {
        let covers = |s: &&LoadSegment| {
            let aligned = s.offset & !0xfff;
            aligned <= pgoff && pgoff < s.offset.saturating_add(s.filesz.max(1))
        };
        let segment = self.segments.iter().filter(covers).max_by_key(|s| s.exec)?;
        // avma(f) = start + (f - pgoff) and svma(f) = f + (vaddr - offset), for file offset f.
        let bias = segment.vaddr.wrapping_sub(segment.offset);
        Some(start.wrapping_sub(pgoff).wrapping_sub(bias))
    }

    pub(crate) fn is_entry(&self, svma: u64) -> bool {
        contains(&self.entry_ranges, svma) || contains(&self.root_ranges, svma)
    }

    pub(crate) fn is_named_entry(&self, svma: u64) -> bool {
        contains(&self.entry_ranges, svma)
    }

    pub(crate) fn is_signal_trampoline(&self, svma: u64) -> bool {
        contains(&self.signal_ranges, svma)
    }
}

/// `.eh_frame_hdr` without a binary search table (fde_count or table encoding omitted) is
/// useless to framehop's lookup; dropping it makes framehop index `.eh_frame` itself.
fn has_search_table(hdr: &SectionBytes) -> bool {
    const DW_EH_PE_OMIT: u8 = 0xff;
    matches!(hdr.data.get(..4), Some(&[1, _, count, table]) if count != DW_EH_PE_OMIT && table != DW_EH_PE_OMIT)
}

fn contains(sorted: &[Range<u64>], addr: u64) -> bool {
    // Ranges may overlap (symbols and FDEs of the same function), so check the candidates
    // starting at or before `addr` from the nearest one backwards, bounded.
    let idx = sorted.partition_point(|r| r.start <= addr);
    sorted[..idx].iter().rev().take(8).any(|r| addr < r.end)
}

#[derive(Default)]
struct CfiMarks {
    roots: Vec<Range<u64>>,
    signals: Vec<Range<u64>>,
    entry: Vec<Range<u64>>,
}

type Slice<'a> = EndianSlice<'a, LittleEndian>;

fn scan_section<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    entry_point: u64,
    out: &mut CfiMarks,
) {
    let mut entries = section.entries(bases);
    let mut scanned = 0usize;
    while let Ok(Some(entry)) = entries.next() {
        scanned += 1;
        if scanned > MAX_FDES_SCANNED {
            break;
        }
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        let start = fde.initial_address();
        let range = start..start.saturating_add(fde.len());
        if range.is_empty() {
            continue;
        }
        if fde.is_signal_trampoline() {
            out.signals.push(range.clone());
        }
        let undefined_ra = |mut iter: gimli::CallFrameInstructionIter<'_, Slice<'a>>| {
            let mut steps = 0;
            while let Ok(Some(insn)) = iter.next() {
                steps += 1;
                if steps > 10_000 {
                    break;
                }
                if let CallFrameInstruction::Undefined { register } = insn {
                    if register == gimli::X86_64::RA {
                        return true;
                    }
                }
            }
            false
        };
        if undefined_ra(fde.cie().instructions(section, bases))
            || undefined_ra(fde.instructions(section, bases))
        {
            out.roots.push(range.clone());
        }
        if entry_point != 0 && range.contains(&entry_point) {
            out.entry.push(range);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_handles_overlaps_and_edges() {
        let ranges = vec![0..100, 10..20, 200..300];
        assert!(contains(&ranges, 0));
        assert!(contains(&ranges, 50));
        assert!(contains(&ranges, 15));
        assert!(!contains(&ranges, 100));
        assert!(contains(&ranges, 299));
        assert!(!contains(&ranges, 300));
        assert!(!contains(&[], 5));
    }

    #[test]
    fn garbage_is_not_a_module() {
        let garbage = b"\x7fELF garbage";
        assert!(ModuleFile::parse(&garbage[..], &garbage[..]).is_none());
        assert!(ModuleFile::parse(&[0u8; 0][..], &[0u8; 0][..]).is_none());
    }

    #[test]
    fn own_executable_has_cfi_and_maps_base() {
        let exe = std::fs::read("/proc/self/exe").expect("read own exe");
        let (module, _) = ModuleFile::parse(&exe[..], &exe[..]).expect("own exe parses");
        assert!(module.has_cfi());
        assert!(module.eh_frame_hdr.is_some());
        // A mapping at 0x5555_0000_0000 with pgoff 0 maps the first load segment.
        let base = module
            .base_avma(0x5555_0000_0000, 0)
            .expect("segment covers 0");
        assert_eq!(base, 0x5555_0000_0000);
    }
}

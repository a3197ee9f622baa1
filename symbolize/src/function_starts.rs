//! Function boundaries without symbols, from call-frame information.
//!
//! Distro binaries are stripped to `.dynsym`, so their static functions have no name; but
//! every function the compiler emitted still has an FDE in `.eh_frame` (or `.debug_frame`)
//! whose range is exactly that function. Naming an unnamed address by the start of the FDE
//! that covers it turns dozens of `module+0xOFFSET` siblings of one function into one frame
//! per function (perf merges them all into `[unknown]`, losing the structure instead).
//!
//! Where `.eh_frame_hdr` has its binary search table (every linker writes one), lookups go
//! through it in place: no memory beyond the mapped file, and only the pages of the FDEs hit
//! are read. Otherwise the FDEs are scanned once into a compact sorted table.

use gimli::{BaseAddresses, DebugFrame, EhFrame, EhFrameHdr, ParsedEhFrameHdr, UnwindSection};
use object::{Object, ObjectSection};

use crate::bytes::{FileBytes, Reader};
use crate::dwarf;

/// FDEs kept from a scan (12 bytes each); past this a hostile or absurd file is not worth
/// more memory, and the remaining addresses keep the `module+0xOFFSET` form.
const MAX_SCANNED_FDES: usize = 1_000_000;

pub(crate) struct HdrTable {
    hdr: ParsedEhFrameHdr<Reader>,
    eh_frame: EhFrame<Reader>,
    bases: BaseAddresses,
}

pub(crate) enum FunctionStarts {
    /// Binary search through `.eh_frame_hdr`, reading FDEs in place.
    HdrTable(Box<HdrTable>),
    /// FDE ranges collected once: sorted starts, with their lengths alongside.
    Scanned {
        starts: Vec<u64>,
        lens: Vec<u32>,
    },
    None,
}

impl FunctionStarts {
    /// From the binary's own CFI, else from the CFI in its separate debug file (which has
    /// `.debug_frame` when the binary's `.eh_frame` is missing).
    pub fn load(
        main: (&object::File<'_>, &FileBytes),
        debug: Option<(&object::File<'_>, &FileBytes)>,
    ) -> FunctionStarts {
        let from_main = from_file(main.0, main.1);
        if !matches!(from_main, FunctionStarts::None) {
            return from_main;
        }
        match debug {
            Some((obj, data)) => from_file(obj, data),
            None => FunctionStarts::None,
        }
    }

    /// Whether lookups read the mapped file in place (and so must stop once it shrank).
    pub fn reads_file(&self) -> bool {
        matches!(self, FunctionStarts::HdrTable(_))
    }

    /// Heap held (for the symbolizer's memory budget).
    pub fn heap_bytes(&self) -> usize {
        match self {
            FunctionStarts::Scanned { starts, lens } => {
                starts.capacity() * size_of::<u64>() + lens.capacity() * size_of::<u32>()
            }
            FunctionStarts::HdrTable(_) => size_of::<HdrTable>(),
            FunctionStarts::None => 0,
        }
    }

    /// Start (ELF virtual address) of the function whose FDE covers `vaddr`.
    pub fn start_of(&self, vaddr: u64) -> Option<u64> {
        match self {
            FunctionStarts::HdrTable(t) => {
                let fde = t
                    .hdr
                    .table()?
                    .fde_for_address(&t.eh_frame, &t.bases, vaddr, EhFrame::cie_from_offset)
                    .ok()?;
                Some(fde.initial_address())
            }
            FunctionStarts::Scanned { starts, lens } => {
                let idx = starts.partition_point(|&s| s <= vaddr).checked_sub(1)?;
                let (start, len) = (*starts.get(idx)?, *lens.get(idx)?);
                (vaddr - start < u64::from(len)).then_some(start)
            }
            FunctionStarts::None => None,
        }
    }
}

fn endian(obj: &object::File<'_>) -> gimli::RunTimeEndian {
    if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    }
}

fn address_size(obj: &object::File<'_>) -> u8 {
    if obj.is_64() {
        8
    } else {
        4
    }
}

/// A section's bytes (inflated if compressed, within budget) and address.
fn section(obj: &object::File<'_>, data: &FileBytes, name: &str) -> Option<(Reader, u64)> {
    let sec = obj.section_by_name(name)?;
    if sec.kind() == object::SectionKind::UninitializedData {
        // Debug files keep .eh_frame as NOBITS: the name is there, the bytes are not.
        return None;
    }
    let bytes = dwarf::section(obj, data, name);
    if bytes.is_empty() {
        return None;
    }
    Some((gimli::EndianReader::new(bytes, endian(obj)), sec.address()))
}

fn bases_of(obj: &object::File<'_>) -> BaseAddresses {
    let mut bases = BaseAddresses::default();
    if let Some(text) = obj.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = obj.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    bases
}

fn from_file(obj: &object::File<'_>, data: &FileBytes) -> FunctionStarts {
    let bases = bases_of(obj);
    if let Some((eh, eh_addr)) = section(obj, data, ".eh_frame") {
        let mut eh_frame = EhFrame::from(eh);
        eh_frame.set_address_size(address_size(obj));
        let bases = bases.set_eh_frame(eh_addr);
        if let Some((hdr, hdr_addr)) = section(obj, data, ".eh_frame_hdr") {
            let bases = bases.clone().set_eh_frame_hdr(hdr_addr);
            if let Ok(parsed) = EhFrameHdr::from(hdr).parse(&bases, address_size(obj)) {
                if parsed.table().is_some() {
                    return FunctionStarts::HdrTable(Box::new(HdrTable {
                        hdr: parsed,
                        eh_frame,
                        bases,
                    }));
                }
            }
        }
        return scanned(&eh_frame, &bases);
    }
    if let Some((df, _)) = section(obj, data, ".debug_frame") {
        let mut debug_frame = DebugFrame::from(df);
        debug_frame.set_address_size(address_size(obj));
        return scanned(&debug_frame, &bases);
    }
    FunctionStarts::None
}

/// Every FDE's range, sorted by start (bounded by [`MAX_SCANNED_FDES`]).
fn scanned<S: UnwindSection<Reader>>(section: &S, bases: &BaseAddresses) -> FunctionStarts {
    let mut ranges: Vec<(u64, u32)> = Vec::new();
    let mut entries = section.entries(bases);
    while let Ok(Some(entry)) = entries.next() {
        let gimli::CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        let Ok(len) = u32::try_from(fde.len()) else {
            continue;
        };
        if len > 0 {
            ranges.push((fde.initial_address(), len));
        }
        if ranges.len() >= MAX_SCANNED_FDES {
            break;
        }
    }
    if ranges.is_empty() {
        return FunctionStarts::None;
    }
    ranges.sort_unstable();
    // Of FDEs sharing a start the longest describes the function.
    ranges.dedup_by(|later, kept| {
        if later.0 == kept.0 {
            kept.1 = kept.1.max(later.1);
            true
        } else {
            false
        }
    });
    let (starts, lens) = ranges.into_iter().unzip();
    FunctionStarts::Scanned { starts, lens }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_exe() -> (FileBytes, Vec<u8>) {
        let data = std::fs::read("/proc/self/exe").expect("own exe");
        (FileBytes::owned(data.clone()), data)
    }

    #[test]
    fn hdr_table_and_scan_agree_on_own_executable() {
        let (bytes, _) = own_exe();
        let obj = object::File::parse(&*bytes).expect("elf");
        let table = from_file(&obj, &bytes);
        assert!(matches!(table, FunctionStarts::HdrTable(_)));
        let (eh, eh_addr) = section(&obj, &bytes, ".eh_frame").expect("eh_frame");
        let mut eh_frame = EhFrame::from(eh);
        eh_frame.set_address_size(8);
        let scan = scanned(&eh_frame, &bases_of(&obj).set_eh_frame(eh_addr));
        let FunctionStarts::Scanned { starts, lens } = &scan else {
            panic!("own executable has FDEs");
        };
        assert!(starts.len() > 100);
        for (i, (&s, &l)) in starts.iter().zip(lens).enumerate().step_by(37) {
            for probe in [s, s + u64::from(l) / 2, s + u64::from(l) - 1] {
                assert_eq!(scan.start_of(probe), Some(s), "scan, fde {i}");
                assert_eq!(table.start_of(probe), Some(s), "hdr table, fde {i}");
            }
        }
        assert_eq!(table.start_of(1), None);
        assert_eq!(scan.start_of(1), None);
    }

    #[test]
    fn garbage_has_no_function_starts() {
        let bytes = FileBytes::owned(b"\x7fELF not really".to_vec());
        if let Ok(obj) = object::File::parse(&*bytes) {
            assert!(matches!(from_file(&obj, &bytes), FunctionStarts::None));
        }
    }
}

//! DWARF function and inline-frame lookup over gimli, reading sections in place from the
//! mapped file.
//!
//! Memory is the constraint here: a profiler symbolizes a handful of addresses per library,
//! while a distribution's debug file (libc6-dbg) holds thousands of compilation units. So
//! loading builds only an address → unit index ([`index`]); a unit's abbreviations, function
//! ranges and line table are parsed when an address in it is first looked up and kept in a
//! small most-recently-used cache ([`unit`]). The answers match `addr2line::Context`'s.
//!
//! Measured on libc6-dbg's debug file (2063 units): `addr2line::Context::from_dwarf` kept
//! ~22 MB of parsed units for a few lookups; this index costs a few hundred KB plus the
//! units actually hit.

mod index;
mod unit;

#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::rc::Rc;

use object::{Object, ObjectSection};

use crate::bytes::{FileBytes, Reader};

use index::UnitIndex;
use unit::ParsedUnit;

/// Inline nesting deeper than this is cut off; real code rarely exceeds a few dozen.
const MAX_INLINE_DEPTH: usize = 256;
/// Parsed units kept around. Samples cluster in few units (hot loops, libc's memcpy), so a
/// small cache gets nearly every hit while bounding what one huge debug file can cost.
const UNIT_CACHE: usize = 16;

/// One (possibly inlined) function at an address, as DWARF describes it.
pub(crate) struct DwarfFrame {
    pub name: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

pub(crate) struct DwarfInfo {
    dwarf: gimli::Dwarf<Reader>,
    index: UnitIndex,
    /// Most recently used first.
    cache: RefCell<Vec<Rc<ParsedUnit>>>,
}

impl DwarfInfo {
    /// `None` when `obj` has no usable DWARF.
    pub fn load(obj: &object::File<'_>, data: &FileBytes) -> Option<DwarfInfo> {
        if !has_debug_info(obj) {
            return None;
        }
        let endian = if obj.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
            // Variable location lists, type units and macros say nothing about which function
            // is at an address; skipping them keeps compressed debug files (e.g. libc6-dbg's)
            // from being inflated into memory for nothing.
            let bytes = match id {
                gimli::SectionId::DebugLoc
                | gimli::SectionId::DebugLocLists
                | gimli::SectionId::DebugTypes
                | gimli::SectionId::DebugMacinfo
                | gimli::SectionId::DebugMacro => empty_section(),
                _ => section(obj, data, id.name()),
            };
            Ok(gimli::EndianReader::new(bytes, endian))
        };
        let mut dwarf = gimli::Dwarf::load(load).ok()?;
        let index = UnitIndex::build(&dwarf);
        // The index holds everything .debug_aranges said; when the section was compressed its
        // inflated copy would otherwise stay alive for nothing.
        dwarf.debug_aranges = gimli::EndianReader::new(empty_section(), endian).into();
        if index.is_empty() {
            return None;
        }
        Some(DwarfInfo {
            dwarf,
            index,
            cache: RefCell::new(Vec::new()),
        })
    }

    /// Functions covering `vaddr`, innermost (most deeply inlined) first, each with the
    /// source position DWARF gives for it (for an inlined callee's caller, the call site).
    /// `name` is `None` where DWARF has a location but no name. Empty when DWARF does not
    /// cover `vaddr`.
    pub fn frames(&self, vaddr: u64) -> Vec<DwarfFrame> {
        // Like addr2line: a unit whose range covers the address but that has neither a
        // function nor a line for it (overlapping weak definitions, coarse unit ranges)
        // hands over to the next candidate.
        for unit_idx in self.index.candidates(vaddr) {
            let Some(unit) = self.unit(unit_idx) else {
                continue;
            };
            match unit.frames(&self.dwarf, self, vaddr) {
                Ok(frames) if !frames.is_empty() => {
                    let mut frames = frames;
                    frames.truncate(MAX_INLINE_DEPTH);
                    return frames;
                }
                Ok(_) => continue,
                Err(_) => return Vec::new(),
            }
        }
        Vec::new()
    }

    /// The parsed unit at position `idx` of the index, from the cache or freshly parsed.
    fn unit(&self, idx: usize) -> Option<Rc<ParsedUnit>> {
        let offset = self.index.unit_offset(idx)?;
        {
            let mut cache = self.cache.borrow_mut();
            if let Some(pos) = cache.iter().position(|u| u.offset() == offset) {
                let hit = cache.remove(pos);
                cache.insert(0, hit.clone());
                return Some(hit);
            }
        }
        let parsed = Rc::new(ParsedUnit::parse(&self.dwarf, offset).ok()?);
        let mut cache = self.cache.borrow_mut();
        cache.insert(0, parsed.clone());
        cache.truncate(UNIT_CACHE);
        Some(parsed)
    }

    /// The unit holding the DIE at `.debug_info` offset `die`, for names reached through
    /// cross-unit references.
    fn unit_containing(&self, die: u64) -> Option<Rc<ParsedUnit>> {
        self.unit(self.index.unit_containing(die)?)
    }

    /// Estimated heap held: the unit index, plus an allowance for the cached parsed units.
    pub fn heap_bytes(&self) -> usize {
        const PER_CACHED_UNIT: usize = 64 * 1024;
        self.index.heap_bytes() + self.cache.borrow().len() * PER_CACHED_UNIT
    }

    /// Number of units parsed and cached right now (tests check the bound).
    #[cfg(test)]
    fn cached_units(&self) -> usize {
        self.cache.borrow().len()
    }
}

pub(crate) fn has_debug_info(obj: &object::File<'_>) -> bool {
    obj.section_by_name(".debug_info")
        .is_some_and(|s| s.kind() != object::SectionKind::UninitializedData && s.size() > 0)
}

fn empty_section() -> crate::bytes::SectionBytes {
    FileBytes::owned(Vec::new()).whole()
}

/// A section's bytes read in place, or inflated within budget when compressed
/// ([`crate::compressed`]); empty when missing, unreadable or over budget.
pub(crate) fn section(
    obj: &object::File<'_>,
    data: &FileBytes,
    name: &str,
) -> crate::bytes::SectionBytes {
    use crate::compressed::{section_contents, SectionContents};
    let Some(sec) = obj.section_by_name(name) else {
        return empty_section();
    };
    // Compressed sections are inflated within budget; over it the section is left out.
    match section_contents(&sec) {
        Ok(SectionContents::Plain(b)) => data.section_of(b).unwrap_or_else(empty_section),
        Ok(inflated) => {
            // The compressed bytes are not read again: give their pages back.
            if let Ok(raw) = sec.data() {
                data.release(raw);
            }
            inflated.into_file_bytes().whole()
        }
        Err(_) => empty_section(),
    }
}

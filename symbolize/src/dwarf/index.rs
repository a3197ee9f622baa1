//! Address range → compilation unit, built once per file without keeping any unit parsed.
//!
//! `.debug_aranges` answers for the units it lists at no parsing cost. Units it misses (Rust
//! and clang emit no aranges at all) are parsed once, just far enough to read the root DIE's
//! ranges — or, failing those, the line program's sequences — and then dropped.

use crate::budget::{DWARF_RANGES_PER_FILE_MAX, DWARF_UNITS_PER_FILE_MAX};
use crate::bytes::Reader;

struct UnitRange {
    begin: u64,
    end: u64,
    /// Position in `UnitIndex::units`.
    unit: usize,
    /// Smallest `begin` of this entry and every later one: lets a lookup stop scanning.
    min_begin: u64,
}

pub(super) struct UnitIndex {
    /// Sorted by `end`.
    ranges: Box<[UnitRange]>,
    /// `.debug_info` offsets of every unit that can hold code or be the target of a name
    /// reference (compile, partial and skeleton units), ascending.
    units: Box<[u64]>,
}

impl UnitIndex {
    pub fn heap_bytes(&self) -> usize {
        self.ranges.len() * std::mem::size_of::<UnitRange>() + self.units.len() * 8
    }

    pub fn build(dwarf: &gimli::Dwarf<Reader>) -> UnitIndex {
        let aranges = read_aranges(dwarf);
        let mut ranges = Vec::new();
        let mut units = Vec::new();
        let mut headers = dwarf.units();
        // A corrupt header ends the walk: later units cannot be located without it.
        while let Ok(Some(header)) = headers.next() {
            let Some(offset) = header.offset().as_debug_info_offset() else {
                continue;
            };
            let wants_ranges = match header.type_() {
                gimli::UnitType::Type { .. } | gimli::UnitType::SplitType { .. } => continue,
                // Only referenced by other units; partial units carry no code of their own.
                gimli::UnitType::Partial => false,
                _ => true,
            };
            if units.len() >= DWARF_UNITS_PER_FILE_MAX || ranges.len() >= DWARF_RANGES_PER_FILE_MAX
            {
                // More than psample indexes of one file: later units go unnamed by DWARF.
                crate::budget::file_capped();
                break;
            }
            let unit = units.len();
            units.push(offset.0 as u64);
            if !wants_ranges {
                continue;
            }
            let listed = aranges_of(&aranges, offset.0 as u64);
            if !listed.is_empty() {
                let room = DWARF_RANGES_PER_FILE_MAX.saturating_sub(ranges.len());
                ranges.extend(listed.iter().take(room).map(|&(_, begin, end)| UnitRange {
                    begin,
                    end,
                    unit,
                    min_begin: 0,
                }));
                continue;
            }
            let mut add = |begin: u64, end: u64| {
                if ranges.len() < DWARF_RANGES_PER_FILE_MAX {
                    ranges.push(UnitRange {
                        begin,
                        end,
                        unit,
                        min_begin: 0,
                    })
                }
            };
            // The parsed unit (abbreviations and all) is dropped right after this.
            if let Ok(parsed) = dwarf.unit(header) {
                root_ranges(dwarf, &parsed, &mut add);
            }
        }
        ranges.sort_by_key(|r| r.end);
        let mut min = u64::MAX;
        for r in ranges.iter_mut().rev() {
            min = min.min(r.begin);
            r.min_begin = min;
        }
        UnitIndex {
            ranges: ranges.into_boxed_slice(),
            units: units.into_boxed_slice(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Units whose ranges contain `probe`, in the order addr2line tries them (by range end).
    pub fn candidates(&self, probe: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.ranges.partition_point(|r| r.end <= probe);
        self.ranges
            .get(start..)
            .unwrap_or(&[])
            .iter()
            .take_while(move |r| probe >= r.min_begin)
            .filter(move |r| r.begin <= probe && probe < r.end)
            .map(|r| r.unit)
    }

    pub fn unit_offset(&self, unit: usize) -> Option<u64> {
        self.units.get(unit).copied()
    }

    /// The unit whose header starts at or before `.debug_info` offset `die` (a DIE can never
    /// sit at a unit's own offset, that is its header).
    pub fn unit_containing(&self, die: u64) -> Option<usize> {
        let after = self.units.partition_point(|&u| u <= die);
        let idx = after.checked_sub(1)?;
        (self.units.get(idx).copied()? != die).then_some(idx)
    }
}

/// `(unit offset, begin, end)` for every non-empty `.debug_aranges` entry, sorted by unit.
fn read_aranges(dwarf: &gimli::Dwarf<Reader>) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut headers = dwarf.debug_aranges.headers();
    while let Ok(Some(header)) = headers.next() {
        let unit = header.debug_info_offset().0 as u64;
        let mut entries = header.entries();
        // Errors past the first entry (address overflow in a stray variable's entry) skip
        // that entry; the iterator itself stops on errors it cannot step over.
        while let Some(entry) = entries.next().transpose() {
            let Ok(entry) = entry else { continue };
            if entry.length() != 0 && out.len() < DWARF_RANGES_PER_FILE_MAX {
                let r = entry.range();
                out.push((unit, r.begin, r.end));
            }
        }
    }
    out.sort_by_key(|&(unit, _, _)| unit);
    out
}

fn aranges_of(aranges: &[(u64, u64, u64)], unit: u64) -> &[(u64, u64, u64)] {
    let start = aranges.partition_point(|&(u, _, _)| u < unit);
    let end = aranges.partition_point(|&(u, _, _)| u <= unit);
    aranges.get(start..end).unwrap_or(&[])
}

/// The root DIE's DW_AT_ranges or low/high pc; the line program's sequences when it has
/// neither.
fn root_ranges(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    add: &mut dyn FnMut(u64, u64),
) {
    let unit_ref = gimli::UnitRef::new(dwarf, unit);
    let mut found = false;
    if let Ok(mut entries) = unit_ref.entries_raw(None) {
        if let Ok(Some(abbrev)) = entries.read_abbreviation() {
            let mut pcs = super::unit::PcAttributes::default();
            let complete =
                abbrev
                    .attributes()
                    .iter()
                    .all(|spec| match entries.read_attribute(*spec) {
                        Ok(attr) => pcs.take(unit_ref, &attr).is_ok(),
                        Err(_) => false,
                    });
            if complete {
                found = pcs
                    .for_each_range(unit_ref, |r| add(r.begin, r.end))
                    .unwrap_or(false);
            }
        }
    }
    if found {
        return;
    }
    let Some(program) = unit.line_program.clone() else {
        return;
    };
    let mut rows = program.rows();
    let mut start = None;
    while let Ok(Some((_, row))) = rows.next_row() {
        if row.end_sequence() {
            if let Some(begin) = start.take() {
                if begin < row.address() {
                    add(begin, row.address());
                }
            }
        } else if start.is_none() {
            start = Some(row.address());
        }
    }
}

//! One compilation unit parsed for lookups: its abbreviations, a sorted table of its
//! functions' address ranges and its line table. The DIE tree of a function is walked only
//! when an address inside it is asked for.
//!
//! The lookup rules follow addr2line's (which psample used before and is the reference in
//! the tests): the function is found by binary search over every DW_TAG_subprogram range of
//! the unit, the inline chain by searching each inline depth in turn, names prefer
//! DW_AT_linkage_name and follow DW_AT_abstract_origin / DW_AT_specification.

use std::cmp::Ordering;
use std::num::NonZeroU64;

use gimli::Reader as _;

use super::{DwarfFrame, DwarfInfo};
use crate::bytes::Reader;

type UnitRef<'a> = gimli::UnitRef<'a, Reader>;
type Offset = <Reader as gimli::Reader>::Offset;

/// Abstract-origin / specification hops followed for a name before giving up (cycles).
const NAME_HOPS: usize = 16;

/// The address attributes of one DIE.
#[derive(Default)]
pub(super) struct PcAttributes {
    low_pc: Option<u64>,
    high_pc: Option<u64>,
    size: Option<u64>,
    ranges: Option<gimli::RangeListsOffset<Offset>>,
}

impl PcAttributes {
    /// Records `attr` if it is one of the address attributes.
    pub fn take(
        &mut self,
        unit: UnitRef<'_>,
        attr: &gimli::Attribute<Reader>,
    ) -> gimli::Result<()> {
        match attr.name() {
            gimli::DW_AT_low_pc => match attr.value() {
                gimli::AttributeValue::Addr(v) => self.low_pc = Some(v),
                gimli::AttributeValue::DebugAddrIndex(i) => self.low_pc = Some(unit.address(i)?),
                _ => {}
            },
            gimli::DW_AT_high_pc => match attr.value() {
                gimli::AttributeValue::Addr(v) => self.high_pc = Some(v),
                gimli::AttributeValue::DebugAddrIndex(i) => self.high_pc = Some(unit.address(i)?),
                gimli::AttributeValue::Udata(v) => self.size = Some(v),
                _ => {}
            },
            gimli::DW_AT_ranges => self.ranges = unit.attr_ranges_offset(attr.value())?,
            _ => {}
        }
        Ok(())
    }

    /// Calls `f` for every non-empty range; true if there was one.
    pub fn for_each_range(
        &self,
        unit: UnitRef<'_>,
        mut f: impl FnMut(gimli::Range),
    ) -> gimli::Result<bool> {
        let mut any = false;
        let mut add = |r: gimli::Range| {
            if r.begin < r.end {
                f(r);
                any = true;
            }
        };
        if let Some(offset) = self.ranges {
            let mut list = unit.ranges(offset)?;
            while let Some(r) = list.next()? {
                add(r);
            }
        } else if let (Some(begin), Some(end)) = (self.low_pc, self.high_pc) {
            add(gimli::Range { begin, end });
        } else if let (Some(begin), Some(size)) = (self.low_pc, self.size) {
            // A -1 tombstone wraps to an empty range and is dropped.
            add(gimli::Range {
                begin,
                end: begin.wrapping_add(size),
            });
        }
        Ok(any)
    }
}

struct FunctionRange {
    begin: u64,
    end: u64,
    /// The DW_TAG_subprogram's offset within the unit.
    die: Offset,
}

struct LineRow {
    address: u64,
    file: u64,
    line: u32,
}

struct Sequence {
    start: u64,
    end: u64,
    rows: Box<[LineRow]>,
}

struct Lines {
    /// Full paths, by file index (index 0 is empty before DWARF 5).
    files: Box<[Box<str>]>,
    /// Sorted by `start`.
    sequences: Box<[Sequence]>,
}

pub(super) struct ParsedUnit {
    offset: u64,
    unit: gimli::Unit<Reader>,
    /// Sorted by `begin`.
    functions: Box<[FunctionRange]>,
    lines: Option<Lines>,
}

/// One DW_TAG_inlined_subroutine of the function being looked up.
struct Inlined {
    name: Option<Reader>,
    call_file: Option<u64>,
    call_line: u32,
}

struct InlinedRange {
    begin: u64,
    end: u64,
    depth: usize,
    /// Index into the inlined list.
    inlined: usize,
}

impl ParsedUnit {
    pub fn parse(dwarf: &gimli::Dwarf<Reader>, offset: u64) -> gimli::Result<ParsedUnit> {
        let off = usize::try_from(offset).map_err(|_| gimli::Error::OffsetOutOfBounds)?;
        let header = dwarf
            .debug_info
            .header_from_offset(gimli::DebugInfoOffset(off))?;
        let unit = dwarf.unit(header)?;
        let unit_ref = gimli::UnitRef::new(dwarf, &unit);
        let functions = parse_functions(unit_ref)?;
        // A unit without a usable line table still names functions.
        let lines = unit
            .line_program
            .clone()
            .and_then(|p| parse_lines(unit_ref, p).ok());
        Ok(ParsedUnit {
            offset,
            unit,
            functions,
            lines,
        })
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Frames at `probe` innermost first, empty if this unit has neither a function nor a
    /// line for it.
    pub fn frames(
        &self,
        dwarf: &gimli::Dwarf<Reader>,
        info: &DwarfInfo,
        probe: u64,
    ) -> gimli::Result<Vec<DwarfFrame>> {
        let unit = gimli::UnitRef::new(dwarf, &self.unit);
        let mut location = self.location(probe);
        let function = self
            .functions
            .binary_search_by(|f| {
                if probe < f.begin {
                    Ordering::Greater
                } else if probe >= f.end {
                    Ordering::Less
                } else {
                    Ordering::Equal
                }
            })
            .ok()
            .and_then(|i| self.functions.get(i));
        let Some(function) = function else {
            return Ok(match location {
                Some((file, line)) => vec![DwarfFrame {
                    name: None,
                    file,
                    line,
                }],
                None => Vec::new(),
            });
        };
        let (name, chain) = self.walk_function(unit, info, function.die, probe)?;
        let mut out = Vec::with_capacity(chain.len() + 1);
        for inl in chain.iter().rev() {
            let (file, line) = location.take().unwrap_or((None, None));
            out.push(DwarfFrame {
                name: to_string(inl.name.as_ref()),
                file,
                line,
            });
            let call_file = inl.call_file.and_then(|i| self.file(i)).map(str::to_string);
            let call_line = (inl.call_line != 0).then_some(inl.call_line);
            location = Some((call_file, call_line));
        }
        let (file, line) = location.unwrap_or((None, None));
        out.push(DwarfFrame {
            name: to_string(name.as_ref()),
            file,
            line,
        });
        Ok(out)
    }

    fn file(&self, index: u64) -> Option<&str> {
        let lines = self.lines.as_ref()?;
        lines.files.get(usize::try_from(index).ok()?).map(|f| &**f)
    }

    /// The line table row covering `probe`, as (file, line).
    fn location(&self, probe: u64) -> Option<(Option<String>, Option<u32>)> {
        let lines = self.lines.as_ref()?;
        let seq = lines
            .sequences
            .binary_search_by(|s| {
                if probe < s.start {
                    Ordering::Greater
                } else if probe >= s.end {
                    Ordering::Less
                } else {
                    Ordering::Equal
                }
            })
            .ok()
            .and_then(|i| lines.sequences.get(i))?;
        let row = match seq.rows.binary_search_by(|r| r.address.cmp(&probe)) {
            Ok(i) => seq.rows.get(i),
            Err(i) => seq.rows.get(i.checked_sub(1)?),
        }?;
        let file = self.file(row.file).map(str::to_string);
        Some((file, (row.line != 0).then_some(row.line)))
    }

    /// Reads the subprogram at `die`: its name and the inlined subroutines containing
    /// `probe`, outermost first.
    fn walk_function(
        &self,
        unit: UnitRef<'_>,
        info: &DwarfInfo,
        die: Offset,
        probe: u64,
    ) -> gimli::Result<(Option<Reader>, Vec<Inlined>)> {
        let mut entries = unit.entries_raw(Some(gimli::UnitOffset(die)))?;
        let depth = entries.next_depth();
        let abbrev = entries
            .read_abbreviation()?
            .ok_or(gimli::Error::NoEntryAtGivenOffset)?;
        let mut name = None;
        for spec in abbrev.attributes() {
            let attr = entries.read_attribute(*spec)?;
            read_name(unit, info, &attr, &mut name)?;
        }

        let mut inlined = Vec::new();
        let mut ranges = Vec::new();
        // (tree depth of the enclosing inlined subroutine, its inline depth); lexical
        // blocks in between are transparent, nested subprograms are skipped whole.
        let mut open: Vec<isize> = Vec::new();
        let mut skip_below: Option<isize> = None;
        loop {
            let next_depth = entries.next_depth();
            if next_depth <= depth || entries.is_empty() {
                break;
            }
            let Some(abbrev) = entries.read_abbreviation()? else {
                continue;
            };
            if let Some(d) = skip_below {
                if next_depth > d {
                    entries.skip_attributes(abbrev.attributes())?;
                    continue;
                }
                skip_below = None;
            }
            while open.last().is_some_and(|&d| d >= next_depth) {
                open.pop();
            }
            match abbrev.tag() {
                gimli::DW_TAG_subprogram => {
                    entries.skip_attributes(abbrev.attributes())?;
                    skip_below = Some(next_depth);
                }
                gimli::DW_TAG_inlined_subroutine => {
                    let mut pcs = PcAttributes::default();
                    let mut inl = Inlined {
                        name: None,
                        call_file: None,
                        call_line: 0,
                    };
                    for spec in abbrev.attributes() {
                        let attr = entries.read_attribute(*spec)?;
                        pcs.take(unit, &attr)?;
                        read_name(unit, info, &attr, &mut inl.name)?;
                        match attr.name() {
                            gimli::DW_AT_call_file => {
                                // DWARF 5 numbers files from 0; before that 0 meant none.
                                if let gimli::AttributeValue::FileIndex(fi) = attr.value() {
                                    if fi > 0 || unit.header.version() >= 5 {
                                        inl.call_file = Some(fi);
                                    }
                                }
                            }
                            gimli::DW_AT_call_line => {
                                inl.call_line = attr.udata_value().unwrap_or(0) as u32;
                            }
                            _ => {}
                        }
                    }
                    let index = inlined.len();
                    let inline_depth = open.len();
                    pcs.for_each_range(unit, |r| {
                        ranges.push(InlinedRange {
                            begin: r.begin,
                            end: r.end,
                            depth: inline_depth,
                            inlined: index,
                        })
                    })?;
                    inlined.push(inl);
                    open.push(next_depth);
                }
                _ => entries.skip_attributes(abbrev.attributes())?,
            }
        }

        // Breadth-first order (depth, then begin) lets each depth be binary searched.
        ranges.sort_by(|a, b| a.depth.cmp(&b.depth).then(a.begin.cmp(&b.begin)));
        let mut chain_idx = Vec::new();
        let mut rest = &ranges[..];
        loop {
            let depth = chain_idx.len();
            let found = rest.binary_search_by(|r| {
                r.depth.cmp(&depth).then(if r.begin > probe {
                    Ordering::Greater
                } else if r.end <= probe {
                    Ordering::Less
                } else {
                    Ordering::Equal
                })
            });
            let Ok(i) = found else { break };
            let Some(r) = rest.get(i) else { break };
            chain_idx.push(r.inlined);
            rest = rest.get(i + 1..).unwrap_or(&[]);
        }
        let mut slots: Vec<Option<Inlined>> = inlined.into_iter().map(Some).collect();
        let chain = chain_idx
            .into_iter()
            .filter_map(|i| slots.get_mut(i).and_then(Option::take))
            .collect();
        Ok((name, chain))
    }
}

/// Applies one attribute of a subprogram or inlined subroutine to its name: linkage names
/// win, DW_AT_name and origins fill in when nothing is known yet.
fn read_name(
    unit: UnitRef<'_>,
    info: &DwarfInfo,
    attr: &gimli::Attribute<Reader>,
    name: &mut Option<Reader>,
) -> gimli::Result<()> {
    match attr.name() {
        gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
            if let Ok(v) = unit.attr_string(attr.value()) {
                *name = Some(v);
            }
        }
        gimli::DW_AT_name if name.is_none() => {
            *name = unit.attr_string(attr.value()).ok();
        }
        gimli::DW_AT_abstract_origin | gimli::DW_AT_specification if name.is_none() => {
            *name = name_via(unit, info, attr.value(), NAME_HOPS)?;
        }
        _ => {}
    }
    Ok(())
}

/// The name of the DIE a reference points at, following further references.
fn name_via(
    unit: UnitRef<'_>,
    info: &DwarfInfo,
    target: gimli::AttributeValue<Reader>,
    hops: usize,
) -> gimli::Result<Option<Reader>> {
    if hops == 0 {
        return Ok(None);
    }
    match target {
        gimli::AttributeValue::UnitRef(offset) => name_at(unit, info, offset, hops),
        gimli::AttributeValue::DebugInfoRef(dr) => {
            let Some(other) = info.unit_containing(dr.0 as u64) else {
                return Err(gimli::Error::NoEntryAtGivenOffset);
            };
            let offset = dr
                .to_unit_offset(&other.unit.header)
                .ok_or(gimli::Error::NoEntryAtGivenOffset)?;
            let other_ref = gimli::UnitRef::new(unit.dwarf, &other.unit);
            name_at(other_ref, info, offset, hops)
        }
        _ => Ok(None),
    }
}

fn name_at(
    unit: UnitRef<'_>,
    info: &DwarfInfo,
    offset: gimli::UnitOffset<Offset>,
    hops: usize,
) -> gimli::Result<Option<Reader>> {
    let mut entries = unit.entries_raw(Some(offset))?;
    let abbrev = entries
        .read_abbreviation()?
        .ok_or(gimli::Error::NoEntryAtGivenOffset)?;
    let mut name = None;
    let mut next = None;
    for spec in abbrev.attributes() {
        let attr = entries.read_attribute(*spec)?;
        match attr.name() {
            gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                if let Ok(v) = unit.attr_string(attr.value()) {
                    return Ok(Some(v));
                }
            }
            gimli::DW_AT_name => {
                if let Ok(v) = unit.attr_string(attr.value()) {
                    name = Some(v);
                }
            }
            gimli::DW_AT_abstract_origin | gimli::DW_AT_specification => {
                next = Some(attr.value());
            }
            _ => {}
        }
    }
    if name.is_some() {
        return Ok(name);
    }
    match next {
        Some(next) => name_via(unit, info, next, hops - 1),
        None => Ok(None),
    }
}

fn to_string(r: Option<&Reader>) -> Option<String> {
    r.and_then(|r| r.to_string_lossy().ok().map(|s| s.into_owned()))
}

/// Every DW_TAG_subprogram range of the unit, sorted by start.
fn parse_functions(unit: UnitRef<'_>) -> gimli::Result<Box<[FunctionRange]>> {
    let mut out = Vec::new();
    let mut entries = unit.entries_raw(None)?;
    while !entries.is_empty() {
        let die = entries.next_offset();
        let Some(abbrev) = entries.read_abbreviation()? else {
            continue;
        };
        if abbrev.tag() != gimli::DW_TAG_subprogram {
            entries.skip_attributes(abbrev.attributes())?;
            continue;
        }
        let mut pcs = PcAttributes::default();
        for spec in abbrev.attributes() {
            let attr = entries.read_attribute(*spec)?;
            pcs.take(unit, &attr)?;
        }
        pcs.for_each_range(unit, |r| {
            out.push(FunctionRange {
                begin: r.begin,
                end: r.end,
                die: die.0,
            })
        })?;
    }
    // Stable, so identical-code-folded functions resolve the way addr2line resolves them.
    out.sort_by_key(|f| f.begin);
    Ok(out.into_boxed_slice())
}

fn parse_lines(
    unit: UnitRef<'_>,
    program: gimli::IncompleteLineProgram<Reader, Offset>,
) -> gimli::Result<Lines> {
    let mut sequences = Vec::new();
    let mut rows_of_seq: Vec<LineRow> = Vec::new();
    let mut rows = program.rows();
    while let Some((_, row)) = rows.next_row()? {
        if row.end_sequence() {
            if let Some(start) = rows_of_seq.first().map(|r| r.address) {
                sequences.push(Sequence {
                    start,
                    end: row.address(),
                    rows: std::mem::take(&mut rows_of_seq).into_boxed_slice(),
                });
            }
            continue;
        }
        let address = row.address();
        let file = row.file_index();
        let line = row.line().map(NonZeroU64::get).unwrap_or(0) as u32;
        // Several rows at one address: the last one describes the instruction.
        if let Some(last) = rows_of_seq.last_mut() {
            if last.address == address {
                last.file = file;
                last.line = line;
                continue;
            }
        }
        rows_of_seq.push(LineRow {
            address,
            file,
            line,
        });
    }
    sequences.sort_by_key(|s| s.start);

    let header = rows.header();
    let mut files = Vec::new();
    match header.file(0) {
        Some(f) => files.push(render_file(unit, f, header)?),
        None => files.push(Box::from("")),
    }
    let mut index = 1;
    while let Some(f) = header.file(index) {
        files.push(render_file(unit, f, header)?);
        index += 1;
    }
    Ok(Lines {
        files: files.into_boxed_slice(),
        sequences: sequences.into_boxed_slice(),
    })
}

/// comp_dir + directory + file name, each later absolute part replacing what came before.
fn render_file(
    unit: UnitRef<'_>,
    file: &gimli::FileEntry<Reader, Offset>,
    header: &gimli::LineProgramHeader<Reader, Offset>,
) -> gimli::Result<Box<str>> {
    let mut path = match &unit.comp_dir {
        Some(dir) => dir.to_string_lossy()?.into_owned(),
        None => String::new(),
    };
    // Directory 0 is the compilation directory itself.
    if file.directory_index() != 0 {
        if let Some(dir) = file.directory(header) {
            path_push(&mut path, &unit.attr_string(dir)?.to_string_lossy()?);
        }
    }
    path_push(
        &mut path,
        &unit.attr_string(file.path_name())?.to_string_lossy()?,
    );
    Ok(path.into_boxed_str())
}

fn path_push(path: &mut String, part: &str) {
    let rooted = |p: &str| {
        p.starts_with('/')
            || p.starts_with('\\')
            || p.get(1..3) == Some(":/")
            || p.get(1..3) == Some(":\\")
    };
    if rooted(part) {
        *path = part.to_string();
        return;
    }
    let windows = path.starts_with('\\') || path.get(1..3) == Some(":\\");
    let sep = if windows { '\\' } else { '/' };
    if !path.is_empty() && !path.ends_with(sep) {
        path.push(sep);
    }
    path.push_str(part);
}

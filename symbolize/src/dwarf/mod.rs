//! DWARF function and inline-frame lookup (addr2line over gimli), reading sections in place
//! from the mapped file.

use std::borrow::Cow;

use object::{Object, ObjectSection};

use crate::bytes::{FileBytes, Reader};

/// Compressed debug sections declaring more than this are ignored rather than inflated.
const MAX_SECTION: u64 = 1024 * 1024 * 1024;
/// Inline nesting deeper than this is cut off; real code rarely exceeds a few dozen.
const MAX_INLINE_DEPTH: usize = 256;

/// One (possibly inlined) function at an address, as DWARF describes it.
pub(crate) struct DwarfFrame {
    pub name: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

pub(crate) struct DwarfInfo {
    ctx: addr2line::Context<Reader>,
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
            // Variable location lists and type units say nothing about which function is at
            // an address; skipping them keeps compressed debug files (e.g. libc6-dbg's) from
            // being inflated into memory for nothing.
            let bytes = match id {
                gimli::SectionId::DebugLoc
                | gimli::SectionId::DebugLocLists
                | gimli::SectionId::DebugTypes
                | gimli::SectionId::DebugMacinfo
                | gimli::SectionId::DebugMacro => FileBytes::owned(Vec::new()).whole(),
                _ => section(obj, data, id.name()),
            };
            Ok(gimli::EndianReader::new(bytes, endian))
        };
        let dwarf = gimli::Dwarf::load(load).ok()?;
        let ctx = addr2line::Context::from_dwarf(dwarf).ok()?;
        Some(DwarfInfo { ctx })
    }

    /// Functions covering `vaddr`, innermost (most deeply inlined) first, each with the
    /// source position DWARF gives for it (for an inlined callee's caller, the call site).
    /// `name` is `None` where DWARF has a location but no name. Empty when DWARF does not
    /// cover `vaddr`.
    pub fn frames(&self, vaddr: u64) -> Vec<DwarfFrame> {
        let mut out = Vec::new();
        let Ok(mut iter) = self.ctx.find_frames(vaddr).skip_all_loads() else {
            return out;
        };
        while let Ok(Some(frame)) = iter.next() {
            let name = frame
                .function
                .and_then(|f| f.raw_name().ok().map(Cow::into_owned));
            let (file, line) = match frame.location {
                Some(loc) => (loc.file.map(str::to_string), loc.line),
                None => (None, None),
            };
            out.push(DwarfFrame { name, file, line });
            if out.len() >= MAX_INLINE_DEPTH {
                break;
            }
        }
        out
    }
}

pub(crate) fn has_debug_info(obj: &object::File<'_>) -> bool {
    obj.section_by_name(".debug_info")
        .is_some_and(|s| s.kind() != object::SectionKind::UninitializedData && s.size() > 0)
}

fn section(obj: &object::File<'_>, data: &FileBytes, name: &str) -> crate::bytes::SectionBytes {
    let empty = || FileBytes::owned(Vec::new()).whole();
    let Some(sec) = obj.section_by_name(name) else {
        return empty();
    };
    match sec.compressed_data() {
        Ok(c)
            if c.format != object::CompressionFormat::None && c.uncompressed_size > MAX_SECTION =>
        {
            return empty();
        }
        Err(_) => return empty(),
        Ok(_) => {}
    }
    match sec.uncompressed_data() {
        Ok(Cow::Borrowed(b)) => data.section_of(b).unwrap_or_else(empty),
        Ok(Cow::Owned(v)) => FileBytes::owned(v).whole(),
        Err(_) => empty(),
    }
}

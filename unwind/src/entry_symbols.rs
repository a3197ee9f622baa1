//! Finding the thread-entry functions (`_start`, `start_thread`, `clone`, …) among a file's
//! symbols without loading its symbol table.
//!
//! A big binary (node: 185k symbols, 13 MB of names) would otherwise be read name by name
//! (one read per symbol through object's `ReadCache`, which also keeps every piece it read)
//! at the first sample in it: ~0.6 s of stalled ring draining and tens of MB, for a dozen
//! names. Instead the string table is streamed once, in fixed-size chunks, for the offsets
//! of the wanted names, then the symbol array is streamed for entries that point at one of
//! them. Memory is one chunk; time is a sequential read of the two sections.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use object::{Object, ObjectSection};

/// Bytes read per step.
const CHUNK: usize = 64 * 1024;
/// Larger symbol tables are not real (node has 110k entries, Chrome ~1M).
const MAX_SYMBOLS: u64 = 16 * 1024 * 1024;

/// Positioned reads from the file being parsed (a file, or an image in memory).
pub(crate) trait ReadAt {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

/// Address ranges of functions named one of `names`, from `.symtab`/`.strtab` and
/// `.dynsym`/`.dynstr` of `obj` (whose bytes `raw` reads).
pub(crate) fn find<'a, R: object::ReadRef<'a>>(
    obj: &object::File<'a, R>,
    raw: &(impl ReadAt + ?Sized),
    names: &[&str],
) -> Vec<Range<u64>> {
    let layout = Layout {
        is_64: obj.is_64(),
        little: obj.is_little_endian(),
    };
    let mut out = Vec::new();
    for (symtab, strtab) in [(".symtab", ".strtab"), (".dynsym", ".dynstr")] {
        let (Some(sym), Some(str_)) = (obj.section_by_name(symtab), obj.section_by_name(strtab))
        else {
            continue;
        };
        let (Some(syms), Some(strs)) = (sym.file_range(), str_.file_range()) else {
            continue;
        };
        let wanted = name_offsets(raw, strs, names);
        if !wanted.is_empty() {
            scan_symbols(raw, syms, layout, &wanted, &mut out);
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Layout {
    is_64: bool,
    little: bool,
}

/// Calls `f(chunk_start, bytes)` over `range` of the file in [`CHUNK`]-sized steps, each
/// step overlapping the previous one by `overlap` bytes (so a match across a boundary is
/// seen whole). Stops at a short read or error.
fn stream(
    raw: &(impl ReadAt + ?Sized),
    (offset, size): (u64, u64),
    overlap: usize,
    mut f: impl FnMut(u64, &[u8]),
) {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < size {
        let want = (size - pos).min(CHUNK as u64) as usize;
        let Ok(n) = raw.read_at(offset + pos, &mut buf[..want]) else {
            return;
        };
        if n == 0 {
            return;
        }
        f(pos, &buf[..n]);
        if n < want || pos + n as u64 >= size {
            return;
        }
        pos += n.saturating_sub(overlap).max(1) as u64;
    }
}

/// String-table offsets at which one of `names` starts and ends in a NUL. Linkers may merge
/// a name into the tail of a longer one, so matches are taken anywhere, not only after a NUL.
fn name_offsets(
    raw: &(impl ReadAt + ?Sized),
    strtab: (u64, u64),
    names: &[&str],
) -> HashMap<u32, usize> {
    let longest = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut found = HashMap::new();
    stream(raw, strtab, longest + 1, |base, bytes| {
        for (i, name) in names.iter().enumerate() {
            let pat = name.as_bytes();
            let mut at = 0;
            while let Some(p) = find_bytes(&bytes[at..], pat) {
                let start = at + p;
                if bytes.get(start + pat.len()) == Some(&0) {
                    if let Ok(off) = u32::try_from(base + start as u64) {
                        found.insert(off, i);
                    }
                }
                at = start + 1;
            }
        }
    });
    found
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        let p = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        if hay[i + p..].starts_with(needle) {
            return Some(i + p);
        }
        i += p + 1;
    }
    None
}

/// Defined function symbols whose name offset is in `wanted`, as address ranges.
fn scan_symbols(
    raw: &(impl ReadAt + ?Sized),
    (offset, size): (u64, u64),
    layout: Layout,
    wanted: &HashMap<u32, usize>,
    out: &mut Vec<Range<u64>>,
) {
    let entsize: usize = if layout.is_64 { 24 } else { 16 };
    let size = size.min(MAX_SYMBOLS * entsize as u64);
    // Whole entries per chunk, so none straddles two.
    let step = (CHUNK / entsize * entsize) as u64;
    let mut buf = vec![0u8; step as usize];
    let mut pos = 0;
    while pos < size {
        let want = (size - pos).min(step) as usize;
        let Ok(n) = raw.read_at(offset + pos, &mut buf[..want]) else {
            return;
        };
        for sym in buf[..n].chunks_exact(entsize) {
            if let Some(range) = entry_function(sym, layout, wanted) {
                out.push(range);
            }
        }
        if n < want {
            return;
        }
        pos += step;
    }
}

fn entry_function(sym: &[u8], layout: Layout, wanted: &HashMap<u32, usize>) -> Option<Range<u64>> {
    let u16_at = |o: usize| {
        let b = [sym[o], sym[o + 1]];
        if layout.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let u32_at = |o: usize| {
        let b: [u8; 4] = sym[o..o + 4].try_into().unwrap_or_default();
        if layout.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let u64_at = |o: usize| {
        let b: [u8; 8] = sym[o..o + 8].try_into().unwrap_or_default();
        if layout.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        }
    };
    let name = u32_at(0);
    if !wanted.contains_key(&name) {
        return None;
    }
    // Elf64_Sym: name, info, other, shndx, value, size; Elf32_Sym: name, value, size, info,
    // other, shndx.
    let (info, shndx, value, size) = if layout.is_64 {
        (sym[4], u16_at(6), u64_at(8), u64_at(16))
    } else {
        (
            sym[12],
            u16_at(14),
            u64::from(u32_at(4)),
            u64::from(u32_at(8)),
        )
    };
    let kind = info & 0xf;
    let function = kind == object::elf::STT_FUNC || kind == object::elf::STT_GNU_IFUNC;
    if !function || shndx == object::elf::SHN_UNDEF || value == 0 {
        return None;
    }
    Some(value..value.saturating_add(size.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::ObjectSymbol;

    #[test]
    fn finds_what_the_symbol_table_says() {
        // Our own test binary has _start and main-like names; compare with object's view.
        let exe = std::fs::read("/proc/self/exe").expect("own exe");
        let obj = object::File::parse(&exe[..]).expect("elf");
        let names = ["_start", "main"];
        let mut expected: Vec<Range<u64>> = obj
            .symbols()
            .chain(obj.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && s.is_definition())
            .filter(|s| s.name().is_ok_and(|n| names.contains(&n)) && s.address() != 0)
            .map(|s| s.address()..s.address() + s.size().max(1))
            .collect();
        let mut got = find(&obj, &exe[..], &names);
        expected.sort_by_key(|r| (r.start, r.end));
        got.sort_by_key(|r| (r.start, r.end));
        expected.dedup();
        got.dedup();
        assert!(!expected.is_empty());
        assert_eq!(got, expected);
    }

    #[test]
    fn tail_merged_and_boundary_names_are_found() {
        // "xx_start\0" holds "_start" at offset 2; a name straddling a chunk boundary.
        let mut strtab = b"\0xx_start\0".to_vec();
        strtab.resize(CHUNK - 3, b'a');
        strtab.push(0);
        let straddle = strtab.len() as u32;
        strtab.extend_from_slice(b"clone\0");
        let found = name_offsets(&strtab[..], (0, strtab.len() as u64), &["_start", "clone"]);
        assert_eq!(found.get(&3), Some(&0));
        assert_eq!(found.get(&straddle), Some(&1));
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn find_bytes_edges() {
        assert_eq!(find_bytes(b"abcabc", b"cab"), Some(2));
        assert_eq!(find_bytes(b"ab", b"abc"), None);
        assert_eq!(find_bytes(b"aaab", b"ab"), Some(2));
        assert_eq!(find_bytes(b"", b"a"), None);
    }
}

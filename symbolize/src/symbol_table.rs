//! Function symbols from ELF `.symtab`/`.dynsym` (of the binary, its debug file, and its
//! MiniDebugInfo), reduced to one best name per address and searchable by address.

use object::{Object, ObjectSection, ObjectSymbol, SectionFlags, SymbolKind, SymbolSection};

/// Symbol names longer than this are cut; they only ever come from hostile or broken files.
const MAX_NAME: usize = 8 * 1024;
/// How many preceding symbols to examine for an enclosing sized symbol (nested aliases such as
/// a local label inside a large function).
const ENCLOSING_SCAN: usize = 16;

#[derive(Debug, Clone)]
struct Symbol {
    addr: u64,
    size: u64,
    name: Box<str>,
    rank: Rank,
}

/// Higher is better when several symbols share an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    typed_function: bool,
    has_size: bool,
    binding: u8,
    fewer_underscores: u8,
}

#[derive(Debug, Default)]
pub(crate) struct SymbolTable {
    syms: Vec<Symbol>,
}

impl SymbolTable {
    /// Collects function symbols from every object given (the binary first, then debug files);
    /// addresses are ELF virtual addresses, which all of them share.
    pub fn build(objects: &[&object::File<'_>]) -> SymbolTable {
        let mut syms = Vec::new();
        let mut room = Room::default();
        for obj in objects {
            collect(obj, obj.symbols(), &mut syms, &mut room);
            collect(obj, obj.dynamic_symbols(), &mut syms, &mut room);
        }
        if room.full {
            // A file (hostile, or beyond anything real) with more symbols than kept.
            crate::budget::file_capped();
        }
        // Best first within an address, so dedup keeps the best one.
        syms.sort_by(|a: &Symbol, b: &Symbol| a.addr.cmp(&b.addr).then(b.rank.cmp(&a.rank)));
        syms.dedup_by(|later, kept| later.addr == kept.addr);
        SymbolTable { syms }
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// Heap bytes held (for the symbolizer's memory budget).
    pub fn heap_bytes(&self) -> usize {
        self.syms.capacity() * std::mem::size_of::<Symbol>()
            + self.syms.iter().map(|s| s.name.len()).sum::<usize>()
    }

    /// The function containing `vaddr`: a sized symbol covers exactly its size, an unsized one
    /// (hand-written assembly) extends to the next symbol.
    pub fn lookup(&self, vaddr: u64) -> Option<&str> {
        let idx = self
            .syms
            .partition_point(|s| s.addr <= vaddr)
            .checked_sub(1)?;
        let nearest = self.syms.get(idx)?;
        if nearest.size == 0 || vaddr - nearest.addr < nearest.size {
            return Some(&nearest.name);
        }
        // Past the end of the nearest symbol: maybe inside a larger one that starts earlier.
        self.syms[idx.saturating_sub(ENCLOSING_SCAN)..idx]
            .iter()
            .rev()
            .find(|s| s.size > 0 && vaddr - s.addr < s.size)
            .map(|s| &*s.name)
    }
}

/// What a file's symbols may still take ([`crate::budget::SYMBOLS_PER_FILE_MAX`] and
/// [`crate::budget::SYMBOL_NAME_BYTES_PER_FILE_MAX`]).
#[derive(Default)]
struct Room {
    name_bytes: usize,
    full: bool,
}

fn collect<'data, 'file, I, S>(
    obj: &'file object::File<'data>,
    iter: I,
    out: &mut Vec<Symbol>,
    room: &mut Room,
) where
    I: Iterator<Item = S>,
    S: ObjectSymbol<'data>,
{
    for sym in iter {
        let accepted = match sym.kind() {
            SymbolKind::Text => sym.is_definition(),
            // Assembly often leaves function symbols untyped; accept them in code sections.
            SymbolKind::Unknown => !sym.is_undefined() && in_exec_section(obj, sym.section()),
            _ => false,
        };
        if !accepted {
            continue;
        }
        let addr = sym.address();
        let Ok(name) = sym.name_bytes() else { continue };
        if addr == 0 || name.is_empty() || name.starts_with(b"$") || name.starts_with(b".L") {
            continue;
        }
        let name = &name[..name.len().min(MAX_NAME)];
        if out.len() >= crate::budget::SYMBOLS_PER_FILE_MAX
            || room.name_bytes >= crate::budget::SYMBOL_NAME_BYTES_PER_FILE_MAX
        {
            room.full = true;
            return;
        }
        room.name_bytes += name.len();
        let name = String::from_utf8_lossy(name);
        let binding = if sym.is_global() {
            if sym.is_weak() {
                1
            } else {
                2
            }
        } else {
            0
        };
        let underscores = name.bytes().take_while(|&b| b == b'_').count().min(255) as u8;
        out.push(Symbol {
            addr,
            size: sym.size(),
            rank: Rank {
                typed_function: sym.kind() == SymbolKind::Text,
                has_size: sym.size() > 0,
                binding,
                fewer_underscores: 255 - underscores,
            },
            name: name.into(),
        });
    }
}

fn in_exec_section(obj: &object::File<'_>, section: SymbolSection) -> bool {
    let SymbolSection::Section(idx) = section else {
        return false;
    };
    match obj.section_by_index(idx).map(|s| s.flags()) {
        Ok(SectionFlags::Elf { sh_flags }) => sh_flags & u64::from(object::elf::SHF_EXECINSTR) != 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(addr: u64, size: u64, name: &str) -> Symbol {
        Symbol {
            addr,
            size,
            name: name.into(),
            rank: Rank {
                typed_function: true,
                has_size: size > 0,
                binding: 2,
                fewer_underscores: 255,
            },
        }
    }

    #[test]
    fn sized_symbols_do_not_cover_gaps() {
        let t = SymbolTable {
            syms: vec![sym(0x1000, 0x10, "a"), sym(0x2000, 0, "b")],
        };
        assert_eq!(t.lookup(0xfff), None);
        assert_eq!(t.lookup(0x1000), Some("a"));
        assert_eq!(t.lookup(0x100f), Some("a"));
        assert_eq!(t.lookup(0x1010), None);
        assert_eq!(t.lookup(0x2500), Some("b"));
    }

    #[test]
    fn enclosing_symbol_found_past_nested_one() {
        let t = SymbolTable {
            syms: vec![sym(0x1000, 0x100, "outer"), sym(0x1010, 0x8, "inner")],
        };
        assert_eq!(t.lookup(0x1012), Some("inner"));
        assert_eq!(t.lookup(0x1020), Some("outer"));
    }
}

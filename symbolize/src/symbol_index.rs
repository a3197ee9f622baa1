//! Function symbols from ELF `.symtab`/`.dynsym` (of the binary, its debug file and its
//! MiniDebugInfo), indexed for lookup by address in bounded memory.
//!
//! A big binary's symbol table is large (node: 110k symbols, 7.5 MB of names) while a profile
//! names a few hundred of its functions. So the index keeps only what a lookup needs — one
//! sorted 16-byte entry per function address, with the offset of its name in the string
//! table of the mapped file — and names are read from the mapping only for the addresses hit.
//! Building it reads the symbol arrays once (their pages are dropped from this process's
//! resident set as it goes) and touches a name only to break a tie between symbols at the
//! same address. One index serves every process and mapping of the same file, and every
//! symbolizer alive at the same time ([`shared`]); it is freed with its last user.
//!
//! A file's symbols are capped ([`budget::SYMBOLS_PER_FILE_MAX`] entries, names only from the
//! first [`budget::SYMBOL_NAME_BYTES_PER_FILE_MAX`] bytes of its string tables). The files
//! belong to the profiled processes, which may truncate them while they are mapped (see
//! `sigbus`): small string tables are copied when indexed, so their names outlive such a
//! change; names of a big table are read in place and, once its file shrank, not used.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use object::elf::{
    SHF_EXECINSTR, SHN_UNDEF, STB_GLOBAL, STB_WEAK, STT_FUNC, STT_GNU_IFUNC, STT_NOTYPE,
};
use object::read::elf::{ElfFile, FileHeader, SectionHeader, Sym};

use crate::budget;
use crate::bytes::{FileBytes, SectionBytes};

/// Symbol names longer than this are cut; they only ever come from hostile or broken files.
const MAX_NAME: usize = 8 * 1024;
/// How many preceding symbols to examine for an enclosing sized symbol (nested aliases such as
/// a local label inside a large function).
const ENCLOSING_SCAN: usize = 16;
/// Symbol array bytes read between two releases of their resident pages.
const RELEASE_EVERY: usize = 1024 * 1024;
/// Entries deduplicated between two releases of the string tables' resident pages.
const RELEASE_TIES_EVERY: usize = 16 * 1024;
/// Sizes are kept in 24 bits; a function this large (16 MiB) is past anything compilers emit,
/// and lookups beyond it fall back to the function's FDE.
const MAX_SIZE: u32 = (1 << 24) - 1;
/// String tables per index: binary, debug file and MiniDebugInfo (one table each).
const MAX_SOURCES: usize = 16;
/// String tables up to this size are copied rather than read in place: their names then
/// survive the file shrinking under us, for little memory (a library's `.dynstr` is tens of
/// KiB; node's 7.5 MB `.strtab` stays in the file).
const STRINGS_COPY_MAX: usize = 256 * 1024;

/// One function: its address, the offset of its name in the string table `source`, its size
/// (0: unknown, extends to the next symbol) and, while building, its rank.
#[derive(Debug, Clone, Copy)]
struct Entry {
    addr: u64,
    name: u32,
    /// size (24 bits) | source (4 bits) | rank (4 bits).
    meta: u32,
}

impl Entry {
    fn new(addr: u64, name: u32, size: u64, source: usize, rank: u8) -> Entry {
        let size = u32::try_from(size).unwrap_or(MAX_SIZE).min(MAX_SIZE);
        Entry {
            addr,
            name,
            meta: size | ((source as u32 & 0xf) << 24) | (u32::from(rank & 0xf) << 28),
        }
    }
    fn size(self) -> u64 {
        u64::from(self.meta & MAX_SIZE)
    }
    fn source(self) -> usize {
        ((self.meta >> 24) & 0xf) as usize
    }
    /// Higher is better among symbols at one address: typed function, has a size, binding.
    fn rank(self) -> u8 {
        (self.meta >> 28) as u8
    }
}

#[derive(Default)]
pub(crate) struct SymbolIndex {
    /// Sorted by address, one per address.
    entries: Vec<Entry>,
    /// String tables the entries' names point into (slices of mapped files, or copies).
    strings: Vec<SectionBytes>,
    /// A file shrank while the index was built from it: never shared.
    tainted: bool,
}

/// How much of a file's symbols is kept (the budget's per-file caps; tests use small ones).
#[derive(Debug, Clone, Copy)]
struct Limits {
    symbols: usize,
    name_bytes: usize,
}

impl Limits {
    const BUDGET: Limits = Limits {
        symbols: budget::SYMBOLS_PER_FILE_MAX,
        name_bytes: budget::SYMBOL_NAME_BYTES_PER_FILE_MAX,
    };
}

/// What a file's symbols (over all its sources) have taken of their [`Limits`].
#[derive(Default)]
struct Room {
    name_bytes: usize,
    full: bool,
}

/// One object's symbols: its bytes and the parsed file over them.
pub(crate) struct SymbolSource<'a> {
    pub data: &'a FileBytes,
    pub obj: &'a object::File<'a>,
}

impl SymbolIndex {
    /// Collects function symbols from every object given (the binary first, then debug
    /// files); addresses are ELF virtual addresses, which all of them share. A file's
    /// `.dynsym` is read only when it has no `.symtab` (which then holds all of it).
    pub fn build(sources: &[SymbolSource<'_>]) -> SymbolIndex {
        Self::build_within(sources, Limits::BUDGET)
    }

    fn build_within(sources: &[SymbolSource<'_>], limits: Limits) -> SymbolIndex {
        let mut index = SymbolIndex::default();
        let mut room = Room::default();
        for src in sources {
            match src.obj {
                object::File::Elf64(elf) => index.add_file(elf, src.data, limits, &mut room),
                object::File::Elf32(elf) => index.add_file(elf, src.data, limits, &mut room),
                _ => {}
            }
        }
        if room.full {
            // A file (hostile, or beyond anything real) with more symbols than kept.
            budget::file_capped();
        }
        index.finish();
        // Breaking ties read names all over the string tables; lookups will read back only
        // the pages of the names they return.
        for table in &index.strings {
            table.release();
        }
        index.tainted = sources.iter().any(|s| s.data.faulted());
        index
    }

    /// Heap held (for the symbolizer's memory budget): the entries and copied string tables.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<Entry>()
            + self
                .strings
                .iter()
                .filter(|t| !t.is_mapped())
                .map(|t| t.len())
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries held (tests and memory diagnostics).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The function containing `vaddr`: a sized symbol covers exactly its size, an unsized one
    /// (hand-written assembly) extends to the next symbol.
    pub fn lookup(&self, vaddr: u64) -> Option<Cow<'_, str>> {
        let idx = self
            .entries
            .partition_point(|e| e.addr <= vaddr)
            .checked_sub(1)?;
        let nearest = *self.entries.get(idx)?;
        if nearest.size() == 0 || vaddr - nearest.addr < nearest.size() {
            return self.name(nearest);
        }
        // Past the end of the nearest symbol: maybe inside a larger one that starts earlier.
        let enclosing = self.entries[idx.saturating_sub(ENCLOSING_SCAN)..idx]
            .iter()
            .rev()
            .find(|e| e.size() > 0 && vaddr - e.addr < e.size())?;
        self.name(*enclosing)
    }

    fn name_bytes(&self, e: Entry) -> Option<&[u8]> {
        let table = self.strings.get(e.source())?;
        let rest = table.get(e.name as usize..)?;
        let end = rest
            .iter()
            .take(MAX_NAME)
            .position(|&b| b == 0)
            .unwrap_or(rest.len().min(MAX_NAME));
        Some(&rest[..end])
    }

    fn name(&self, e: Entry) -> Option<Cow<'_, str>> {
        let bytes = self.name_bytes(e)?;
        let name = (!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes))?;
        // Read in place from a file that shrank (now, or before): zeros or a cut name.
        if self
            .strings
            .get(e.source())
            .is_some_and(SectionBytes::faulted)
        {
            return None;
        }
        Some(name)
    }

    /// The string table at `raw` (in `data`) as the index keeps it: within the file's
    /// name-bytes room, copied when small.
    fn keep_strings(
        data: &FileBytes,
        raw: &[u8],
        limits: Limits,
        room: &mut Room,
    ) -> Option<SectionBytes> {
        let left = limits.name_bytes.saturating_sub(room.name_bytes);
        if raw.len() > left {
            // Names past the room are not indexed (their offsets lie outside the slice).
            room.full = true;
        }
        let raw = &raw[..raw.len().min(left)];
        room.name_bytes += raw.len();
        let in_place = data.section_of(raw)?;
        if in_place.is_mapped() && raw.len() <= STRINGS_COPY_MAX {
            let copy = FileBytes::owned(raw.to_vec()).whole();
            data.release(raw);
            return Some(copy);
        }
        Some(in_place)
    }

    fn add_file<Elf: FileHeader<Endian = object::Endianness>>(
        &mut self,
        elf: &ElfFile<'_, Elf>,
        data: &FileBytes,
        limits: Limits,
        room: &mut Room,
    ) {
        let table = if elf.elf_symbol_table().is_empty() {
            elf.elf_dynamic_symbol_table()
        } else {
            elf.elf_symbol_table()
        };
        if table.is_empty() || self.strings.len() >= MAX_SOURCES {
            return;
        }
        let endian = elf.endian();
        let sections = elf.elf_section_table();
        let Some(strings) = sections
            .section(table.string_section())
            .ok()
            .and_then(|s| s.data(endian, elf.data()).ok())
            .and_then(|d| Self::keep_strings(data, d, limits, room))
        else {
            return;
        };
        let source = self.strings.len();
        self.strings.push(strings);
        let syms = table.symbols();
        // Sized up front: growing by doubling would briefly hold twice the table.
        let left = limits.symbols.saturating_sub(self.entries.len());
        self.entries.reserve(syms.len().min(left));
        let exec_section = |shndx: u16| {
            sections
                .section(object::SectionIndex(usize::from(shndx)))
                .is_ok_and(|s| s.sh_flags(endian).into() & u64::from(SHF_EXECINSTR) != 0)
        };
        for chunk in syms.chunks((RELEASE_EVERY / size_of::<Elf::Sym>()).max(1)) {
            for sym in chunk {
                if let Some(e) = self.entry(sym, endian, source, &exec_section) {
                    if self.entries.len() >= limits.symbols {
                        room.full = true;
                        break;
                    }
                    self.entries.push(e);
                }
            }
            data.release(object::pod::bytes_of_slice(chunk));
            if room.full && self.entries.len() >= limits.symbols {
                return;
            }
        }
    }

    fn entry<S: Sym<Endian = object::Endianness>>(
        &self,
        sym: &S,
        endian: object::Endianness,
        source: usize,
        exec_section: &impl Fn(u16) -> bool,
    ) -> Option<Entry> {
        let shndx = sym.st_shndx(endian);
        let addr: u64 = sym.st_value(endian).into();
        let name = sym.st_name(endian);
        if shndx == SHN_UNDEF || addr == 0 || name == 0 {
            return None;
        }
        // A name past the kept part of its table (see `keep_strings`) is not indexed.
        if self
            .strings
            .get(source)
            .is_none_or(|t| name as usize >= t.len())
        {
            return None;
        }
        let typed = match sym.st_type() {
            STT_FUNC | STT_GNU_IFUNC => true,
            // Assembly often leaves function symbols untyped; accept them in code sections,
            // but not the assembler's local labels and mapping symbols.
            STT_NOTYPE if exec_section(shndx) => false,
            _ => return None,
        };
        let e = Entry::new(addr, name, 0, source, 0);
        if !typed {
            let n = self.name_bytes(e)?;
            if n.starts_with(b"$") || n.starts_with(b".L") {
                return None;
            }
        }
        let size: u64 = sym.st_size(endian).into();
        let binding = match sym.st_bind() {
            STB_GLOBAL => 2,
            STB_WEAK => 1,
            _ => 0,
        };
        let rank = (u8::from(typed) << 3) | (u8::from(size > 0) << 2) | binding;
        Some(Entry::new(addr, name, size, source, rank))
    }

    /// Sorts by address and keeps the best symbol of each address: higher rank, then fewer
    /// leading underscores (`memcpy` over `__memcpy`), then the first listed.
    fn finish(&mut self) {
        self.entries.sort_by_key(|e| e.addr);
        let mut kept = 0;
        let mut i = 0;
        let mut next_release = RELEASE_TIES_EVERY;
        while i < self.entries.len() {
            if i >= next_release {
                // Ties read names all over the string tables (C++ constructors come in
                // pairs): keep at most a window's worth of their pages resident.
                next_release = i + RELEASE_TIES_EVERY;
                self.strings.iter().for_each(SectionBytes::release);
            }
            let addr = self.entries[i].addr;
            let mut best = self.entries[i];
            let mut j = i + 1;
            while j < self.entries.len() && self.entries[j].addr == addr {
                if self.better(self.entries[j], best) {
                    best = self.entries[j];
                }
                j += 1;
            }
            self.entries[kept] = best;
            kept += 1;
            i = j;
        }
        self.entries.truncate(kept);
        self.entries.shrink_to_fit();
    }

    fn better(&self, a: Entry, b: Entry) -> bool {
        if a.rank() != b.rank() {
            return a.rank() > b.rank();
        }
        let underscores = |e: Entry| {
            self.name_bytes(e)
                .map_or(usize::MAX, |n| n.iter().take_while(|&&c| c == b'_').count())
        };
        underscores(a) < underscores(b)
    }
}

/// What identifies an index for sharing: the file's build-id where it has one (the same
/// binary in many containers), else its identity on disk; plus the debug file used.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IndexKey {
    BuildId(Vec<u8>, Option<std::path::PathBuf>),
    File(crate::locate::FileKey, Option<std::path::PathBuf>),
}

/// The index for `key`: the one another symbolizer of this process already built while it
/// is still in use, else `build()`'s. Only weak references are kept here, so an index
/// nothing uses any more is freed.
pub(crate) fn shared(key: IndexKey, build: impl FnOnce() -> SymbolIndex) -> Arc<SymbolIndex> {
    static SHARED: Mutex<Option<HashMap<IndexKey, Weak<SymbolIndex>>>> = Mutex::new(None);
    if let Some(live) = SHARED
        .lock()
        .ok()
        .and_then(|m| m.as_ref()?.get(&key)?.upgrade())
        .filter(|live| !live.tainted)
    {
        return live;
    }
    // Built outside the lock: another thread may build the same index meanwhile, which
    // costs time once but never blocks symbolization behind a big file.
    let index = Arc::new(build());
    if index.tainted {
        return index;
    }
    if let Ok(mut guard) = SHARED.lock() {
        let map = guard.get_or_insert_with(HashMap::new);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&index));
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: Vec<Entry>, names: &[u8]) -> SymbolIndex {
        SymbolIndex {
            entries,
            strings: vec![FileBytes::owned(names.to_vec()).whole()],
            tainted: false,
        }
    }

    #[test]
    fn sized_symbols_do_not_cover_gaps() {
        let t = table(
            vec![
                Entry::new(0x1000, 1, 0x10, 0, 0),
                Entry::new(0x2000, 3, 0, 0, 0),
            ],
            b"\0a\0b\0",
        );
        assert_eq!(t.lookup(0xfff), None);
        assert_eq!(t.lookup(0x1000).as_deref(), Some("a"));
        assert_eq!(t.lookup(0x100f).as_deref(), Some("a"));
        assert_eq!(t.lookup(0x1010), None);
        assert_eq!(t.lookup(0x2500).as_deref(), Some("b"));
    }

    #[test]
    fn enclosing_symbol_found_past_nested_one() {
        let t = table(
            vec![
                Entry::new(0x1000, 1, 0x100, 0, 0),
                Entry::new(0x1010, 7, 0x8, 0, 0),
            ],
            b"\0outer\0inner\0",
        );
        assert_eq!(t.lookup(0x1012).as_deref(), Some("inner"));
        assert_eq!(t.lookup(0x1020).as_deref(), Some("outer"));
    }

    #[test]
    fn best_of_an_address_wins_and_names_are_bounded() {
        let names = b"\0__alias\0memcpy\0weak\0";
        let mut t = table(
            vec![
                Entry::new(0x10, 1, 8, 0, 0b1110),
                Entry::new(0x10, 9, 8, 0, 0b1110),
                Entry::new(0x10, 16, 8, 0, 0b1101),
                Entry::new(0x20, 999, 0, 0, 0),
            ],
            names,
        );
        t.finish();
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(0x12).as_deref(), Some("memcpy"));
        // A name offset past the table names nothing instead of panicking.
        assert_eq!(t.lookup(0x20), None);
    }

    #[test]
    fn an_index_is_shared_while_used_and_freed_after() {
        let key = || IndexKey::BuildId(b"shared-index-test".to_vec(), None);
        let mut builds = 0;
        let mut build = || {
            builds += 1;
            table(vec![Entry::new(0x10, 1, 4, 0, 0)], b"\0f\0")
        };
        let a = shared(key(), &mut build);
        let b = shared(key(), &mut build);
        assert!(Arc::ptr_eq(&a, &b));
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none(), "nothing refers to it: freed");
        let _c = shared(key(), &mut build);
        assert_eq!(builds, 2);
    }

    #[test]
    fn own_executable_matches_objects_symbols() {
        use object::{Object, ObjectSymbol};
        let data = FileBytes::owned(std::fs::read("/proc/self/exe").expect("own exe"));
        let obj = object::File::parse(&*data).expect("elf");
        let index = SymbolIndex::build(&[SymbolSource {
            data: &data,
            obj: &obj,
        }]);
        assert!(index.len() > 100);
        let mut at: HashMap<u64, Vec<String>> = HashMap::new();
        for s in obj.symbols() {
            if let Ok(n) = s.name() {
                at.entry(s.address()).or_default().push(n.to_string());
            }
        }
        let mut checked = 0;
        for sym in obj
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0 && s.address() != 0)
        {
            let name = index
                .lookup(sym.address())
                .expect("a function symbol is indexed");
            // Aliases may win the address; whichever did, it is a symbol at that address.
            let at_addr = at[&sym.address()].iter().any(|n| *n == name);
            assert!(at_addr, "{name} is not at 0x{:x}", sym.address());
            checked += 1;
        }
        assert!(checked > 100);
    }

    #[test]
    fn per_file_caps_bound_entries_and_name_bytes() {
        let data = FileBytes::owned(std::fs::read("/proc/self/exe").expect("own exe"));
        let obj = object::File::parse(&*data).expect("elf");
        let sources = [SymbolSource {
            data: &data,
            obj: &obj,
        }];
        let full = SymbolIndex::build(&sources);
        let few = SymbolIndex::build_within(
            &sources,
            Limits {
                symbols: 10,
                name_bytes: usize::MAX,
            },
        );
        assert!(few.len() <= 10 && full.len() > 100);
        let names = 64 * 1024;
        let small = SymbolIndex::build_within(
            &sources,
            Limits {
                symbols: usize::MAX,
                name_bytes: names,
            },
        );
        assert!(small.len() < full.len());
        assert!(small.strings.iter().map(|t| t.len()).sum::<usize>() <= names);
        assert!(small.entries.iter().all(|e| (e.name as usize) < names));
        assert!(small.entries.iter().any(|e| small.name(*e).is_some()));
        assert!(budget::report()
            .iter()
            .any(|l| l.contains("more than psample keeps of one file")));
    }

    #[test]
    fn names_read_in_place_are_not_used_once_the_file_shrank() {
        use std::io::Write;
        let exe = std::fs::read("/proc/self/exe").expect("own exe");
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        f.write_all(&exe).expect("write");
        let data = FileBytes::map(f.as_file()).expect("map");
        let obj = object::File::parse(&*data).expect("elf");
        let index = SymbolIndex::build(&[SymbolSource {
            data: &data,
            obj: &obj,
        }]);
        // A test binary's .strtab is MBs: read in place, not copied.
        assert!(index.strings.iter().all(SectionBytes::is_mapped));
        // A name that runs across a page boundary: cut the file there, and a read of it
        // would give its first half, ended by the zeros of the page after.
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let at_file = |e: &Entry| {
            let table = &index.strings[e.source()];
            table.as_ptr() as usize - data.as_ptr() as usize + e.name as usize
        };
        let (e, name, cut) = index
            .entries
            .iter()
            .find_map(|e| {
                let name = index.name(*e)?.into_owned();
                let start = at_file(e);
                let cut = (start / page + 1) * page;
                (start + name.len() > cut && cut < data.len()).then_some((*e, name, cut))
            })
            .expect("a name across pages");
        assert!(!data.faulted());
        f.as_file().set_len(cut as u64).expect("truncate");
        assert_eq!(index.name(e), None, "{name} read cut short");
        assert!(data.faulted());
        // Nor is such an index handed to another user.
        let key = || IndexKey::BuildId(b"shrunk-index-test".to_vec(), None);
        let first = shared(key(), || SymbolIndex {
            tainted: true,
            ..SymbolIndex::default()
        });
        let second = shared(key(), SymbolIndex::default);
        assert!(!Arc::ptr_eq(&first, &second));
    }
}

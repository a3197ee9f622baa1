//! Kernel symbols from /proc/kallsyms, module symbols included.
//!
//! With kptr_restrict (or without privilege) every address reads as zero; then no address can
//! be named correctly and the caller shows `[kernel]` instead of a misleading guess.
//!
//! A kernel with modules lists 100k+ symbols. They are read line by line into a string arena
//! of fixed-size chunks (so growing it never copies what it holds, and never holds twice its
//! size while it does) with a compact (address, name offset) entry each: neither the whole
//! file text nor one heap allocation per name is ever held.

use crate::error::KallsymsError;
use std::io::{BufRead, BufReader, Read};

/// kallsyms is ~10 MB with many modules loaded; a bound protects against a runaway procfs.
const MAX_KALLSYMS: u64 = 512 * 1024 * 1024;
/// Longer lines are not kallsyms (KSYM_NAME_LEN is 512); skipping keeps memory bounded.
const MAX_LINE: usize = 4096;

/// Bytes per arena chunk; a name never straddles two.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy)]
struct Entry {
    addr: u64,
    /// Chunk index (high 12 bits) and offset in it (low 20 bits) of the name.
    name: u32,
    len: u32,
}

#[derive(Debug)]
pub(crate) struct SymbolArena {
    /// Sorted by address, one per address.
    entries: Vec<Entry>,
    names: Vec<String>,
}

impl SymbolArena {
    /// Stores `name`; `None` once the arena is past what kallsyms can hold (4096 chunks).
    fn push_name(&mut self, name: &str) -> Option<(u32, u32)> {
        if name.len() > CHUNK {
            return None;
        }
        if self
            .names
            .last()
            .is_none_or(|c| c.len() + name.len() > CHUNK)
        {
            if self.names.len() >= 1 << 12 {
                return None;
            }
            self.names.push(String::with_capacity(CHUNK));
        }
        let chunk_idx = self.names.len() - 1;
        let chunk = self.names.last_mut()?;
        let offset = chunk.len();
        chunk.push_str(name);
        Some(((chunk_idx << 20 | offset) as u32, name.len() as u32))
    }

    fn name(&self, e: &Entry) -> Option<&str> {
        let chunk = self.names.get((e.name >> 20) as usize)?;
        let start = (e.name & ((1 << 20) - 1)) as usize;
        chunk.get(start..start.checked_add(e.len as usize)?)
    }
}

#[derive(Debug)]
pub(crate) enum KernelSymbols {
    Table(SymbolArena),
    /// Addresses hidden (all zero) — kptr_restrict or missing privilege.
    Hidden,
}

impl KernelSymbols {
    pub fn load() -> Result<KernelSymbols, KallsymsError> {
        let file = std::fs::File::open("/proc/kallsyms")?;
        Ok(KernelSymbols::read(BufReader::new(
            file.take(MAX_KALLSYMS),
        ))?)
    }

    #[cfg(test)]
    pub fn parse(text: &str) -> KernelSymbols {
        KernelSymbols::read(text.as_bytes()).unwrap_or(KernelSymbols::Hidden)
    }

    /// Parses kallsyms text from `input`, one line at a time.
    pub fn read(mut input: impl BufRead) -> std::io::Result<KernelSymbols> {
        let mut arena = SymbolArena {
            entries: Vec::new(),
            names: Vec::new(),
        };
        let mut line = Vec::new();
        loop {
            line.clear();
            if input
                .by_ref()
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)?
                == 0
            {
                break;
            }
            if line.last() != Some(&b'\n') && line.len() >= MAX_LINE {
                // Discard the rest of an overlong line.
                let mut rest = Vec::new();
                input.read_until(b'\n', &mut rest)?;
                continue;
            }
            let Ok(text) = std::str::from_utf8(&line) else {
                continue;
            };
            if let Some((addr, name)) = text_symbol(text) {
                let Some((name, len)) = arena.push_name(name) else {
                    // Past 1 GiB of names: not a real kallsyms.
                    break;
                };
                arena.entries.push(Entry { addr, name, len });
            }
        }
        if arena.entries.is_empty() {
            // All-zero addresses (or nothing parseable) mean we cannot name anything.
            return Ok(KernelSymbols::Hidden);
        }
        // Stable: of several names at one address the first listed wins.
        arena.entries.sort_by_key(|e| e.addr);
        arena.entries.dedup_by_key(|e| e.addr);
        if let Some(last) = arena.names.last_mut() {
            last.shrink_to_fit();
        }
        Ok(KernelSymbols::Table(arena))
    }

    /// The symbol at or below `addr`; `None` when hidden or below every symbol.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let KernelSymbols::Table(t) = self else {
            return None;
        };
        let idx = t
            .entries
            .partition_point(|e| e.addr <= addr)
            .checked_sub(1)?;
        t.name(t.entries.get(idx)?)
    }

    /// Number of code symbols held.
    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            KernelSymbols::Table(t) => t.entries.len(),
            KernelSymbols::Hidden => 0,
        }
    }
}

/// `(address, name)` of a code symbol line (`ADDR TYPE NAME [\t[module]]`); `None` for data
/// symbols, zero addresses and malformed lines.
fn text_symbol(line: &str) -> Option<(u64, &str)> {
    let mut fields = line.split_ascii_whitespace();
    let (addr, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
    // Code symbols only: data symbols interleaved with text would steal addresses.
    if !matches!(kind, "t" | "T" | "w" | "W") {
        return None;
    }
    let addr = u64::from_str_radix(addr, 16).ok()?;
    (addr != 0).then_some((addr, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_core_and_module_symbols() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffff81001000 t helper\n\
                    ffffffff81002000 D some_data\n\
                    ffffffffc0001000 t ext4_thing\t[ext4]\n";
        let k = KernelSymbols::parse(text);
        assert_eq!(k.lookup(0xffffffff81000010), Some("_stext"));
        assert_eq!(k.lookup(0xffffffff81002010), Some("helper"));
        assert_eq!(k.lookup(0xffffffffc0001004), Some("ext4_thing"));
        assert_eq!(k.lookup(0x1000), None);
    }

    #[test]
    fn names_across_many_arena_chunks() {
        let mut text = String::new();
        let n = 3 * CHUNK / 40 + 7;
        for i in 0..n {
            text.push_str(&format!(
                "{:016x} t fn_{i:0>32}\n",
                0xffffffff81000000u64 + 16 * i as u64
            ));
        }
        let k = KernelSymbols::parse(&text);
        let KernelSymbols::Table(t) = &k else {
            panic!("symbols expected");
        };
        assert!(t.names.len() >= 3);
        for i in [0, 1, n / 2, n - 1] {
            let want = format!("fn_{i:0>32}");
            assert_eq!(
                k.lookup(0xffffffff81000000 + 16 * i as u64 + 3),
                Some(&*want)
            );
        }
    }

    #[test]
    fn zeroed_addresses_mean_hidden() {
        let text = "0000000000000000 T _stext\n0000000000000000 t helper\n";
        assert!(matches!(KernelSymbols::parse(text), KernelSymbols::Hidden));
    }

    #[test]
    fn unsorted_duplicates_keep_the_first_name_and_no_trailing_newline() {
        // Module symbols come after core ones and out of order; aliases share an address.
        let text = "ffffffffc0002000 t mod_b\t[m]\n\
                    ffffffff81000000 T first\n\
                    ffffffff81000000 T alias\n\
                    ffffffffc0001000 W mod_a\t[m]";
        let k = KernelSymbols::parse(text);
        assert_eq!(k.len(), 3);
        assert_eq!(k.lookup(0xffffffff81000001), Some("first"));
        assert_eq!(k.lookup(0xffffffffc0001fff), Some("mod_a"));
        assert_eq!(k.lookup(0xffffffffc0002000), Some("mod_b"));
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let long = "x".repeat(3 * MAX_LINE);
        let text = format!(
            "zzzz T bad_addr\n{long}\nffffffff81000000\n\u{0}\u{ff}\nffffffff81000100 T ok\n\
             ffffffff81000200 T {long}\n"
        );
        let k = KernelSymbols::parse(&text);
        assert_eq!(k.len(), 1);
        assert_eq!(k.lookup(0xffffffff81000300), Some("ok"));
    }

    #[test]
    fn real_kallsyms_parses_when_readable() {
        // As root on this host addresses are visible; elsewhere Hidden is the right answer.
        let Ok(k) = KernelSymbols::load() else {
            panic!("/proc/kallsyms must be readable on Linux");
        };
        if let KernelSymbols::Table(t) = &k {
            assert!(t.entries.len() > 1000);
            assert!(t.entries.windows(2).all(|w| w[0].addr < w[1].addr));
            let first = t.entries.first().map(|e| e.addr).unwrap_or_default();
            assert!(k.lookup(first).is_some());
        }
    }
}

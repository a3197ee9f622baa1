//! Kernel symbols from /proc/kallsyms, module symbols included.
//!
//! With kptr_restrict (or without privilege) every address reads as zero; then no address can
//! be named correctly and the caller shows `[kernel]` instead of a misleading guess.

use std::io::Read;

/// kallsyms is ~10 MB with many modules loaded; a bound protects against a runaway procfs.
const MAX_KALLSYMS: u64 = 512 * 1024 * 1024;

#[derive(Debug)]
pub(crate) enum KernelSymbols {
    /// Sorted by address, one name per address.
    Table(Vec<(u64, Box<str>)>),
    /// Addresses hidden (all zero) — kptr_restrict or missing privilege.
    Hidden,
}

impl KernelSymbols {
    pub fn load() -> Result<KernelSymbols, String> {
        let mut text = String::new();
        std::fs::File::open("/proc/kallsyms")
            .map_err(|e| format!("/proc/kallsyms: {e}"))?
            .take(MAX_KALLSYMS)
            .read_to_string(&mut text)
            .map_err(|e| format!("/proc/kallsyms: {e}"))?;
        Ok(KernelSymbols::parse(&text))
    }

    pub fn parse(text: &str) -> KernelSymbols {
        let mut syms = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            // Code symbols only: data symbols interleaved with text would steal addresses.
            if !matches!(kind, "t" | "T" | "w" | "W") || addr == 0 {
                continue;
            }
            syms.push((addr, name.into()));
        }
        if syms.is_empty() {
            // All-zero addresses (or nothing parseable) mean we cannot name anything.
            return KernelSymbols::Hidden;
        }
        syms.sort_by_key(|(a, _)| *a);
        syms.dedup_by_key(|(a, _)| *a);
        KernelSymbols::Table(syms)
    }

    /// The symbol at or below `addr`; `None` when hidden or below every symbol.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let KernelSymbols::Table(syms) = self else {
            return None;
        };
        let idx = syms.partition_point(|(a, _)| *a <= addr).checked_sub(1)?;
        syms.get(idx).map(|(_, n)| &**n)
    }
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
    fn zeroed_addresses_mean_hidden() {
        let text = "0000000000000000 T _stext\n0000000000000000 t helper\n";
        assert!(matches!(KernelSymbols::parse(text), KernelSymbols::Hidden));
    }
}

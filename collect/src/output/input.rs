//! Reading profiles back: folded text or pprof files, as folded lines (for `diff` and
//! `report`).

use std::collections::BTreeMap;
use std::path::Path;

use super::pprof;

/// Largest input read (folded text, or a pprof file before decompression).
const MAX_INPUT: u64 = 1 << 30;

/// Folded lines of a profile file, whatever its format. For pprof the CPU/off-CPU time
/// value is used when present (the counts of the flame graph psample writes), else pprof's
/// default (last) value.
pub fn load_folded(path: &Path) -> Result<Vec<(String, u64)>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_INPUT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_INPUT {
        return Err(format!("{}: larger than {MAX_INPUT} bytes", path.display()));
    }
    // gzip magic, or a protobuf whose first field is sample_type (tag 0x0a), and not text.
    let looks_binary = bytes.starts_with(&[0x1f, 0x8b])
        || (bytes.first() == Some(&0x0a) && std::str::from_utf8(&bytes).is_err());
    if looks_binary {
        let p = pprof::Profile::read(&bytes, pprof::MAX_DECODED_BYTES)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        return pprof_folded(&p).map_err(|e| format!("{}: {e}", path.display()));
    }
    parse_folded(&String::from_utf8_lossy(&bytes)).map_err(|e| format!("{}: {e}", path.display()))
}

/// The folded lines of a pprof profile. A `psample wall` profile (values `cpu`, `off-cpu`,
/// `runnable`, one of them set per sample, its kind the leaf) reads as the wall folded
/// output: all three values.
fn pprof_folded(p: &pprof::Profile) -> Result<Vec<(String, u64)>, String> {
    let types: Vec<&str> = p.sample_type.iter().map(|t| p.string(t.ty)).collect();
    if types == ["cpu", "off-cpu", "runnable"] {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..types.len() {
            for (line, n) in pprof::to_folded(p, i)? {
                let e = m.entry(line).or_insert(0);
                *e = e.saturating_add(n);
            }
        }
        return Ok(m.into_iter().collect());
    }
    let idx = pprof::value_index(p, &["samples", "off-cpu"]);
    pprof::to_folded(p, idx)
}

/// Parse folded text (`stack count` per line; blank lines ignored), merging repeated stacks.
pub fn parse_folded(text: &str) -> Result<Vec<(String, u64)>, String> {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (stack, count) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {}: no count", i + 1))?;
        let n: u64 = count
            .parse()
            .map_err(|_| format!("line {}: {count:?} is not a count", i + 1))?;
        let e = m.entry(stack.to_string()).or_insert(0);
        *e = e.saturating_add(n);
    }
    Ok(m.into_iter().collect())
}

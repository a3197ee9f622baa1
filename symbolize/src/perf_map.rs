//! JIT symbol maps: `/tmp/perf-PID.map`, written by Node (`--perf-basic-prof`), Java
//! (perf-map-agent), Python 3.12 (`-X perf`) and others; one `START SIZE name` line (hex) per
//! compiled function, appended as code is generated.
//!
//! The file lives in a world-writable directory and names frames in profiles root may read, so
//! it is only trusted when it is a regular file (opened without following symlinks) owned by
//! the target's uid or root and not writable by group or others. Reads are bounded both per
//! line and in total.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

use crate::procfs;

/// Longest name kept; longer lines are truncated (a 1 MB "name" must not cost 1 MB per line).
pub const MAX_LINE: usize = 8 * 1024;
/// Total bytes of map file we are willing to read per process.
pub const MAX_TOTAL: u64 = 256 * 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// Non-overlapping address ranges; a later line for overlapping code wins, because JITs reuse
/// freed code memory for new functions.
#[derive(Debug, Default)]
struct RangeMap {
    ranges: BTreeMap<u64, (u64, Box<str>)>,
}

impl RangeMap {
    fn insert(&mut self, start: u64, end: u64, name: Box<str>) {
        let overlapping: Vec<u64> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, _)| *s)
            .collect();
        for s in overlapping {
            let Some((e, n)) = self.ranges.remove(&s) else {
                continue;
            };
            if s < start {
                self.ranges.insert(s, (start, n.clone()));
            }
            if e > end {
                self.ranges.insert(end, (e, n));
            }
        }
        self.ranges.insert(start, (end, name));
    }

    fn get(&self, addr: u64) -> Option<&str> {
        let (_, (end, name)) = self.ranges.range(..=addr).next_back()?;
        (addr < *end).then_some(&**name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

/// The JIT map of one process, read incrementally.
#[derive(Debug, Default)]
pub(crate) struct PerfMap {
    ranges: RangeMap,
    source: Option<Identity>,
    /// Offset just past the last complete line parsed.
    consumed: u64,
}

impl PerfMap {
    /// The JIT name for `addr`, re-reading the file if it has grown since the last look.
    pub fn lookup(&mut self, pid: u32, addr: u64, notes: &mut Vec<String>) -> Option<String> {
        if let Some(n) = self.ranges.get(addr) {
            return Some(n.to_string());
        }
        self.refresh(pid, notes);
        self.ranges.get(addr).map(str::to_string)
    }

    fn refresh(&mut self, pid: u32, notes: &mut Vec<String>) {
        let Some((path, file)) = open_trusted(pid, notes) else {
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        let id = Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        if self.source != Some(id) {
            // A different file (the process restarted its map, or first read).
            *self = PerfMap {
                source: Some(id),
                ..PerfMap::default()
            };
        }
        let size = meta.size();
        if size > MAX_TOTAL {
            notes.push(format!(
                "perf map {} is larger than {} MiB; only its beginning is used",
                path.display(),
                MAX_TOTAL >> 20
            ));
        }
        let limit = size.min(MAX_TOTAL);
        if limit > self.consumed {
            self.read_lines(&file, limit, &path, notes);
        }
    }

    fn read_lines(
        &mut self,
        file: &File,
        limit: u64,
        path: &std::path::Path,
        notes: &mut Vec<String>,
    ) {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut line: Vec<u8> = Vec::new();
        let mut overlong = false;
        let mut warned = false;
        let mut pos = self.consumed;
        while pos < limit {
            let want = (limit - pos).min(READ_CHUNK as u64) as usize;
            let n = match file.read_at(&mut buf[..want], pos) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let mut s = 0;
            while let Some(i) = chunk[s..].iter().position(|&b| b == b'\n') {
                append_bounded(&mut line, &chunk[s..s + i], &mut overlong);
                if overlong && !warned {
                    warned = true;
                    notes.push(format!(
                        "perf map {} has lines longer than {MAX_LINE} bytes; names truncated",
                        path.display()
                    ));
                }
                self.parse_line(&line);
                line.clear();
                overlong = false;
                s += i + 1;
                self.consumed = pos + s as u64;
            }
            append_bounded(&mut line, &chunk[s..], &mut overlong);
            pos += n as u64;
        }
    }

    fn parse_line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_start();
        let Some((start, rest)) = text.split_once(char::is_whitespace) else {
            return;
        };
        let rest = rest.trim_start();
        let Some((size, name)) = rest.split_once(char::is_whitespace) else {
            return;
        };
        let (Some(start), Some(size)) = (parse_hex(start), parse_hex(size)) else {
            return;
        };
        let name = name.trim();
        if size == 0 || name.is_empty() {
            return;
        }
        let Some(end) = start.checked_add(size) else {
            return;
        };
        self.ranges.insert(start, end, name.into());
    }
}

fn append_bounded(line: &mut Vec<u8>, part: &[u8], overlong: &mut bool) {
    let room = MAX_LINE.saturating_sub(line.len());
    if part.len() > room {
        *overlong = true;
    }
    line.extend_from_slice(&part[..part.len().min(room)]);
}

fn parse_hex(s: &str) -> Option<u64> {
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(s, 16).ok()
}

/// Opens the target's map file if it passes the trust rules; refusals are explained in `notes`.
fn open_trusted(pid: u32, notes: &mut Vec<String>) -> Option<(PathBuf, File)> {
    let status = procfs::read_status(pid);
    // Inside a PID namespace the runtime names the file after the pid it knows itself by.
    let ns_pid = status.as_ref().and_then(|s| s.ns_pid).unwrap_or(pid);
    let inner = format!("/tmp/perf-{ns_pid}.map");
    let (path, opened) = if status.is_some() {
        (
            procfs::root_dir(pid).join(inner.trim_start_matches('/')),
            procfs::open_in_root(pid, &inner, libc::O_NOFOLLOW),
        )
    } else {
        // The process is gone; its root is unknown. The host's /tmp is the best remaining
        // guess, and the trust rules below still apply (owner must then be root).
        let host = PathBuf::from(format!("/tmp/perf-{pid}.map"));
        let f = procfs::open_flags(&host, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK);
        (host, f)
    };
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return None,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            notes.push(format!(
                "refusing perf map {}: it is a symbolic link",
                path.display()
            ));
            return None;
        }
        Err(e) => {
            notes.push(format!("cannot open perf map {}: {e}", path.display()));
            return None;
        }
    };
    let meta = file.metadata().ok()?;
    let allowed_uids: Vec<u32> = std::iter::once(0)
        .chain(status.iter().flat_map(|s| s.uids.iter().copied()))
        .collect();
    let problem = if !meta.is_file() {
        Some("not a regular file".to_string())
    } else if !allowed_uids.contains(&meta.uid()) {
        Some(format!(
            "owned by uid {}, not by root or the target's uid",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        notes.push(format!("refusing perf map {}: {problem}", path.display()));
        return None;
    }
    Some((path, file))
}

/// Maps for every process whose anonymous code we have been asked about.
#[derive(Debug, Default)]
pub(crate) struct PerfMaps {
    by_pid: HashMap<u32, PerfMap>,
}

impl PerfMaps {
    pub fn lookup(&mut self, pid: u32, addr: u64, notes: &mut Vec<String>) -> Option<String> {
        self.by_pid.entry(pid).or_default().lookup(pid, addr, notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_entries_override_overlapping_ones() {
        let mut m = RangeMap::default();
        m.insert(0x1000, 0x1100, "old".into());
        m.insert(0x1040, 0x1080, "new".into());
        assert_eq!(m.get(0x1000), Some("old"));
        assert_eq!(m.get(0x1040), Some("new"));
        assert_eq!(m.get(0x107f), Some("new"));
        assert_eq!(m.get(0x1080), Some("old"));
        assert_eq!(m.get(0x1100), None);
        m.insert(0x0f00, 0x2000, "all".into());
        assert_eq!(m.get(0x1050), Some("all"));
        assert_eq!(m.ranges.len(), 1);
    }

    #[test]
    fn line_parsing() {
        let mut p = PerfMap::default();
        p.parse_line(b"7f00aa00 40 LazyCompile:*hot /x.js:1:2");
        p.parse_line(b"0x7f00bb00 0x10 py::f:/a.py");
        p.parse_line(b"zz 10 bad");
        p.parse_line(b"7f00cc00 0 empty");
        p.parse_line(b"ffffffffffffffff 10 wraps");
        assert_eq!(p.ranges.get(0x7f00aa3f), Some("LazyCompile:*hot /x.js:1:2"));
        assert_eq!(p.ranges.get(0x7f00bb0f), Some("py::f:/a.py"));
        assert_eq!(p.ranges.get(0x7f00cc00), None);
    }
}

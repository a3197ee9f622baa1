//! JIT symbol maps: `/tmp/perf-PID.map`, written by Node (`--perf-basic-prof`), Java
//! (perf-map-agent), Python 3.12 (`-X perf`) and others; one `START SIZE name` line (hex) per
//! compiled function, appended as code is generated.
//!
//! The file lives in a world-writable directory and names frames in profiles root may read, so
//! it is only trusted when it is a regular file (opened without following symlinks) owned by
//! the target's uid or root and not writable by group or others, and only for the process it
//! was written by: maps are cached by process identity (pid, start time), never by PID alone.
//! What is read and kept is bounded per process (see [`crate::budget`]): a larger file is
//! read from its end (later lines win anyway), and past the entry or name-byte caps further
//! lines are skipped; frames left unnamed show as `[jit]`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::budget::{
    self, PERF_MAP_ENTRIES_MAX, PERF_MAP_LINE_MAX, PERF_MAP_NAME_BYTES_MAX, PERF_MAP_READ_MAX,
};
use crate::identity::ProcessIdentity;
use crate::{procfs, target_file};

/// Longest line kept; longer lines are truncated (a 1 MB "name" must not cost 1 MB per line).
pub const MAX_LINE: usize = PERF_MAP_LINE_MAX;
const READ_CHUNK: usize = 64 * 1024;

/// A name in [`RangeMap::names`].
#[derive(Debug, Clone, Copy)]
struct NameRef {
    offset: u32,
    len: u32,
}

/// Non-overlapping address ranges; a later line for overlapping code wins, because JITs reuse
/// freed code memory for new functions. Names live in one arena, so the memory a map costs
/// is what the budget counts: its entries and its name bytes.
#[derive(Debug, Default)]
struct RangeMap {
    ranges: BTreeMap<u64, (u64, NameRef)>,
    names: Vec<u8>,
}

impl RangeMap {
    fn insert(&mut self, start: u64, end: u64, name: &str) {
        let Ok(offset) = u32::try_from(self.names.len()) else {
            return;
        };
        self.names.extend_from_slice(name.as_bytes());
        let name = NameRef {
            offset,
            len: name.len() as u32,
        };
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
                self.ranges.insert(s, (start, n));
            }
            if e > end {
                self.ranges.insert(end, (e, n));
            }
        }
        self.ranges.insert(start, (end, name));
    }

    fn get(&self, addr: u64) -> Option<&str> {
        let (_, (end, name)) = self.ranges.range(..=addr).next_back()?;
        if addr >= *end {
            return None;
        }
        let bytes = self
            .names
            .get(name.offset as usize..(name.offset as usize).checked_add(name.len as usize)?)?;
        std::str::from_utf8(bytes).ok()
    }

    fn full(&self, caps: &MapCaps) -> bool {
        self.ranges.len() >= caps.entries || self.names.len() >= caps.name_bytes
    }

    /// Approximate heap bytes held (BTreeMap nodes hold ~11 entries of 32 bytes each).
    fn heap_bytes(&self) -> usize {
        self.ranges.len() * 48 + self.names.capacity()
    }
}

/// The per-process caps a map is read under: [`crate::budget`]'s, or smaller ones for fuzzing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MapCaps {
    pub read: u64,
    pub entries: usize,
    pub name_bytes: usize,
}

impl Default for MapCaps {
    fn default() -> Self {
        MapCaps {
            read: PERF_MAP_READ_MAX,
            entries: PERF_MAP_ENTRIES_MAX,
            name_bytes: PERF_MAP_NAME_BYTES_MAX,
        }
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
    /// Bytes of the file read so far (bounded by the budget).
    read: u64,
    /// File size at the last read: the file is read again only when it has grown.
    seen_size: u64,
    /// A budget was reached: the map is not read any further.
    capped: bool,
    caps: MapCaps,
}

impl PerfMap {
    /// The JIT name for `addr`, re-reading the file if it has grown since the last look.
    pub fn lookup(&mut self, who: Who, addr: u64, notes: &mut Vec<String>) -> Option<String> {
        if let Some(n) = self.ranges.get(addr) {
            return Some(n.to_string());
        }
        if !self.capped {
            self.refresh(who, notes);
        }
        self.ranges.get(addr).map(str::to_string)
    }

    fn refresh(&mut self, who: Who, notes: &mut Vec<String>) {
        let Some((path, file)) = open_trusted(who, notes) else {
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
                caps: self.caps,
                ..PerfMap::default()
            };
        }
        let size = meta.size();
        if size > self.seen_size {
            self.seen_size = size;
            self.read_from(&file, size, &path, notes);
        }
    }

    /// Reads what was appended since the last look, within the read budget. On first sight a
    /// file over budget is read from its end: from the earliest line such that the lines
    /// after it fit the entry and name caps (later lines are the live code, and win anyway).
    pub(crate) fn read_from(
        &mut self,
        file: &File,
        size: u64,
        path: &Path,
        notes: &mut Vec<String>,
    ) {
        let caps = self.caps;
        let mut skip_partial = false;
        let mut cut = false;
        if self.read == 0 {
            let floor = size.saturating_sub(caps.read);
            let (start, capped) = fitting_start(file, floor, size, &caps);
            self.consumed = start;
            cut = capped || floor > 0;
            skip_partial = !capped && floor > 0;
        }
        let room = caps.read.saturating_sub(self.read);
        let limit = size.min(self.consumed.saturating_add(room));
        let before = self.consumed;
        let skipped = self.read_lines(file, limit, skip_partial, path, notes);
        self.read += limit.saturating_sub(before).max(1);
        let over = cut || size > limit || skipped > 0;
        if over && !self.capped {
            self.capped = true;
            let unread = if cut { before } else { 0 } + (size - limit);
            budget::perf_map_truncated(unread);
            notes.push(format!(
                "perf map {} is over its budget ({} MiB read, {} entries, {} KiB of names); \
                 JIT frames it does not name show as [anon]+0xOFFSET",
                path.display(),
                caps.read >> 20,
                caps.entries,
                caps.name_bytes >> 10
            ));
        }
    }

    /// Parses complete lines of `[consumed, limit)`; returns how many lines were skipped
    /// because the map was full.
    fn read_lines(
        &mut self,
        file: &File,
        limit: u64,
        mut skip_partial: bool,
        path: &Path,
        notes: &mut Vec<String>,
    ) -> u64 {
        let mut buf = vec![0u8; READ_CHUNK];
        let mut line: Vec<u8> = Vec::new();
        let mut overlong = false;
        let mut warned = false;
        let mut skipped = 0u64;
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
                if std::mem::take(&mut skip_partial) {
                    // The tail of a line that started before the budgeted window.
                } else if self.ranges.full(&self.caps) {
                    skipped += 1;
                } else {
                    self.parse_line(&line);
                }
                line.clear();
                overlong = false;
                s += i + 1;
                self.consumed = pos + s as u64;
            }
            append_bounded(&mut line, &chunk[s..], &mut overlong);
            pos += n as u64;
        }
        skipped
    }

    /// A map read under `caps` (fuzzing).
    pub(crate) fn with_caps(caps: MapCaps) -> PerfMap {
        PerfMap {
            caps,
            ..PerfMap::default()
        }
    }

    /// The name at `addr` among what was read, without looking at the file again.
    pub(crate) fn cached(&self, addr: u64) -> Option<&str> {
        self.ranges.get(addr)
    }

    /// (entries, name bytes, bytes read) held now.
    pub(crate) fn held(&self) -> (usize, usize, u64) {
        (self.ranges.ranges.len(), self.ranges.names.len(), self.read)
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
        self.ranges.insert(start, end, name);
    }
}

/// Scanning back from `end` (not below `floor`), the start of the longest run of complete
/// lines that fits the entry and name-byte caps (line bytes bound name bytes). Returns that
/// start and whether a cap stopped the scan; `floor` when everything down to it fits.
fn fitting_start(file: &File, floor: u64, end: u64, caps: &MapCaps) -> (u64, bool) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut start = end;
    let mut lines = 0usize;
    let mut hi = end;
    while hi > floor {
        let lo = hi.saturating_sub(READ_CHUNK as u64).max(floor);
        let chunk = &mut buf[..(hi - lo) as usize];
        if file.read_exact_at(chunk, lo).is_err() {
            return (start, true);
        }
        for i in (0..chunk.len()).rev() {
            if chunk[i] != b'\n' {
                continue;
            }
            let candidate = lo + i as u64 + 1;
            if candidate < end {
                if lines > caps.entries || (end - candidate) as usize > caps.name_bytes {
                    return (start, true);
                }
                start = candidate;
            }
            // This newline ends the line before `candidate`.
            lines += 1;
        }
        hi = lo;
    }
    (floor, false)
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

/// Whose map to read: a process, identified by its start time when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Who {
    pub pid: u32,
    pub pid_start: Option<u64>,
}

/// Opens the target's map file if it passes the trust rules; refusals are explained in `notes`.
fn open_trusted(who: Who, notes: &mut Vec<String>) -> Option<(PathBuf, File)> {
    let pid = who.pid;
    let now = ProcessIdentity::of(pid);
    if let (Some(then), Some(now)) = (who.pid_start, now) {
        if then != now.start_time {
            notes.push(format!(
                "pid {pid} now belongs to another process; the JIT map of the one profiled \
                 is gone, its JIT frames show as [jit]"
            ));
            return None;
        }
    }
    let status = now.and_then(|_| procfs::read_status(pid));
    // Inside a PID namespace the runtime names the file after the pid it knows itself by.
    let ns_pid = status.as_ref().and_then(|s| s.ns_pid).unwrap_or(pid);
    let inner = format!("/tmp/perf-{ns_pid}.map");
    let (path, opened) = if status.is_some() {
        (
            target_file::root_dir(pid).join(inner.trim_start_matches('/')),
            target_file::open_in_root(pid, &inner, false),
        )
    } else {
        // The process is gone; its root is unknown. The host's /tmp is the best remaining
        // guess, and the trust rules below still apply (owner must then be root).
        let host = PathBuf::from(format!("/tmp/perf-{pid}.map"));
        let f = target_file::open_host(&host, false);
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
            notes.push(format!("refusing perf map {}: {e}", path.display()));
            return None;
        }
    };
    let meta = file.metadata().ok()?;
    let allowed_uids: Vec<u32> = std::iter::once(0)
        .chain(status.iter().flat_map(|s| s.uids.iter().copied()))
        .collect();
    let problem = if !allowed_uids.contains(&meta.uid()) {
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

/// Maps for every process whose anonymous code we have been asked about, by identity.
#[derive(Debug, Default)]
pub(crate) struct PerfMaps {
    by_process: HashMap<Who, PerfMap>,
}

impl PerfMaps {
    pub fn lookup(&mut self, who: Who, addr: u64, notes: &mut Vec<String>) -> Option<String> {
        self.by_process
            .entry(who)
            .or_default()
            .lookup(who, addr, notes)
    }

    /// Approximate heap bytes held by all maps.
    pub fn heap_bytes(&self) -> usize {
        self.by_process
            .values()
            .map(|m| m.ranges.heap_bytes() + 64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_entries_override_overlapping_ones() {
        let mut m = RangeMap::default();
        m.insert(0x1000, 0x1100, "old");
        m.insert(0x1040, 0x1080, "new");
        assert_eq!(m.get(0x1000), Some("old"));
        assert_eq!(m.get(0x1040), Some("new"));
        assert_eq!(m.get(0x107f), Some("new"));
        assert_eq!(m.get(0x1080), Some("old"));
        assert_eq!(m.get(0x1100), None);
        m.insert(0x0f00, 0x2000, "all");
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

//! The emulated tracing filesystem: where it is (tracefs or debugfs only), whether it is
//! mounted, and each sched tracepoint's `id` and `format` as that kernel prints them; plus
//! writing RAW payloads laid out by those format files.

use std::path::Path;

use perfring::tracepoint::TracepointFormat;

use crate::profile::{KernelProfile, TracingLayout};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const DEBUGFS: &str = "/sys/kernel/debug";
pub const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The sched tracepoints of one profile.
#[derive(Debug, Clone)]
pub struct SchedEvents {
    pub switch: TracepointFormat,
    pub switch_text: &'static str,
    pub wakeup: TracepointFormat,
    pub wakeup_text: &'static str,
}

impl SchedEvents {
    /// Parses the profile's format files (bundled, so a failure is a bug in the fixtures).
    pub fn of(p: &KernelProfile) -> Result<SchedEvents, String> {
        let parse = |text: &str| {
            TracepointFormat::parse(text).map_err(|e| format!("{} format: {e}", p.name))
        };
        let switch = parse(p.sched_switch_format)?;
        let wakeup = parse(p.sched_wakeup_format)?;
        if switch.id.is_none() || wakeup.id.is_none() || switch.id == wakeup.id {
            return Err(format!("{}: sched format files need distinct IDs", p.name));
        }
        Ok(SchedEvents {
            switch,
            switch_text: p.sched_switch_format,
            wakeup,
            wakeup_text: p.sched_wakeup_format,
        })
    }

    pub fn switch_id(&self) -> u64 {
        self.switch.id.unwrap_or(0)
    }

    pub fn wakeup_id(&self) -> u64 {
        self.wakeup.id.unwrap_or(0)
    }

    pub fn ids(&self) -> [u64; 2] {
        [self.switch_id(), self.wakeup_id()]
    }

    fn format_of(&self, id: u64) -> Option<&TracepointFormat> {
        [&self.switch, &self.wakeup]
            .into_iter()
            .find(|f| f.id == Some(id))
    }
}

/// What a path means on the emulated tracing filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TracingPath {
    /// Not a tracing path: the real filesystem answers.
    NotTracing,
    Missing,
    Dir,
    File(Vec<u8>),
}

/// Looks `path` up. `debugfs_mounted` is the emulator's current mount state.
pub fn lookup(
    p: &KernelProfile,
    ev: &SchedEvents,
    debugfs_mounted: bool,
    path: &Path,
) -> TracingPath {
    let Some(s) = path.to_str() else {
        return TracingPath::NotTracing;
    };
    let s = s.trim_end_matches('/');
    let rel = if let Some(r) = s.strip_prefix(TRACEFS) {
        match p.tracing {
            TracingLayout::Tracefs => r,
            TracingLayout::DebugfsOnly { .. } => return TracingPath::Missing,
        }
    } else if let Some(r) = s.strip_prefix(DEBUGFS) {
        if r.is_empty() {
            return TracingPath::Dir;
        }
        if !debugfs_mounted {
            return TracingPath::Missing;
        }
        match r.strip_prefix("/tracing") {
            Some(r) => r,
            None => return TracingPath::Missing,
        }
    } else {
        return TracingPath::NotTracing;
    };
    if !rel.is_empty() && !rel.starts_with('/') {
        return TracingPath::Missing;
    }
    match rel {
        "" | "/events" | "/events/sched" => TracingPath::Dir,
        "/events/sched/sched_switch" | "/events/sched/sched_wakeup" => TracingPath::Dir,
        "/events/sched/sched_switch/id" => {
            TracingPath::File(format!("{}\n", ev.switch_id()).into())
        }
        "/events/sched/sched_wakeup/id" => {
            TracingPath::File(format!("{}\n", ev.wakeup_id()).into())
        }
        "/events/sched/sched_switch/format" => TracingPath::File(ev.switch_text.into()),
        "/events/sched/sched_wakeup/format" => TracingPath::File(ev.wakeup_text.into()),
        _ => TracingPath::Missing,
    }
}

/// A RAW tracepoint payload under construction, laid out by a format file.
pub struct Payload<'f> {
    format: &'f TracepointFormat,
    bytes: Vec<u8>,
}

impl<'f> Payload<'f> {
    pub fn new(format: &'f TracepointFormat) -> Payload<'f> {
        let len = format
            .fields
            .iter()
            .map(|f| f.offset + f.size)
            .max()
            .unwrap_or(0);
        let mut p = Payload {
            format,
            bytes: vec![0; len],
        };
        p.int("common_type", format.id.unwrap_or(0) as i64);
        p
    }

    /// Stores an integer field in its declared size; absent fields are skipped (the field
    /// set differs between versions, e.g. `success`).
    pub fn int(&mut self, name: &str, value: i64) -> &mut Self {
        if let Some(f) = self.format.field(name) {
            let le = value.to_ne_bytes();
            let n = f.size.min(8);
            if let Some(dst) = self.bytes.get_mut(f.offset..f.offset + n) {
                dst.copy_from_slice(&le[..n]);
            }
        }
        self
    }

    /// Stores a string into a `char[N]` field, NUL-padded and cut to N-1 bytes.
    pub fn str(&mut self, name: &str, value: &str) -> &mut Self {
        if let Some(f) = self.format.field(name) {
            let src = value.as_bytes();
            let n = src.len().min(f.size.saturating_sub(1));
            if let Some(dst) = self.bytes.get_mut(f.offset..f.offset + f.size) {
                dst.fill(0);
                dst[..n].copy_from_slice(&src[..n]);
            }
        }
        self
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A parsed ftrace filter: OR of ANDs of `field OP integer` (what psample and perf write for
/// pid filters). Parentheses and string compares are not emulated: they are refused with
/// EINVAL, so a caller relying on them finds out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    any_of: Vec<Vec<(String, Op, i64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Filter {
    /// Parses `text` against the tracepoint's fields; `None` is the kernel's EINVAL.
    pub fn parse(text: &str, format: &TracepointFormat) -> Option<Filter> {
        let mut any_of = Vec::new();
        for alt in text.split("||") {
            let mut all_of = Vec::new();
            for term in alt.split("&&") {
                let term = term.trim();
                let (name, op, value) = ["==", "!=", "<=", ">=", "<", ">"]
                    .iter()
                    .find_map(|op| term.split_once(op).map(|(a, b)| (a.trim(), *op, b.trim())))?;
                let op = match op {
                    "==" => Op::Eq,
                    "!=" => Op::Ne,
                    "<=" => Op::Le,
                    ">=" => Op::Ge,
                    "<" => Op::Lt,
                    _ => Op::Gt,
                };
                let f = format.field(name)?;
                if f.array_len.is_some() {
                    return None;
                }
                let value: i64 = match value.strip_prefix("0x") {
                    Some(hex) => i64::from_str_radix(hex, 16).ok()?,
                    None => value.parse().ok()?,
                };
                all_of.push((name.to_string(), op, value));
            }
            any_of.push(all_of);
        }
        Some(Filter { any_of })
    }

    /// Whether the payload passes (fields that cannot be read fail the term).
    pub fn matches(&self, format: &TracepointFormat, raw: &[u8]) -> bool {
        self.any_of.iter().any(|all| {
            all.iter().all(|(name, op, want)| {
                let Some(v) = format.field(name).and_then(|f| f.read_i64(raw).ok()) else {
                    return false;
                };
                match op {
                    Op::Eq => v == *want,
                    Op::Ne => v != *want,
                    Op::Lt => v < *want,
                    Op::Le => v <= *want,
                    Op::Gt => v > *want,
                    Op::Ge => v >= *want,
                }
            })
        })
    }
}

/// The format of a tracepoint id, for filters and payloads.
pub fn format_for(ev: &SchedEvents, id: u64) -> Option<&TracepointFormat> {
    ev.format_of(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile;

    #[test]
    fn debugfs_only_kernels_have_no_tracefs_and_need_a_mount() {
        let p = profile::upstream_3_10();
        let ev = SchedEvents::of(&p).unwrap();
        let id = Path::new("/sys/kernel/debug/tracing/events/sched/sched_switch/id");
        assert_eq!(lookup(&p, &ev, false, id), TracingPath::Missing);
        assert!(matches!(lookup(&p, &ev, true, id), TracingPath::File(_)));
        assert_eq!(
            lookup(&p, &ev, true, Path::new("/sys/kernel/tracing")),
            TracingPath::Missing
        );
        assert_eq!(
            lookup(&p, &ev, false, Path::new("/proc/self/maps")),
            TracingPath::NotTracing
        );
    }

    #[test]
    fn filters_follow_the_format_fields() {
        let ev = SchedEvents::of(&profile::v5_4()).unwrap();
        let f = Filter::parse("prev_pid == 42 || next_pid == 42", &ev.switch).unwrap();
        let mut p = Payload::new(&ev.switch);
        p.int("prev_pid", 42);
        assert!(f.matches(&ev.switch, &p.into_bytes()));
        let mut p = Payload::new(&ev.switch);
        p.int("prev_pid", 7).int("next_pid", 8);
        assert!(!f.matches(&ev.switch, &p.into_bytes()));
        assert!(Filter::parse("no_such_field == 1", &ev.switch).is_none());
        assert!(Filter::parse("prev_comm == 1", &ev.switch).is_none());
        assert!(Filter::parse("(prev_pid == 1)", &ev.switch).is_none());
    }
}

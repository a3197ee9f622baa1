//! pprof output: gzipped profile.proto, as `go tool pprof`, Pyroscope, Parca and Grafana read
//! it. Written by hand (see [`wire`]) so no protoc or generated code is needed.
//!
//! Layout of a psample profile:
//! - one location per distinct raw frame (mapping + address for user code, the address for
//!   kernel code), carrying one line per (inlined) function, innermost first, with the
//!   source line where DWARF has it;
//! - one mapping per distinct process mapping, with its file name and build-id (hex);
//! - the thread name (comm) as the root-most location, so the stacks are exactly the folded
//!   output's and [`to_folded`] turns a profile back into the same folded lines;
//! - function names carry the folded suffixes that are not implied by the layout (`_[k]`
//!   kernel, `_[j]` JIT, `_[w]` waker), so folded and pprof inputs diff cleanly;
//! - sample labels where the collector knows them (`pid`, `tid`, `thread`, `container`) and
//!   the user's `--label`s, for `go tool pprof -tags`/`-tagfocus` and backends' filters;
//! - the executable first among the mappings: pprof tools take the first mapping for the
//!   main binary (see [`Builder::finish`]).

pub mod proto;
pub mod wire;

use std::collections::{BTreeMap, HashMap};

use symbolize::{FrameKind, ModuleHandle, Symbolizer};
use unwind::{MappingId, Processes};

use crate::frame::Frame;
use crate::names::Names;
use crate::output::folded::escape_frame;
pub use proto::Profile;
use proto::{Function, Label, Line, Location, Mapping, Sample, ValueType};

/// Upper bound for a decompressed pprof file read by `diff`/`report`.
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

/// One element of a stack handed to the [`Builder`].
#[derive(Debug, Clone, Copy)]
pub enum Node<'a> {
    /// A raw frame, named like the folded output names it.
    Frame(Frame),
    /// A frame of a waker's stack (offcpu --wakers): names get `_[w]`, and the inline chain
    /// is read in the order the folded output draws wakers (leaf above root).
    Waker(Frame),
    /// A plain name (thread names, separators).
    Text(&'a str),
}

/// A label on a sample, before interning.
#[derive(Debug, Clone, Copy)]
pub enum SampleLabel<'a> {
    /// `key` = a string.
    Str(&'a str, &'a str),
    /// `key` = a number.
    Num(&'a str, i64),
}

/// A location line before interning: function name, source file, line.
type LineInfo = (String, Option<String>, Option<u32>);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum LocKey {
    Frame(Frame),
    Waker(Frame),
    Text(i64),
}

/// What the values of a profile mean.
#[derive(Debug, Clone)]
pub struct Meta {
    /// (type, unit) per value, e.g. [("samples","count"), ("cpu","nanoseconds")].
    pub sample_types: Vec<(String, String)>,
    /// (type, unit) of the sampling period.
    pub period_type: (String, String),
    /// The sampling period, in `period_type` units.
    pub period: i64,
    /// Wall-clock start, nanoseconds since the epoch.
    pub time_nanos: i64,
    /// Length of the profile, nanoseconds.
    pub duration_nanos: i64,
}

/// Collects stacks, symbolizing each distinct frame once, into a [`Profile`].
pub struct Builder<'a> {
    sym: &'a mut Symbolizer,
    procs: &'a Processes,
    named: &'a Names,
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<MappingId, (u64, ModuleHandle)>,
    locations: Vec<Location>,
    location_ids: HashMap<LocKey, u64>,
    samples: HashMap<(Vec<u64>, Vec<Label>), Vec<i64>>,
    scratch: Vec<u64>,
    /// Sample references per mapping id, to find the main binary.
    mapping_samples: HashMap<u64, u64>,
}

impl<'a> Builder<'a> {
    /// A builder symbolizing with `sym`, user frames from `procs`, named frames from `named`.
    pub fn new(sym: &'a mut Symbolizer, procs: &'a Processes, named: &'a Names) -> Self {
        Builder {
            sym,
            procs,
            named,
            strings: vec![String::new()],
            string_ids: HashMap::from([(String::new(), 0)]),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            mappings: Vec::new(),
            mapping_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            samples: HashMap::new(),
            scratch: Vec::new(),
            mapping_samples: HashMap::new(),
        }
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(id) = self.string_ids.get(s) {
            return *id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let name = self.string(name);
        let file = file.map_or(0, |f| self.string(f));
        if let Some(id) = self.function_ids.get(&(name, file)) {
            return *id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(Function {
            id,
            name,
            system_name: name,
            filename: file,
            start_line: 0,
        });
        self.function_ids.insert((name, file), id);
        id
    }

    fn mapping(&mut self, id: MappingId) -> Option<(u64, ModuleHandle)> {
        if let Some(m) = self.mapping_ids.get(&id) {
            return Some(*m);
        }
        let m = self.procs.get(id)?;
        let handle = self.sym.add_module(super::fold::module_spec(m));
        let (start, end, pgoff, path) = (m.start, m.end, m.pgoff, m.path.clone());
        let build_id = self
            .sym
            .build_id(handle)
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
            .unwrap_or_default();
        let pid = self.mappings.len() as u64 + 1;
        let filename = self.string(&path);
        let build_id = self.string(&build_id);
        self.mappings.push(Mapping {
            id: pid,
            memory_start: start,
            memory_limit: end,
            file_offset: pgoff,
            filename,
            build_id,
            has_functions: true,
            has_filenames: false,
            has_line_numbers: false,
            has_inline_frames: false,
        });
        self.mapping_ids.insert(id, (pid, handle));
        Some((pid, handle))
    }

    /// The lines (innermost first) of a user address, noting on its mapping what they
    /// carry; returns the mapping's id (0 when the mapping is gone).
    fn user_lines(&mut self, mapping: MappingId, addr: u64, lines: &mut Vec<LineInfo>) -> u64 {
        let Some((mid, handle)) = self.mapping(mapping) else {
            lines.push(("[unknown]".into(), None, None));
            return 0;
        };
        let detailed = self.sym.symbolize_detailed(handle, addr);
        let has_lines = detailed.iter().any(|d| d.line.is_some());
        let inline = detailed.len() > 1;
        if let Some(m) = self.mappings.get_mut(mid as usize - 1) {
            m.has_line_numbers |= has_lines;
            m.has_filenames |= has_lines;
            m.has_inline_frames |= inline;
        }
        for d in detailed {
            let n = escape_frame(&d.name);
            let n = match d.kind {
                FrameKind::Jit => format!("{n}_[j]"),
                FrameKind::Kernel => format!("{n}_[k]"),
                FrameKind::User | FrameKind::Inline => n,
            };
            lines.push((n, d.file, d.line));
        }
        mid
    }

    fn location(&mut self, node: Node<'_>) -> u64 {
        let key = match node {
            Node::Frame(f) => LocKey::Frame(f),
            Node::Waker(f) => LocKey::Waker(f),
            Node::Text(t) => LocKey::Text(self.string(t)),
        };
        if let Some(id) = self.location_ids.get(&key) {
            return *id;
        }
        let mut loc = Location {
            id: self.locations.len() as u64 + 1,
            ..Location::default()
        };
        // (name, file, line), innermost first.
        let mut lines: Vec<LineInfo> = Vec::new();
        let (frame, waker) = match node {
            Node::Frame(f) => (Some(f), false),
            Node::Waker(f) => (Some(f), true),
            Node::Text(t) => {
                lines.push((escape_frame(t), None, None));
                (None, false)
            }
        };
        match frame {
            Some(Frame::Kernel(addr)) => {
                loc.address = addr;
                let f = self.sym.symbolize_kernel(addr);
                lines.push((format!("{}_[k]", escape_frame(&f.name)), None, None));
            }
            Some(Frame::User { mapping, addr }) => {
                loc.address = addr;
                loc.mapping_id = self.user_lines(mapping, addr, &mut lines);
            }
            Some(Frame::Unmapped(addr)) => {
                loc.address = addr;
                lines.push(("[unknown]".into(), None, None));
            }
            Some(Frame::Label(l)) => lines.push((l.to_string(), None, None)),
            Some(Frame::Named(id)) => lines.push((escape_frame(self.named.get(id)), None, None)),
            None => {}
        }
        if lines.is_empty() {
            lines.push(("[unknown]".into(), None, None));
        }
        if waker {
            // The folded output draws a waker's stack leaf above root and each inline chain
            // innermost first; reversing the lines keeps [`to_folded`] in step with it.
            lines.reverse();
            for l in &mut lines {
                let base = ["_[k]", "_[i]", "_[j]"]
                    .iter()
                    .find_map(|s| l.0.strip_suffix(s))
                    .unwrap_or(&l.0)
                    .to_string();
                l.0 = format!("{base}_[w]");
            }
        }
        for (name, file, line) in lines {
            let function_id = self.function(&name, file.as_deref());
            loc.line.push(Line {
                function_id,
                line: line.map_or(0, i64::from),
            });
        }
        let id = loc.id;
        self.locations.push(loc);
        self.location_ids.insert(key, id);
        id
    }

    /// Add `values` to a stack given leaf first (the thread name is its last, root-most node).
    pub fn add(&mut self, nodes: &[Node<'_>], values: &[i64]) {
        self.add_labeled(nodes, values, &[]);
    }

    /// [`Self::add`] with labels on the sample; samples of one stack with different labels
    /// stay apart.
    pub fn add_labeled(&mut self, nodes: &[Node<'_>], values: &[i64], labels: &[SampleLabel<'_>]) {
        let mut ids = std::mem::take(&mut self.scratch);
        ids.clear();
        for n in nodes {
            let id = self.location(*n);
            ids.push(id);
        }
        let mut interned: Vec<Label> = labels
            .iter()
            .map(|l| match *l {
                SampleLabel::Str(k, v) => Label {
                    key: self.string(k),
                    str: self.string(v),
                    num: 0,
                },
                SampleLabel::Num(k, n) => Label {
                    key: self.string(k),
                    str: 0,
                    num: n,
                },
            })
            .collect();
        interned.sort();
        // Weighted by the first value; each mapping once per stack.
        let weight = values.first().map_or(1, |v| (*v).max(0) as u64);
        let mut seen: Vec<u64> = ids
            .iter()
            .filter_map(|id| self.location_mapping(*id))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        for m in seen {
            *self.mapping_samples.entry(m).or_insert(0) += weight;
        }
        let key = (ids, interned);
        match self.samples.get_mut(&key) {
            Some(v) => {
                for (a, b) in v.iter_mut().zip(values) {
                    *a = a.saturating_add(*b);
                }
            }
            None => {
                self.samples.insert(key.clone(), values.to_vec());
            }
        }
        self.scratch = key.0;
    }

    /// The mapping of a location (`None` for kernel and named frames).
    fn location_mapping(&self, id: u64) -> Option<u64> {
        let m = self.locations.get(id.checked_sub(1)? as usize)?.mapping_id;
        (m != 0).then_some(m)
    }

    /// Put the executable first, as pprof tools expect: among the mappings sampled, the one
    /// in the stacks of the most samples that is not a shared library (`*.so`, `*.so.N`)
    /// or a kernel-made mapping (`[vdso]`). Mapping ids are renumbered to match.
    fn main_mapping_first(&mut self) {
        let is_executable = |m: &Mapping, strings: &[String]| {
            let path = strings.get(m.filename as usize).map_or("", String::as_str);
            let name = path.rsplit('/').next().unwrap_or(path);
            path.starts_with('/') && !name.ends_with(".so") && !name.contains(".so.")
        };
        let Some(main) = self
            .mappings
            .iter()
            .filter(|m| is_executable(m, &self.strings))
            .max_by_key(|m| {
                let n = self.mapping_samples.get(&m.id).copied().unwrap_or(0);
                (n, std::cmp::Reverse(m.id))
            })
            .map(|m| m.id)
        else {
            return;
        };
        if main == 1 {
            return;
        }
        // Swap ids 1 and `main`: positions in `mappings` are id - 1.
        let swap = |id: u64| match id {
            1 => main,
            x if x == main => 1,
            x => x,
        };
        self.mappings.swap(0, main as usize - 1);
        for m in &mut self.mappings {
            m.id = swap(m.id);
        }
        for l in &mut self.locations {
            l.mapping_id = swap(l.mapping_id);
        }
    }

    /// The profile, with `meta` describing its values (samples sorted: the same profile always encodes to the same bytes).
    pub fn finish(mut self, meta: &Meta) -> Profile {
        let sample_type: Vec<ValueType> = meta
            .sample_types
            .iter()
            .map(|(t, u)| ValueType {
                ty: self.string(t),
                unit: self.string(u),
            })
            .collect();
        let period_type = Some(ValueType {
            ty: self.string(&meta.period_type.0),
            unit: self.string(&meta.period_type.1),
        });
        self.main_mapping_first();
        // Sorted so the same profile always encodes to the same bytes.
        let samples: BTreeMap<(Vec<u64>, Vec<Label>), Vec<i64>> = self.samples.drain().collect();
        Profile {
            sample_type,
            sample: samples
                .into_iter()
                .filter(|(_, v)| v.iter().any(|x| *x != 0))
                .map(|((location_id, label), value)| Sample {
                    location_id,
                    value,
                    label,
                })
                .collect(),
            mapping: self.mappings,
            location: self.locations,
            function: self.functions,
            string_table: self.strings,
            time_nanos: meta.time_nanos,
            duration_nanos: meta.duration_nanos,
            period_type,
            period: meta.period,
            comment: Vec::new(),
            default_sample_type: 0,
        }
    }
}

/// Nanoseconds since the epoch, as pprof's `time_nanos`.
pub fn time_nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

/// Which value of a profile to read: the first whose type is one of `preferred`, else the
/// last (pprof's default is the last sample type).
pub fn value_index(p: &Profile, preferred: &[&str]) -> usize {
    for want in preferred {
        if let Some(i) = p.sample_type.iter().position(|t| p.string(t.ty) == *want) {
            return i;
        }
    }
    p.sample_type.len().saturating_sub(1)
}

/// Folded lines (root first, merged, sorted) of one value of a profile. Names are those of
/// the folded output: inlined callees (every line of a location but the last) get `_[i]`.
pub fn to_folded(p: &Profile, value: usize) -> Result<Vec<(String, u64)>, String> {
    let locs: HashMap<u64, &Location> = p.location.iter().map(|l| (l.id, l)).collect();
    let funcs: HashMap<u64, &Function> = p.function.iter().map(|f| (f.id, f)).collect();
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    let mut parts: Vec<String> = Vec::new();
    for s in &p.sample {
        let v = s.value.get(value).copied().unwrap_or(0);
        if v <= 0 {
            continue;
        }
        parts.clear();
        for id in s.location_id.iter().rev() {
            let loc = locs
                .get(id)
                .ok_or_else(|| format!("sample refers to missing location {id}"))?;
            let n = loc.line.len();
            for (i, line) in loc.line.iter().enumerate().rev() {
                let name = funcs
                    .get(&line.function_id)
                    .map_or("[unknown]", |f| p.string(f.name));
                let name = if name.is_empty() { "[unknown]" } else { name };
                let mut name = escape_frame(name);
                let suffixed = ["_[k]", "_[i]", "_[j]", "_[w]"]
                    .iter()
                    .any(|x| name.ends_with(x));
                if i + 1 < n && !suffixed {
                    name.push_str("_[i]");
                }
                parts.push(name);
            }
            if loc.line.is_empty() {
                parts.push(format!("0x{:x}", loc.address));
            }
        }
        let e = merged.entry(parts.join(";")).or_insert(0);
        *e = e.saturating_add(v as u64);
    }
    Ok(merged.into_iter().collect())
}

#[cfg(test)]
mod tests;

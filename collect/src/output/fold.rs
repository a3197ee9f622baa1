//! Turning an aggregated raw profile into folded lines: every distinct frame is symbolized
//! exactly once, then stacks are rendered root first and merged (different addresses in the
//! same function collapse into one line, as stackcollapse-perf does).

use std::collections::{BTreeMap, HashMap};

use symbolize::{FrameKind, ModuleHandle, ModuleKind, ModuleSpec, Symbolizer};
use unwind::{MappingId, Processes};

use super::folded::{escape_comm, escape_frame};
use crate::frame::Frame;
use crate::names::Names;
use crate::profile::Profile;
use crate::tables::Tables;

/// What the symbolizer needs to know of a mapping seen at sample time.
pub fn module_spec(m: &unwind::Mapping) -> ModuleSpec {
    let kind = if m.path == "[vdso]" {
        ModuleKind::Vdso
    } else if m.path.is_empty() || m.path.starts_with('[') || m.path.starts_with("//anon") {
        ModuleKind::Anon
    } else {
        ModuleKind::File
    };
    ModuleSpec {
        kind,
        path: m.path.clone(),
        pid: m.pid,
        pid_start: m.pid_start,
        start: m.start,
        end: m.end,
        pgoff: m.pgoff,
        build_id: m.build_id.clone(),
        inode: m.inode,
    }
}

/// Lets the symbolizer download, in parallel, what debuginfod has for the mappings that
/// `frames` fall in, before they are symbolized one by one.
pub fn prefetch_debuginfo<'f>(
    sym: &mut Symbolizer,
    procs: &Processes,
    frames: impl Iterator<Item = &'f Frame>,
) {
    let mut seen = std::collections::HashSet::new();
    let specs: Vec<ModuleSpec> = frames
        .filter_map(|f| match f {
            Frame::User { mapping, .. } if seen.insert(*mapping) => procs.get(*mapping),
            _ => None,
        })
        .map(module_spec)
        .collect();
    sym.prefetch_debuginfo(&specs);
}

/// Symbolizes frames, remembering each answer.
pub struct Folder<'a> {
    sym: &'a mut Symbolizer,
    procs: &'a Processes,
    named: &'a Names,
    modules: HashMap<MappingId, ModuleHandle>,
    /// Frame → rendered names, root-most first (an inlined chain expands to several).
    cache: HashMap<Frame, Vec<String>>,
}

impl<'a> Folder<'a> {
    /// A folder naming [`Frame::Named`] frames from `named`.
    pub fn new(sym: &'a mut Symbolizer, procs: &'a Processes, named: &'a Names) -> Self {
        Folder {
            sym,
            procs,
            named,
            modules: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// `None` for a mapping the tracker no longer holds (it frees what frames should not
    /// refer to; a frame that does anyway shows as unknown rather than taking psample down).
    fn module(&mut self, id: MappingId) -> Option<ModuleHandle> {
        if let Some(h) = self.modules.get(&id) {
            return Some(*h);
        }
        let h = self.sym.add_module(module_spec(self.procs.get(id)?));
        self.modules.insert(id, h);
        Some(h)
    }

    fn names(&mut self, frame: Frame) -> &[String] {
        if !self.cache.contains_key(&frame) {
            let names = match frame {
                Frame::Kernel(addr) => {
                    let f = self.sym.symbolize_kernel(addr);
                    vec![format!("{}_[k]", escape_frame(&f.name))]
                }
                Frame::User { mapping, addr } => {
                    let syms = match self.module(mapping) {
                        Some(h) => self.sym.symbolize(h, addr),
                        None => Vec::new(),
                    };
                    let mut v: Vec<String> = syms
                        .into_iter()
                        .map(|f| {
                            let n = escape_frame(&f.name);
                            match f.kind {
                                FrameKind::Inline => format!("{n}_[i]"),
                                FrameKind::Jit => format!("{n}_[j]"),
                                FrameKind::Kernel => format!("{n}_[k]"),
                                FrameKind::User => n,
                            }
                        })
                        .collect();
                    // The symbolizer answers innermost first; folded stacks read root first.
                    v.reverse();
                    if v.is_empty() {
                        // JIT code forgotten under the mapping budget is still JIT code.
                        let jit = self.procs.evicted_jit(mapping);
                        v.push(if jit { "[jit]" } else { "[unknown]" }.into());
                    }
                    v
                }
                Frame::Unmapped(_) => vec!["[unknown]".into()],
                Frame::Label(l) => vec![l.to_string()],
                Frame::Named(id) => vec![escape_frame(self.named.get(id))],
            };
            self.cache.insert(frame, names);
        }
        &self.cache[&frame]
    }

    /// Render a leaf-first raw stack as a root-first folded stack under `comm`.
    pub fn render(&mut self, comm: &str, frames: &[Frame]) -> String {
        let mut s = escape_comm(comm);
        for f in frames.iter().rev() {
            for n in self.names(*f) {
                s.push(';');
                s.push_str(n);
            }
        }
        s
    }

    /// Render a leaf-first stack leaf first (as offwaketime draws the waker's stack above the
    /// blocked one), every name carrying `suffix` instead of its kind annotation.
    pub fn render_reversed(&mut self, frames: &[Frame], suffix: &str) -> String {
        let mut parts: Vec<String> = Vec::new();
        for f in frames {
            for n in self.names(*f).iter().rev() {
                let base = ["_[k]", "_[i]", "_[j]"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .unwrap_or(n);
                parts.push(format!("{base}{suffix}"));
            }
        }
        parts.join(";")
    }

    /// Fold a whole profile (its ids refer to `tables`) into sorted, merged lines.
    pub fn fold(&mut self, profile: &Profile, tables: &Tables) -> Vec<(String, u64)> {
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        for (name, stack, count) in profile.iter() {
            let line = self.render(tables.names.get(name), tables.stacks.get(stack));
            *merged.entry(line).or_insert(0) += count;
        }
        merged.into_iter().collect()
    }

    /// Distinct frames symbolized so far.
    pub fn distinct_frames(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_of_a_freed_mapping_is_unknown_not_a_panic() {
        let mut sym = Symbolizer::new(symbolize::SymbolizeOptions {
            inline: false,
            demangle: false,
            debug_dirs: vec![],
            kernel: false,
            debuginfod: None,
        });
        let procs = Processes::new();
        let named = Names::default();
        let mut f = Folder::new(&mut sym, &procs, &named);
        let gone = Frame::User {
            mapping: MappingId(12345),
            addr: 0x1000,
        };
        assert_eq!(f.render("x", &[gone]), "x;[unknown]");
    }
}

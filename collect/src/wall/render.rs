//! Rendering a wall profile: folded lines `comm;frames…;KIND NS` whose last frame is the
//! kind of time (`[on-cpu]`, `[off-cpu]`/`[off-cpu:S]`…, `[runnable]`), or pprof with three
//! values (`cpu`, `off-cpu`, `runnable`, all nanoseconds) and the kind as the leaf frame, so
//! that every pprof sample's values are the folded line's.

use std::collections::BTreeMap;

use symbolize::Symbolizer;

use crate::names::NameId;
use crate::offcpu::render::{key_lines, key_nodes};
use crate::offcpu::{Report, StackId, StackKey};
use crate::output::fold::{prefetch_debuginfo, Folder};
use crate::output::{folded::escape_comm, pprof, Format, Rendered};
use crate::profile::Profile;
use crate::session::driver::{Aggregation, Window};
use crate::tables::Snapshot;

/// The leaf of on-CPU time.
pub const KIND_ON: &str = "[on-cpu]";
/// The leaf of blocked time (`[off-cpu:S]` … with `--state`).
pub const KIND_OFF: &str = "[off-cpu]";
/// The leaf of runnable time (preempted, or woken and waiting for a CPU).
pub const KIND_RUNNABLE: &str = "[runnable]";

/// An ended wall profile (an interval's, or the whole run's).
pub struct WallProfile {
    /// On-CPU nanoseconds per (name, stack).
    pub oncpu: Profile,
    /// Blocked and runnable nanoseconds per key.
    pub report: Report,
    /// Off-CPU leaves name the blocked state.
    pub states: bool,
}

/// Where a piece of time came from, and so which of the three values it goes to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    On(NameId, StackId),
    Off(StackKey),
    Runnable(StackKey),
}

impl WallProfile {
    /// Every piece of time with its nanoseconds: on-CPU, off-CPU, runnable, in a
    /// deterministic order.
    fn sources(&self) -> Vec<(Source, u64)> {
        let r = &self.report;
        let mut v: Vec<(Source, u64)> = self
            .oncpu
            .iter()
            .map(|(name, stack, ns)| (Source::On(name, stack), ns))
            .chain(r.by_stack.iter().map(|(k, ns)| (Source::Off(*k), *ns)))
            .chain(r.runnable.iter().map(|(k, ns)| (Source::Runnable(*k), *ns)))
            .collect();
        v.sort_unstable();
        v
    }

    /// The kind leaf of a piece of time.
    fn leaf(&self, source: &Source) -> String {
        match source {
            Source::On(..) => KIND_ON.into(),
            Source::Runnable(_) => KIND_RUNNABLE.into(),
            Source::Off(key) => match key.state.filter(|_| self.states) {
                Some(letter) => format!("[off-cpu:{letter}]"),
                None => KIND_OFF.into(),
            },
        }
    }

    /// Folded lines with their kind leaf, merged.
    fn fold(&self, t: &Snapshot, folder: &mut Folder<'_>) -> Vec<(String, u64)> {
        let (stacks, names) = (&t.tables.stacks, &t.tables.names);
        let r = &self.report;
        let keys = r.by_stack.keys().chain(r.runnable.keys());
        let key_line = key_lines(folder, t, keys);
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        for (source, ns) in self.sources() {
            let line = match &source {
                Source::On(name, stack) => folder.render(names.get(*name), stacks.get(*stack)),
                Source::Off(k) | Source::Runnable(k) => match key_line.get(k) {
                    Some(l) => l.clone(),
                    None => continue,
                },
            };
            let e = merged
                .entry(format!("{line};{}", self.leaf(&source)))
                .or_insert(0);
            *e = e.saturating_add(ns);
        }
        merged.into_iter().filter(|(_, ns)| *ns > 0).collect()
    }

    fn prefetch(&self, t: &Snapshot, sym: &mut Symbolizer) {
        let stacks = &t.tables.stacks;
        let r = &self.report;
        let keys = r.by_stack.keys().chain(r.runnable.keys());
        let off = keys.flat_map(|k| {
            let waker = k.waker.map(|w| stacks.get(w.stack)).unwrap_or_default();
            stacks.get(k.stack).iter().chain(waker)
        });
        let on = self.oncpu.iter().flat_map(|(_, s, _)| stacks.get(s));
        prefetch_debuginfo(sym, &t.procs, on.chain(off));
    }

    fn pprof(&self, t: &Snapshot, sym: &mut Symbolizer, window: Window) -> pprof::Profile {
        let (stacks, names) = (&t.tables.stacks, &t.tables.names);
        let mut b = pprof::Builder::new(sym, &t.procs, &t.tables.frame_names);
        for (source, ns) in self.sources().into_iter().filter(|(_, ns)| *ns > 0) {
            let leaf = self.leaf(&source);
            let v = i64::try_from(ns).unwrap_or(i64::MAX);
            let mut nodes: Vec<pprof::Node<'_>> = vec![pprof::Node::Text(&leaf)];
            let (values, key) = match source {
                Source::On(name, stack) => {
                    nodes.extend(stacks.get(stack).iter().map(|f| pprof::Node::Frame(*f)));
                    ([v, 0, 0], Err(name))
                }
                Source::Off(key) => ([0, v, 0], Ok(key)),
                Source::Runnable(key) => ([0, 0, v], Ok(key)),
            };
            let comm = escape_comm(names.get(key.map_or_else(|n| n, |k| k.who)));
            let waker_comm = key
                .ok()
                .and_then(|k| k.waker)
                .map(|w| escape_comm(names.get(w.who)));
            match key {
                Ok(key) => nodes.extend(key_nodes(&key, stacks, &comm, waker_comm.as_deref())),
                Err(_) => nodes.push(pprof::Node::Text(&comm)),
            }
            b.add(&nodes, &values);
        }
        b.finish(&pprof::Meta {
            sample_types: vec![
                ("cpu".into(), "nanoseconds".into()),
                ("off-cpu".into(), "nanoseconds".into()),
                ("runnable".into(), "nanoseconds".into()),
            ],
            period_type: ("wall".into(), "nanoseconds".into()),
            period: 1,
            time_nanos: pprof::time_nanos(window.0),
            duration_nanos: window.1.as_nanos().min(i64::MAX as u128) as i64,
        })
    }
}

impl Aggregation for WallProfile {
    fn distinct_stacks(&self) -> usize {
        self.oncpu.distinct_stacks() + self.report.by_stack.len() + self.report.runnable.len()
    }

    fn render(
        &self,
        t: &Snapshot,
        sym: &mut Symbolizer,
        format: Format,
        window: Window,
    ) -> Rendered {
        self.prefetch(t, sym);
        if format == Format::Pprof {
            return Rendered::Pprof(self.pprof(t, sym, window));
        }
        let mut folder = Folder::new(sym, &t.procs, &t.tables.frame_names);
        Rendered::Lines(self.fold(t, &mut folder))
    }
}

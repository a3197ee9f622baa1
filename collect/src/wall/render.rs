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
#[derive(Clone, Copy)]
enum Source {
    On(NameId, StackId),
    Off(StackKey),
    Runnable(StackKey),
}

/// A piece of time: its folded stack without the kind leaf, the leaf, the nanoseconds.
type Piece = (String, String, u64, Source);

impl WallProfile {
    /// The leaf frame of blocked time under `key`.
    fn off_leaf(&self, key: &StackKey) -> String {
        match key.state.filter(|_| self.states) {
            Some(letter) => format!("[off-cpu:{letter}]"),
            None => KIND_OFF.into(),
        }
    }

    /// Every piece of time, on-CPU, off-CPU, runnable.
    fn lines(&self, t: &Snapshot, folder: &mut Folder<'_>) -> Vec<Piece> {
        let (stacks, names) = (&t.tables.stacks, &t.tables.names);
        let mut out = Vec::new();
        for (name, stack, ns) in self.oncpu.iter() {
            let line = folder.render(names.get(name), stacks.get(stack));
            out.push((line, KIND_ON.to_string(), ns, Source::On(name, stack)));
        }
        let r = &self.report;
        let off = key_lines(folder, t, r.by_stack.keys());
        for (key, ns) in &r.by_stack {
            if let Some(l) = off.get(key) {
                out.push((l.clone(), self.off_leaf(key), *ns, Source::Off(*key)));
            }
        }
        let runnable = key_lines(folder, t, r.runnable.keys());
        for (key, ns) in &r.runnable {
            if let Some(l) = runnable.get(key) {
                let leaf = KIND_RUNNABLE.to_string();
                out.push((l.clone(), leaf, *ns, Source::Runnable(*key)));
            }
        }
        out
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
        let mut folder = Folder::new(sym, &t.procs, &t.tables.frame_names);
        let lines = self.lines(t, &mut folder);
        drop(folder);
        let (stacks, names) = (&t.tables.stacks, &t.tables.names);
        let mut b = pprof::Builder::new(sym, &t.procs, &t.tables.frame_names);
        for (_, leaf, ns, source) in &lines {
            let v = i64::try_from(*ns).unwrap_or(i64::MAX);
            let mut nodes: Vec<pprof::Node<'_>> = vec![pprof::Node::Text(leaf)];
            let (values, key) = match *source {
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
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        for (line, leaf, ns, _) in self.lines(t, &mut folder) {
            let e = merged.entry(format!("{line};{leaf}")).or_insert(0);
            *e = e.saturating_add(ns);
        }
        Rendered::Lines(merged.into_iter().filter(|(_, ns)| *ns > 0).collect())
    }
}

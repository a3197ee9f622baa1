//! Rendering an off-CPU report: folded lines `comm;blocked…[;--;waker…;waker_comm] US`,
//! or pprof with an `off-cpu/microseconds` value whose per-line totals are exactly the
//! folded output's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use symbolize::Symbolizer;

use super::intervals::{Report, StackKey};
use crate::container::Containers;
use crate::output::fold::{prefetch_debuginfo, Folder};
use crate::output::pprof::SampleLabel;
use crate::output::{folded::escape_comm, pprof, Format, Rendered};
use crate::session::driver::{Aggregation, Window};
use crate::tables::Snapshot;

/// An ended report (an interval's, or the whole run's).
pub struct OffCpuReport {
    /// Blocked nanoseconds per key, and the interval counters.
    pub report: Report,
    /// The labels of its pprof samples.
    pub labels: ThreadLabels,
}

/// What labels the pprof samples of a blocked thread, as `record` labels its samples: `pid`,
/// `tid`, `thread`, `container` (where known) and every `--label`.
#[derive(Default)]
pub struct ThreadLabels {
    pid_of: HashMap<u32, u32>,
    container_of: HashMap<u32, Arc<str>>,
    extra: Vec<(String, String)>,
}

impl ThreadLabels {
    /// The labels of `report`'s threads (keys split by thread), with `pid_of` naming each
    /// thread's process, read when the report ends: the container is the process's now.
    pub fn of(report: &Report, extra: &[(String, String)], pid_of: impl Fn(u32) -> u32) -> Self {
        let mut containers = Containers::default();
        let mut out = ThreadLabels {
            extra: extra.to_vec(),
            ..Default::default()
        };
        for key in report.by_stack.keys() {
            if key.tid == 0 || out.pid_of.contains_key(&key.tid) {
                continue;
            }
            let pid = pid_of(key.tid);
            out.pid_of.insert(key.tid, pid);
            if let Some(c) = containers.get(pid) {
                out.container_of.insert(pid, c);
            }
        }
        out
    }

    /// A key's labels; `thread` is the blocked thread's name.
    fn sample_labels<'a>(&'a self, key: &StackKey, thread: &'a str) -> Vec<SampleLabel<'a>> {
        let mut labels = Vec::with_capacity(4 + self.extra.len());
        let pid = self.pid_of.get(&key.tid).copied();
        if let Some(pid) = pid {
            labels.push(SampleLabel::Num("pid", pid.into()));
            labels.push(SampleLabel::Num("tid", key.tid.into()));
        }
        labels.push(SampleLabel::Str("thread", thread));
        if let Some(c) = pid.and_then(|p| self.container_of.get(&p)) {
            labels.push(SampleLabel::Str("container", c));
        }
        labels.extend(self.extra.iter().map(|(k, v)| SampleLabel::Str(k, v)));
        labels
    }
}

impl Aggregation for OffCpuReport {
    fn distinct_stacks(&self) -> usize {
        self.report.by_stack.len()
    }

    fn render(
        &self,
        t: &Snapshot,
        sym: &mut Symbolizer,
        format: Format,
        window: Window,
    ) -> Rendered {
        render(self, t, sym, format, window)
    }
}

/// A report as folded lines or pprof, in microseconds. pprof values are rounded so that
/// every folded line's total is exactly the folded output's (which sums nanoseconds per
/// line, then truncates to microseconds): largest remainders get the leftover units.
fn render(
    r: &OffCpuReport,
    t: &Snapshot,
    sym: &mut Symbolizer,
    format: Format,
    window: Window,
) -> Rendered {
    let report = &r.report;
    let frames = report.by_stack.keys().flat_map(|k| {
        let waker = k
            .waker
            .map(|w| t.tables.stacks.get(w.stack))
            .unwrap_or_default();
        t.tables.stacks.get(k.stack).iter().chain(waker)
    });
    prefetch_debuginfo(sym, &t.procs, frames);
    if format != Format::Pprof {
        return Rendered::Lines(fold_report(report, t, sym));
    }
    let lines = report_lines(report, t, sym);
    let (stacks, names) = (&t.tables.stacks, &t.tables.names);
    let mut by_line: BTreeMap<&str, Vec<(&StackKey, u64)>> = BTreeMap::new();
    for (key, ns) in &report.by_stack {
        if let Some(l) = lines.get(key) {
            by_line.entry(l.as_str()).or_default().push((key, *ns));
        }
    }
    let mut b = pprof::Builder::new(sym, &t.procs, &t.tables.frame_names);
    for (_, mut keys) in by_line {
        let line_ns: u64 = keys.iter().map(|k| k.1).sum();
        let mut left = line_ns / 1000 - keys.iter().map(|k| k.1 / 1000).sum::<u64>();
        // Deterministic: by remainder, then key order.
        keys.sort_by(|a, b| (b.1 % 1000).cmp(&(a.1 % 1000)).then(a.0.cmp(b.0)));
        for (key, ns) in keys {
            let mut us = ns / 1000;
            if left > 0 {
                us += 1;
                left -= 1;
            }
            if us == 0 {
                continue;
            }
            let thread = names.get(key.who);
            let comm = escape_comm(thread);
            let waker_comm = key.waker.map(|w| escape_comm(names.get(w.who)));
            let nodes = key_nodes(key, stacks, &comm, waker_comm.as_deref());
            let labels = r.labels.sample_labels(key, thread);
            b.add_labeled(&nodes, &[i64::try_from(us).unwrap_or(i64::MAX)], &labels);
        }
    }
    Rendered::Pprof(b.finish(&pprof::Meta {
        sample_types: vec![("off-cpu".into(), "microseconds".into())],
        period_type: ("off-cpu".into(), "microseconds".into()),
        period: 1,
        time_nanos: pprof::time_nanos(window.0),
        duration_nanos: window.1.as_nanos().min(i64::MAX as u128) as i64,
    }))
}

/// A key's pprof nodes, leaf first (the reverse of the folded line): the waker's comm, the
/// waker's stack root..leaf, "--", the blocked stack leaf..root, `comm`. `waker_comm` is
/// the escaped name of the key's waker, if it has one.
pub fn key_nodes<'a>(
    key: &StackKey,
    stacks: &crate::stacks::Stacks,
    comm: &'a str,
    waker_comm: Option<&'a str>,
) -> Vec<pprof::Node<'a>> {
    let mut nodes: Vec<pprof::Node<'a>> = Vec::new();
    if let (Some(w), Some(waker_comm)) = (key.waker, waker_comm) {
        nodes.push(pprof::Node::Text(waker_comm));
        nodes.extend(
            stacks
                .get(w.stack)
                .iter()
                .rev()
                .map(|f| pprof::Node::Waker(*f)),
        );
        nodes.push(pprof::Node::Text("--"));
    }
    nodes.extend(stacks.get(key.stack).iter().map(|f| pprof::Node::Frame(*f)));
    nodes.push(pprof::Node::Text(comm));
    nodes
}

/// Render the report as folded lines with microsecond counts.
fn fold_report(report: &Report, t: &Snapshot, sym: &mut Symbolizer) -> Vec<(String, u64)> {
    let lines = report_lines(report, t, sym);
    let mut by_line: BTreeMap<String, u64> = BTreeMap::new();
    for (key, ns) in &report.by_stack {
        if let Some(l) = lines.get(key) {
            *by_line.entry(l.clone()).or_insert(0) += ns;
        }
    }
    by_line
        .into_iter()
        .map(|(l, ns)| (l, ns / 1000))
        .filter(|(_, us)| *us > 0)
        .collect()
}

/// The folded line of every key of a report.
fn report_lines(report: &Report, t: &Snapshot, sym: &mut Symbolizer) -> HashMap<StackKey, String> {
    let mut folder = Folder::new(sym, &t.procs, &t.tables.frame_names);
    key_lines(&mut folder, t, report.by_stack.keys())
}

/// The folded line of each of `keys` (`comm;blocked…[;--;waker…;waker_comm]`).
pub fn key_lines<'k>(
    folder: &mut Folder<'_>,
    t: &Snapshot,
    keys: impl Iterator<Item = &'k StackKey>,
) -> HashMap<StackKey, String> {
    let mut out: HashMap<StackKey, String> = HashMap::new();
    let (stacks, names) = (&t.tables.stacks, &t.tables.names);
    for key in keys {
        let mut line = folder.render(names.get(key.who), stacks.get(key.stack));
        if let Some(w) = key.waker {
            line.push_str(";--");
            let waker = folder.render_reversed(stacks.get(w.stack), "_[w]");
            if !waker.is_empty() {
                line.push(';');
                line.push_str(&waker);
            }
            line.push(';');
            line.push_str(&escape_comm(names.get(w.who)));
        }
        out.insert(*key, line);
    }
    out
}

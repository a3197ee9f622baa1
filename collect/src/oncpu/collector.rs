//! `record`'s collector: every sample's stack counted per thread name, plus what in-kernel
//! BPF aggregation counted.

use perfring::order::Ordered;
use perfring::record::Record;
use symbolize::Symbolizer;

use super::bpf::BpfAggregation;
use crate::container::Containers;
use crate::output::fold::{prefetch_debuginfo, Folder};
use crate::output::pprof::SampleLabel;
use crate::output::{folded::escape_comm, pprof, Format, Labels, Rendered};
use crate::pipeline::Pipeline;
use crate::profile::{Origin, Profile};
use crate::session::driver::{Aggregation, Collector, Finished, Stopped, Window};
use crate::session::Summary;
use crate::tables::Snapshot;

/// On-CPU samples per (thread name, stack).
pub struct Recorder {
    profile: Profile,
    samples: u64,
    bpf: Option<Box<BpfAggregation>>,
    /// Nanoseconds of CPU time one sample stands for (1/HZ), for pprof's cpu value.
    period_ns: u64,
    /// `cpu-clock at 99 Hz, call graph fp`.
    event: String,
    labels: Labels,
    /// The container of each process sampled.
    containers: Containers,
}

impl Recorder {
    /// A recorder of samples of `event`, taken every `period_ns`, and of what `bpf`
    /// aggregates in the kernel.
    pub fn new(
        event: String,
        period_ns: u64,
        bpf: Option<Box<BpfAggregation>>,
        labels: Labels,
    ) -> Self {
        Recorder {
            profile: Profile::new(),
            samples: 0,
            bpf,
            period_ns,
            event,
            labels,
            containers: Containers::default(),
        }
    }

    fn take(&mut self) -> Box<dyn Aggregation> {
        // Pids seen in this interval may be reused by other processes in the next.
        self.containers = Containers::default();
        Box::new(OnCpuProfile {
            profile: std::mem::take(&mut self.profile),
            period_ns: self.period_ns,
            labels: self.labels.extra.clone(),
        })
    }
}

impl Collector for Recorder {
    fn labels(&self) -> Labels {
        self.labels.clone()
    }

    fn record(&mut self, p: &mut Pipeline, o: &Ordered<'_>) {
        let Record::Sample(s) = &o.record else { return };
        let (Some(pid), Some(tid)) = (s.pid, s.tid) else {
            return;
        };
        // With -a psample would sample itself reading the rings: leave it out.
        if pid == p.own_pid {
            return;
        }
        p.tracker.saw_thread(tid);
        let stack = p.sample_stack(s, pid);
        let name = p.thread_name(pid, tid);
        add_sample(
            &mut self.profile,
            &mut self.containers,
            name,
            stack,
            (pid, tid),
            1,
        );
        self.samples += 1;
    }

    fn drain(&mut self, p: &mut Pipeline) -> Result<(), String> {
        match self.bpf.as_mut() {
            Some(b) => b
                .drain(p, &mut self.profile, &mut self.containers)
                .map_err(|e| format!("reading BPF counts: {e}")),
            None => Ok(()),
        }
    }

    fn end_interval(&mut self, _p: &mut Pipeline) -> Box<dyn Aggregation> {
        self.take()
    }

    fn finish(&mut self, _p: &mut Pipeline, stopped: &Stopped) -> Finished {
        Finished {
            aggregation: self.take(),
            window: stopped.elapsed,
        }
    }

    fn progress(&self) -> u64 {
        self.samples + self.bpf.as_ref().map_or(0, |b| b.samples)
    }

    fn summarize(&self, p: &Pipeline, s: &mut Summary) {
        if let Some(b) = &self.bpf {
            s.line(
                "bpf",
                format!(
                    "in-kernel aggregation: {} samples in {} stack keys; {}",
                    b.samples,
                    b.keys,
                    b.missing()
                ),
            );
        }
        s.line("event", self.event.clone());
        s.line("samples", self.progress().to_string());
        s.line("threads seen", p.tracker.threads_seen().to_string());
        s.fact("event", self.event.clone());
        s.fact("samples", self.progress());
        s.fact("threads_seen", p.tracker.threads_seen());
        if let Some(b) = &self.bpf {
            let m = b.missing_counts();
            s.fact(
                "bpf",
                serde_json::json!({
                    "samples": b.samples,
                    "keys": b.keys,
                    "spilled_samples": m.0,
                    "lost_stacks": m.1,
                }),
            );
        }
    }

    fn summarize_tail(&self, _p: &Pipeline, s: &mut Summary) {
        if self.progress() == 0 {
            s.warnings.push(
                "no samples were collected (was the target idle or blocked? try `psample \
                 offcpu`)"
                    .into(),
            );
        }
    }
}

/// Count `n` samples of `stack` in thread `(pid, tid)`, noting its process's container.
pub fn add_sample(
    profile: &mut Profile,
    containers: &mut Containers,
    name: crate::names::NameId,
    stack: crate::stacks::StackId,
    (pid, tid): (u32, u32),
    n: u64,
) {
    profile.add_from(name, stack, Origin { pid, tid }, n);
    if profile.container(pid).is_none() {
        profile.set_container(pid, containers.get(pid));
    }
}

/// An on-CPU profile and what one sample is worth.
pub struct OnCpuProfile {
    /// Samples per (name, stack, thread).
    pub profile: Profile,
    /// Nanoseconds of CPU time per sample.
    pub period_ns: u64,
    /// `--label`s for every pprof sample.
    pub labels: Vec<(String, String)>,
}

impl Aggregation for OnCpuProfile {
    fn distinct_stacks(&self) -> usize {
        self.profile.distinct_stacks()
    }

    /// Folded lines, or pprof with (samples, count) and (cpu, nanoseconds) values.
    fn render(
        &self,
        t: &Snapshot,
        sym: &mut Symbolizer,
        format: Format,
        window: Window,
    ) -> Rendered {
        let tables = &t.tables;
        let frames = self
            .profile
            .iter()
            .flat_map(|(_, stack, _)| tables.stacks.get(stack));
        prefetch_debuginfo(sym, &t.procs, frames);
        if format != Format::Pprof {
            let mut folder = Folder::new(sym, &t.procs, &tables.frame_names);
            return Rendered::Lines(folder.fold(&self.profile, tables));
        }
        let mut b = pprof::Builder::new(sym, &t.procs, &tables.frame_names);
        let period = self.period_ns as i64;
        for (name, stack, origin, count) in self.profile.iter_origins() {
            let thread = tables.names.get(name);
            let comm = escape_comm(thread);
            let frames = tables.stacks.get(stack);
            let mut nodes: Vec<pprof::Node<'_>> = Vec::with_capacity(frames.len() + 1);
            nodes.extend(frames.iter().map(|f| pprof::Node::Frame(*f)));
            nodes.push(pprof::Node::Text(&comm));
            let mut labels = Vec::with_capacity(4 + self.labels.len());
            if origin.pid != 0 || origin.tid != 0 {
                labels.push(SampleLabel::Num("pid", origin.pid.into()));
                labels.push(SampleLabel::Num("tid", origin.tid.into()));
            }
            labels.push(SampleLabel::Str("thread", thread));
            if let Some(c) = self.profile.container(origin.pid) {
                labels.push(SampleLabel::Str("container", c));
            }
            labels.extend(self.labels.iter().map(|(k, v)| SampleLabel::Str(k, v)));
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            b.add_labeled(&nodes, &[count, count.saturating_mul(period)], &labels);
        }
        Rendered::Pprof(b.finish(&pprof::Meta {
            sample_types: vec![
                ("samples".into(), "count".into()),
                ("cpu".into(), "nanoseconds".into()),
            ],
            period_type: ("cpu".into(), "nanoseconds".into()),
            period,
            time_nanos: pprof::time_nanos(window.0),
            duration_nanos: window.1.as_nanos().min(i64::MAX as u128) as i64,
        }))
    }
}

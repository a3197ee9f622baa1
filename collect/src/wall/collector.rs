//! `wall`'s collector: on-CPU samples are counted per stack by their period and told to the
//! interval engine (each thread's on-CPU total; an interval whose switch-in was missed ends
//! there); every other record goes to offcpu's collector, whose engine in wall mode counts
//! blocked and runnable time.

use perfring::order::Ordered;
use perfring::record::Record;

use super::render::WallProfile;
use crate::fast_map::FastMap;
use crate::names::Names;
use crate::offcpu::events::Tracepoints;
use crate::offcpu::{OffCpu, Plan, Report, ThreadTotals};
use crate::output::Labels;
use crate::pipeline::Pipeline;
use crate::profile::Profile;
use crate::session::driver::{Aggregation, Collector, Finished, Stopped};
use crate::session::Summary;
use crate::tables::{Keep, Remap};

/// On-CPU, blocked and runnable time per stack, from one session's records.
pub struct Wall {
    off: OffCpu,
    labels: Labels,
    /// The on-CPU sampling spec, and event id → spec.
    oncpu_spec: usize,
    ids: FastMap<u64, usize>,
    /// On-CPU nanoseconds per (name, stack).
    profile: Profile,
    samples: u64,
    /// What one sample stands for when it carries no period.
    period_ns: u64,
    /// `cpu-clock every 10.101 ms of CPU time (99 Hz), call graph fp`.
    event: String,
    /// Off-CPU leaves name the blocked state (`--state`).
    states: bool,
}

impl Wall {
    /// A collector for a session set up by `plan`, whose on-CPU samples come from
    /// `oncpu_spec`, each worth its period (else `period_ns`).
    pub fn new(
        plan: Plan,
        tp: &Tracepoints,
        oncpu_spec: usize,
        period_ns: u64,
        event: String,
        states: bool,
    ) -> Self {
        Wall {
            labels: plan.labels.clone(),
            ids: plan.specs.ids.clone(),
            off: OffCpu::new(plan, tp),
            oncpu_spec,
            profile: Profile::new(),
            samples: 0,
            period_ns,
            event,
            states,
        }
    }

    fn on_sample(&mut self, p: &mut Pipeline, o: &Ordered<'_>) {
        let Record::Sample(s) = &o.record else { return };
        let (Some(pid), Some(tid), Some(time)) = (s.pid, s.tid, s.time) else {
            return;
        };
        // The idle task's time is nobody's wall time; psample's own (-a) is left out.
        if tid == 0 || pid == p.own_pid {
            return;
        }
        p.tracker.saw_thread(tid);
        let stack = p.sample_stack(s, pid);
        let name = p.thread_name(pid, tid);
        let period = s.period.filter(|&n| n > 0).unwrap_or(self.period_ns);
        self.profile.add(name, stack, period);
        self.samples += 1;
        self.off.sampled(time, o.cpu, tid, name, period);
    }

    fn take(&mut self, report: Report) -> Box<dyn Aggregation> {
        Box::new(WallProfile {
            oncpu: std::mem::take(&mut self.profile),
            report,
            states: self.states,
        })
    }
}

impl Collector for Wall {
    fn labels(&self) -> Labels {
        self.labels.clone()
    }

    fn start(&mut self, p: &mut Pipeline) {
        self.off.start(p);
    }

    fn record(&mut self, p: &mut Pipeline, o: &Ordered<'_>) {
        if let Record::Sample(s) = &o.record {
            if s.id.and_then(|id| self.ids.get(&id)) == Some(&self.oncpu_spec) {
                return self.on_sample(p, o);
            }
        }
        self.off.record(p, o);
    }

    fn upkeep(&mut self, p: &mut Pipeline) {
        self.off.upkeep(p);
    }

    fn counters(&mut self, session: &perfring::event::Session) {
        self.off.counters(session);
    }

    fn end_interval(&mut self, _p: &mut Pipeline) -> Box<dyn Aggregation> {
        let report = self.off.end_report();
        self.take(report)
    }

    fn keep(&self, keep: &mut Keep) {
        self.off.keep(keep);
    }

    fn remap(&mut self, remap: &Remap) {
        self.off.remap(remap);
    }

    fn finish(&mut self, _p: &mut Pipeline, stopped: &Stopped) -> Finished {
        let (report, window) = self.off.finish_report(stopped);
        Finished {
            aggregation: self.take(report),
            window,
        }
    }

    fn progress(&self) -> u64 {
        self.samples + self.off.progress()
    }

    fn summarize(&self, p: &Pipeline, s: &mut Summary) {
        let r = self.off.totals();
        let window = self.off.window_ns();
        s.line("event", self.event.clone());
        s.line(
            "wall time",
            format!(
                "on-CPU {} ({} samples), off-CPU {} in {} intervals, runnable {} \
                 ({} threads)",
                secs(r.oncpu_ns),
                self.samples,
                secs(r.blocked_ns),
                r.counted_intervals,
                secs(r.runnable_ns),
                r.thread_count()
            ),
        );
        thread_lines(r, &p.tables.names, window, s);
        self.off.summarize_events(s);
    }

    fn summarize_tail(&self, p: &Pipeline, s: &mut Summary) {
        self.off.summarize_losses(p, s);
        if self.samples == 0 {
            s.warnings.push(
                "no on-CPU samples were collected: the targets did not run, or cpu-clock \
                 sampling is not allowed here"
                    .into(),
            );
        }
    }

    fn table_sizes(&self) -> String {
        format!(", {} engine threads", self.off.engine_threads())
    }
}

fn secs(ns: u64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The ten threads with the most time accounted for: each kind's share of the window, the
/// span its time covers (shorter than the window for a thread that started or exited inside
/// it), and what is unexplained inside that span (records lost; blocked time the filters
/// left out is said separately).
fn thread_lines(r: &Report, names: &Names, window_ns: u64, s: &mut Summary) {
    let mut threads: Vec<(&u32, &ThreadTotals)> = r.per_thread.iter().collect();
    threads.sort_by(|a, b| {
        b.1.accounted_ns()
            .cmp(&a.1.accounted_ns())
            .then(a.0.cmp(b.0))
    });
    for (tid, t) in threads.iter().take(10) {
        let accounted = t.accounted_ns();
        let span = t.span_ns().min(window_ns).max(accounted.min(window_ns));
        let filtered = if t.filtered_ns > 0 {
            format!(", filtered {:.0}% (-m/-M)", pct(t.filtered_ns, window_ns))
        } else {
            String::new()
        };
        let seen = if span + window_ns / 100 < window_ns {
            format!(" (seen for {} of it)", secs(span))
        } else {
            String::new()
        };
        s.line(
            &format!("  {}/{tid}", names.get(t.who)),
            format!(
                "on-CPU {:.1}%, off-CPU {:.1}%, runnable {:.1}%{filtered} of the {} \
                 window{seen}; unexplained {} ({:.1}%)",
                pct(t.oncpu_ns, window_ns),
                pct(t.blocked_ns, window_ns),
                pct(t.runnable_ns, window_ns),
                secs(window_ns),
                secs(span.saturating_sub(accounted)),
                pct(span.saturating_sub(accounted), span),
            ),
        );
    }
}

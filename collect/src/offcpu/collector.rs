//! `offcpu`'s collector: records become the interval engine's events (switch-outs with the
//! blocked stack, switch-ins, wakeups with the waker's stack, losses, exits, execs), in the
//! time order the reader delivers them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use perfring::order::Ordered;
use perfring::record::{Record, Sample};
use perfring::tracepoint::{SchedSwitchDecoder, SchedWakeupDecoder, TaskState};
use serde_json::{json, Value};

use super::delivery::Delivery;
use super::events::{Specs, Tracepoints};
use super::intervals::{Engine, OffcpuEvent, Options, Report, ThreadTotals};
use super::legacy;
use super::render::{OffCpuReport, ThreadLabels};
use crate::fast_map::FastSet;
use crate::frame::Frame;
use crate::names::{NameId, Names};
use crate::output::Labels;
use crate::pipeline::Pipeline;
use crate::session::driver::{monotonic_ns, Aggregation, Collector, Finished, Stopped};
use crate::session::{StopCause, Summary};
use crate::tables::{Keep, Remap};
use crate::target::{self, Target};
use crate::tracker::{Tracker, IDLE_COMM};

/// What the engine saw, for the summary.
#[derive(Default)]
struct Counts {
    switch_outs: u64,
    switch_ins: u64,
    wakeups: u64,
    decode_errors: u64,
    lost_records: u64,
    /// Wakeup samples that arrived, against the kernel's counters.
    delivery: Delivery,
}

/// How the session was set up, as the collector needs it.
pub struct Plan {
    /// Engine options (`-m`, `-M`, `--state`, `--wakers`).
    pub options: Options,
    /// The specs and their ids.
    pub specs: Specs,
    /// The mechanisms chosen, for the summary.
    pub mechanisms: Vec<String>,
    /// Sample times are CLOCK_MONOTONIC (else the window comes from the events).
    pub clock_monotonic: bool,
    /// Switch-ins come from SWITCH / SWITCH_CPU_WIDE records (else from next_pid).
    pub switch_records: bool,
    /// The target, and its processes.
    pub target: Target,
    /// The target processes.
    pub pids: Vec<u32>,
    /// Title and unit of the flame graph.
    pub labels: Labels,
}

/// Blocked intervals per stack, from one session's records.
pub struct OffCpu {
    plan: Plan,
    engine: Engine,
    switch_dec: SchedSwitchDecoder,
    wakeup_dec: Option<SchedWakeupDecoder>,
    /// Continuous mode: the counters of the intervals already written, for the summary.
    totals: Report,
    counts: Counts,
    targets: FastSet<u32>,
    start_ns: u64,
    first_time: Option<u64>,
    last_time: u64,
    upkeep: Upkeep,
    /// Set at the finish: the window the profile covers, and the engine's thread count.
    window_ns: u64,
    engine_threads: usize,
}

impl OffCpu {
    /// A collector for a session set up by `plan`, decoding with `tp`'s decoders.
    pub fn new(plan: Plan, tp: &Tracepoints) -> Self {
        OffCpu {
            engine: Engine::new(plan.options.clone(), 0),
            switch_dec: tp.switch_dec.clone(),
            wakeup_dec: tp.wakeup_decoder(),
            totals: Report::default(),
            counts: Counts::default(),
            targets: plan.pids.iter().copied().collect(),
            start_ns: 0,
            first_time: None,
            last_time: 0,
            upkeep: Upkeep::new(),
            window_ns: 0,
            engine_threads: 0,
            plan,
        }
    }

    fn system_wide(&self) -> bool {
        matches!(self.plan.target, Target::AllCpus)
    }

    /// Threads already blocked: counted from the start under a frame that says so.
    fn blocked_at_start(&mut self, p: &mut Pipeline) {
        if self.system_wide() || matches!(self.plan.target, Target::Command(_)) {
            return;
        }
        // -t: only the threads asked for, not every thread of their processes.
        let only: Option<HashSet<u32>> = match &self.plan.target {
            Target::Tids(t) => Some(t.iter().copied().collect()),
            _ => None,
        };
        for &pid in &self.plan.pids {
            for tid in target::threads_of(pid).unwrap_or_default() {
                if only.as_ref().is_some_and(|o| !o.contains(&tid)) {
                    continue;
                }
                let Some(letter) = thread_state(pid, tid) else {
                    continue;
                };
                let state = TaskState::from_proc_letter(letter);
                if state == TaskState::Runnable {
                    continue;
                }
                let mut frames = proc_kernel_stack(pid, tid, &mut p.tables.frame_names);
                frames.push(Frame::Label("[blocked at start]"));
                let id = p.intern_stack(&frames);
                let who = p.thread_name(pid, tid);
                self.engine.blocked_at_start(who, tid, state, id);
            }
        }
    }

    /// A CPU-wide or system-wide `sched_switch` names the task switching in (`next_pid`).
    fn switch_in_from_next(&mut self, p: &Pipeline, time: u64, cpu: u32, next: u32) {
        let wanted = self.system_wide() || self.targets.contains(&pid_of_thread(&p.tracker, next));
        if next != 0 && next != p.own_pid && wanted {
            self.counts.switch_ins += 1;
            let tid = next;
            self.engine.push(OffcpuEvent::SwitchIn { time, cpu, tid });
        }
    }

    fn on_switch(&mut self, p: &mut Pipeline, s: &Sample<'_>, raw: &[u8], spec: usize, cpu: u32) {
        let (Some(pid), Some(tid), Some(time)) = (s.pid, s.tid, s.time) else {
            return;
        };
        let Ok(sw) = self.switch_dec.decode(raw) else {
            self.counts.decode_errors += 1;
            return;
        };
        let cpu_wide_fallback = Some(spec) == self.plan.specs.cpu_switch;
        if (self.system_wide() && !self.plan.switch_records) || cpu_wide_fallback {
            self.switch_in_from_next(p, time, cpu, sw.next_pid.max(0) as u32);
            if cpu_wide_fallback {
                return;
            }
        }
        // The sample runs in the context of prev: the blocked task.
        if tid == 0 || pid == p.own_pid {
            return;
        }
        p.tracker.saw_thread(tid);
        let stack = p.sample_stack(s, pid);
        let who = p.thread_name(pid, tid);
        self.counts.switch_outs += 1;
        let state = sw.prev_state;
        let ev = OffcpuEvent::SwitchOut {
            time,
            cpu,
            tid,
            who,
            state,
            stack,
        };
        self.engine.push(ev);
    }

    fn on_wakeup(&mut self, p: &mut Pipeline, s: &Sample<'_>, raw: &[u8], cpu: u32) {
        let (Some(pid), Some(tid), Some(time)) = (s.pid, s.tid, s.time) else {
            return;
        };
        let Some(dec) = &self.wakeup_dec else { return };
        let Ok(w) = dec.decode(raw) else {
            self.counts.decode_errors += 1;
            return;
        };
        // Before 4.3 the tracepoint also fires for wakeups that woke nothing.
        if w.success == Some(false) || w.pid <= 0 {
            return;
        }
        // Without --wakers (wall mode) the wakeup only says when the thread became
        // runnable: its sample carries no stack.
        if !self.plan.options.wakers {
            self.counts.wakeups += 1;
            let (waker, waker_stack) = (p.name(IDLE_COMM), p.intern_stack(&[]));
            let target_tid = w.pid as u32;
            let ev = OffcpuEvent::Wakeup {
                time,
                cpu,
                target_tid,
                waker,
                waker_stack,
            };
            return self.engine.push(ev);
        }
        // Wakers are often outside the target (another process, an interrupt on top of
        // any task): learn their address space and name the first time they show up.
        if pid != 0 && !p.tracker.procs.contains(pid) {
            p.tracker.load_process(pid);
        }
        let waker_stack = p.sample_stack(s, pid);
        // An interrupt on an idle CPU wakes in the context of the idle task.
        let waker = if tid == 0 {
            p.name(IDLE_COMM)
        } else {
            p.thread_name(pid, tid)
        };
        self.counts.wakeups += 1;
        self.engine.push(OffcpuEvent::Wakeup {
            time,
            cpu,
            target_tid: w.pid as u32,
            waker,
            waker_stack,
        });
    }

    /// A syscall exit, taken in the thread's own context: it is running again (see
    /// [`super::legacy`]).
    fn on_sys_exit(&mut self, p: &Pipeline, s: &Sample<'_>, cpu: u32) {
        let (Some(pid), Some(tid), Some(time)) = (s.pid, s.tid, s.time) else {
            return;
        };
        if tid != 0 && pid != p.own_pid {
            self.engine.push(OffcpuEvent::Ran { time, cpu, tid });
        }
    }

    /// A switch-in record: the task of its sample_id (written in the incoming task's
    /// context; a SWITCH_CPU_WIDE's next_prev names the task that left).
    fn on_switch_record(&mut self, time: u64, cpu: u32, tid: Option<u32>, cpu_wide: bool) {
        let Some(tid) = tid.filter(|&t| !cpu_wide || t != 0) else {
            return;
        };
        self.counts.switch_ins += 1;
        self.engine.push(OffcpuEvent::SwitchIn { time, cpu, tid });
    }

    /// Where the window ends on CLOCK_MONOTONIC. Targets that exited end it at their last
    /// record: the loop notices the exit only after its current batch, which can be long (a
    /// cold DWARF unwind), and that time after the exit was nobody's blocked time.
    fn stop_ns(&self, stopped: &Stopped) -> u64 {
        if self.plan.clock_monotonic && stopped.cause == StopCause::TargetsExited {
            self.last_time.max(self.start_ns).min(stopped.monotonic_ns)
        } else {
            stopped.monotonic_ns
        }
    }

    /// The last report, added to the totals of the intervals already written.
    fn take_report(&mut self) -> Report {
        let report = self.engine.take_report();
        self.totals.add_totals(&report);
        report
    }

    /// An on-CPU sample of `tid` standing for `period` ns of CPU time (`psample wall`).
    pub fn sampled(&mut self, time: u64, cpu: u32, tid: u32, who: NameId, period: u64) {
        self.first_time.get_or_insert(time);
        self.last_time = self.last_time.max(time);
        let ev = OffcpuEvent::Sampled {
            time,
            cpu,
            tid,
            who,
            period,
        };
        self.engine.push(ev);
    }

    /// The ended interval's report ([`Collector::end_interval`] without the boxing).
    pub fn end_report(&mut self) -> Report {
        let report = self.take_report();
        self.totals
            .trim_threads(TRIM_THREADS, |tid| !target::thread_alive(tid));
        self.engine.forget_threads(|tid| !target::thread_alive(tid));
        report
    }

    /// The last report and the window it covers ([`Collector::finish`] without the boxing).
    pub fn finish_report(&mut self, stopped: &Stopped) -> (Report, Duration) {
        let (mono, first, last) = (self.plan.clock_monotonic, self.first_time, self.last_time);
        let stop_ns = self.stop_ns(stopped);
        let stop_time = if mono { stop_ns } else { last };
        self.engine_threads = self.engine.thread_entries();
        let engine = std::mem::replace(&mut self.engine, Engine::new(Options::default(), 0));
        let report = engine.finish(stop_time);
        // The summary is about the whole session: in continuous mode, every interval's report.
        self.totals.add_totals(&report);
        self.window_ns = if mono {
            stop_ns.saturating_sub(self.start_ns)
        } else {
            last.saturating_sub(first.unwrap_or(last))
        };
        (report, Duration::from_nanos(self.window_ns))
    }

    /// The report of the whole session so far (every interval's, after the finish).
    pub fn totals(&self) -> &Report {
        &self.totals
    }

    /// The window of the last profile, in ns (after the finish).
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }
}

impl Collector for OffCpu {
    fn labels(&self) -> Labels {
        self.plan.labels.clone()
    }

    fn start(&mut self, p: &mut Pipeline) {
        self.start_ns = monotonic_ns();
        let start = if self.plan.clock_monotonic {
            self.start_ns
        } else {
            0
        };
        self.engine = Engine::new(self.plan.options.clone(), start);
        self.blocked_at_start(p);
    }

    fn record(&mut self, p: &mut Pipeline, o: &Ordered<'_>) {
        let time = o.time.unwrap_or(0);
        if time != 0 {
            self.first_time.get_or_insert(time);
            self.last_time = self.last_time.max(time);
        }
        let cpu = o.cpu;
        let ev = match &o.record {
            Record::Sample(s) => {
                let spec = s.id.and_then(|id| self.plan.specs.ids.get(&id).copied());
                if spec.is_some() && spec == self.plan.specs.wakeup {
                    self.counts.delivery.arrived(cpu);
                }
                match (spec, s.raw) {
                    (Some(spec), Some(raw)) if spec == self.plan.specs.switch => {
                        self.on_switch(p, s, raw, spec, cpu)
                    }
                    (Some(spec), Some(raw)) if Some(spec) == self.plan.specs.cpu_switch => {
                        self.on_switch(p, s, raw, spec, cpu)
                    }
                    (Some(spec), Some(raw)) if Some(spec) == self.plan.specs.wakeup => {
                        self.on_wakeup(p, s, raw, cpu)
                    }
                    (Some(spec), _) if Some(spec) == self.plan.specs.sys_exit => {
                        self.on_sys_exit(p, s, cpu)
                    }
                    _ => {}
                }
                return;
            }
            Record::Switch(sw) if !sw.out => {
                return self.on_switch_record(time, cpu, sw.sample_id.tid, false);
            }
            Record::SwitchCpuWide(sw) if !sw.out => {
                return self.on_switch_record(time, cpu, sw.sample_id.tid, true);
            }
            // Untimed (no sample_id_all): the reader dates it by the ring's last record.
            Record::Lost(l) => {
                self.counts.lost_records += l.lost;
                OffcpuEvent::Lost {
                    cpu,
                    time: o.time,
                    count: l.lost,
                }
            }
            Record::Exit(e) => OffcpuEvent::Exit {
                time: e.time,
                pid: e.pid,
                tid: e.tid,
            },
            Record::Comm(c) if c.exec => OffcpuEvent::Exec { time, pid: c.pid },
            _ => return,
        };
        self.engine.push(ev);
    }

    fn upkeep(&mut self, _p: &mut Pipeline) {
        self.upkeep.run(&mut self.engine);
    }

    fn counters(&mut self, session: &perfring::event::Session) {
        if let Some(spec) = self.plan.specs.wakeup {
            self.counts.delivery.counted(session.counters_of(spec));
        }
    }

    fn end_interval(&mut self, p: &mut Pipeline) -> Box<dyn Aggregation> {
        let report = self.end_report();
        Box::new(self.labeled(p, report))
    }

    fn keep(&self, keep: &mut Keep) {
        keep.stacks.extend(self.engine.open_stacks());
        keep.names.extend(self.engine.open_names());
        keep.names
            .extend(self.totals.per_thread.values().map(|t| t.who));
    }

    fn remap(&mut self, remap: &Remap) {
        self.engine.remap_stacks(|id| remap.stack(id));
        self.engine.remap_names(|id| remap.name(id));
        for t in self.totals.per_thread.values_mut() {
            t.who = remap.name(t.who);
        }
    }

    fn finish(&mut self, p: &mut Pipeline, stopped: &Stopped) -> Finished {
        let (report, window) = self.finish_report(stopped);
        Finished {
            aggregation: Box::new(self.labeled(p, report)),
            window,
        }
    }

    fn progress(&self) -> u64 {
        self.counts.switch_outs
    }

    fn summarize(&self, p: &Pipeline, s: &mut Summary) {
        blocked_lines(&self.totals, &p.tables.names, self.window_ns, s);
        self.summarize_events(s);
    }

    fn summarize_tail(&self, p: &Pipeline, s: &mut Summary) {
        self.summarize_losses(p, s);
    }

    fn table_sizes(&self) -> String {
        format!(", {} engine threads", self.engine_threads)
    }
}

impl OffCpu {
    /// `report` with its threads' labels (pid from the records seen, else /proc).
    fn labeled(&self, p: &Pipeline, report: Report) -> OffCpuReport {
        let labels = ThreadLabels::of(&report, &self.plan.labels.extra, |tid| {
            pid_of_thread(&p.tracker, tid)
        });
        OffCpuReport { report, labels }
    }

    /// The summary's `events` line (and `switch-ins` before 4.3).
    pub fn summarize_events(&self, s: &mut Summary) {
        let r = &self.totals;
        let c = &self.counts;
        let undecodable = if c.decode_errors > 0 {
            format!(", {} undecodable", c.decode_errors)
        } else {
            String::new()
        };
        s.line(
            "events",
            format!(
                "{} switch-outs, {} switch-ins, {} wakeups{undecodable}",
                c.switch_outs, c.switch_ins, c.wakeups
            ),
        );
        s.fact(
            "events",
            json!({
                "switch_outs": c.switch_outs,
                "switch_ins": c.switch_ins,
                "wakeups": c.wakeups,
                "undecodable": c.decode_errors,
            }),
        );
        let what = if self.plan.options.wakers {
            "waker stack"
        } else {
            "runnable part"
        };
        c.delivery.summarize(what, c.lost_records > 0, s);
        if self.plan.specs.cpu_switch.is_some() {
            let sys_exit = self.plan.specs.sys_exit.is_some();
            // Wall mode sees every wakeup (without stacks): the bound is measured.
            let wakeups = self.plan.options.wakers || self.plan.options.runnable;
            let ends = legacy::describe_ends(r, c.switch_ins, sys_exit, wakeups);
            s.line("switch-ins", ends);
        }
    }

    /// What was not counted, the filters, the mechanisms.
    pub fn summarize_losses(&self, _p: &Pipeline, s: &mut Summary) {
        let r = &self.totals;
        if r.dropped_intervals > 0 || r.capped_intervals > 0 {
            s.line(
                "not counted",
                format!(
                    "{} intervals dropped and {} capped around lost records (up to {:.3} s)",
                    r.dropped_intervals,
                    r.capped_intervals,
                    r.dropped_ns_lost as f64 / 1e9
                ),
            );
        }
        let filtered = if self.plan.options.runnable {
            // Wall mode opens an interval for every state; only -m/-M leave time out.
            format!(
                "{} intervals outside -m/-M ({:.3} s of blocked time)",
                r.filtered,
                r.filtered_ns as f64 / 1e9
            )
        } else {
            format!(
                "{} preemptions/other states, {} outside -m/-M",
                r.not_blocked, r.filtered
            )
        };
        s.line("filtered", filtered);
        s.fact(
            "not_counted",
            json!({
                "dropped_intervals": r.dropped_intervals,
                "capped_intervals": r.capped_intervals,
                "around_lost_records_s": r.dropped_ns_lost as f64 / 1e9,
            }),
        );
        filtered_fact(s, r.not_blocked, r.filtered);
        s.line("mechanisms", self.plan.mechanisms.join("; "));
        s.fact("mechanisms", self.plan.mechanisms.clone());
        if !self.plan.clock_monotonic {
            s.warnings
                .push("no use_clockid: the window is taken from the first and last event".into());
        }
    }

    /// Threads the engine holds state for (after the finish).
    pub fn engine_threads(&self) -> usize {
        self.engine_threads
    }
}

/// The `blocked time` line, then the ten threads with the most blocked time.
pub(super) fn blocked_lines(r: &Report, names: &Names, window_ns: u64, s: &mut Summary) {
    s.line(
        "blocked time",
        format!(
            "{:.3} s in {} intervals ({} threads)",
            r.blocked_ns as f64 / 1e9,
            r.counted_intervals,
            r.thread_count()
        ),
    );
    let top = top_threads(r, names, window_ns, s);
    s.fact(
        "blocked",
        json!({
            "seconds": r.blocked_ns as f64 / 1e9,
            "intervals": r.counted_intervals,
            "threads": r.thread_count(),
            "window_s": window_ns as f64 / 1e9,
            "top_threads": top,
        }),
    );
}

/// The `filtered` counts for `--summary-json`: intervals in other states (preemptions
/// included) and outside `-m`/`-M`.
pub(super) fn filtered_fact(s: &mut Summary, other_states: u64, outside_min_max: u64) {
    s.fact(
        "filtered",
        json!({"other_states": other_states, "outside_min_max": outside_min_max}),
    );
}

/// The ten threads with the most blocked time, with their share of the window (also
/// returned, as JSON).
fn top_threads(r: &Report, names: &Names, window_ns: u64, s: &mut Summary) -> Vec<Value> {
    let mut threads: Vec<(&u32, &ThreadTotals)> = r.per_thread.iter().collect();
    threads.sort_by(|a, b| b.1.blocked_ns.cmp(&a.1.blocked_ns).then(a.0.cmp(b.0)));
    let mut top = Vec::new();
    for (tid, t) in threads.iter().take(10) {
        let pct = if window_ns > 0 {
            100.0 * t.blocked_ns as f64 / window_ns as f64
        } else {
            0.0
        };
        top.push(json!({
            "thread": names.get(t.who),
            "tid": tid,
            "blocked_s": t.blocked_ns as f64 / 1e9,
            "window_percent": (pct * 10.0).round() / 10.0,
            "intervals": t.intervals,
        }));
        s.line(
            &format!("  {}/{tid}", names.get(t.who)),
            format!(
                "{:.3} s blocked ({pct:.0}% of the window), {} intervals",
                t.blocked_ns as f64 / 1e9,
                t.intervals
            ),
        );
    }
    top
}

fn pid_of_thread(tracker: &Tracker, tid: u32) -> u32 {
    tracker
        .pid_of(tid)
        .or_else(|| target::tgid_of(tid))
        .unwrap_or(tid)
}

/// Kernel frames of a blocked thread from /proc/PID/task/TID/stack (root only; lines look
/// like `[<0>] do_nanosleep+0x6d/0x150`), leaf first.
pub(super) fn proc_kernel_stack(pid: u32, tid: u32, named: &mut Names) -> Vec<Frame> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack")) else {
        return Vec::new();
    };
    text.lines()
        .take(128)
        .filter_map(|l| {
            let sym = l.split_once(']').map_or(l, |(_, r)| r).trim();
            let name = sym.split('+').next()?.trim();
            (!name.is_empty()).then(|| Frame::Named(named.intern(&format!("{name}_[k]"))))
        })
        .collect()
}

pub(super) fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// `per_thread` entries kept before exited threads' are dropped (see
/// [`Report::trim_threads`]); grows when most threads are alive.
pub(super) const TRIM_THREADS: usize = 4096;

/// One-shot runs keep one report for the whole run; on a host with process churn, what the
/// engine and the report hold per thread must not pile up. Every few seconds: forget
/// exited threads' engine state and trim per-thread totals.
struct Upkeep {
    last: Instant,
    limit: usize,
}

impl Upkeep {
    const EVERY: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Upkeep {
            last: Instant::now(),
            limit: TRIM_THREADS,
        }
    }

    fn run(&mut self, engine: &mut Engine) {
        if self.last.elapsed() < Self::EVERY {
            return;
        }
        self.last = Instant::now();
        // Cheap: only exited threads whose final switch-out was not seen are looked up.
        engine.forget_threads(|tid| !target::thread_alive(tid));
        self.limit = engine.trim_threads(self.limit, |tid| !target::thread_alive(tid));
    }
}

//! `offcpu --bpf`'s collector: blocked time the kernel summed per (thread, stacks, state,
//! waker), drained about once a second, merged with what the programs spilled to the ring
//! (stacks that did not fit a stack map, intervals the count map had no room for), into the
//! same [`Report`] the ring path's engine produces — so the outputs and the summary lines
//! are the ring path's.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use perfring::bpf::offcpu::layout::{flags, AT_START, NO_WAKER};
use perfring::bpf::offcpu::{OffcpuBpf, OffcpuCounters, RawEntry, RawKey, Spilled};
use perfring::order::Ordered;
use perfring::record::{push_stack, Record};
use perfring::tracepoint::TaskState;

use super::bpf::Loaded;
use super::collector::{
    blocked_lines, filtered_fact, proc_kernel_stack, thread_state, TRIM_THREADS,
};
use super::intervals::{Report, StackKey, ThreadTotals, WakerKey};
use super::render::{OffCpuReport, ThreadLabels};
use crate::frame::Frame;
use crate::output::Labels;
use crate::pipeline::Pipeline;
use crate::session::driver::{monotonic_ns, Aggregation, Collector, Finished, Stopped};
use crate::session::Summary;
use crate::stacks::StackId;
use crate::target::{self, Target};
use crate::tracker::IDLE_COMM;

/// Spilled stacks kept until their interval arrives (one per blocked thread and waker at
/// most, normally); past this, more are not kept and their intervals say `[stack lost]`.
const MAX_SPILLED_STACKS: usize = 1 << 16;

/// Trim exited threads' per-thread totals this often (as the ring path does).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How the session was set up.
pub struct BpfPlan {
    /// The target.
    pub target: Target,
    /// The target processes (every process for `-a`).
    pub pids: Vec<u32>,
    /// Title and unit of the flame graph.
    pub labels: Labels,
    /// Waker stacks are recorded.
    pub wakers: bool,
}

/// What userspace saw of the programs' output, for the summary.
#[derive(Default)]
struct Seen {
    keys: u64,
    spilled_intervals: u64,
    spilled_stacks: u64,
    /// Spilled stacks not kept ([`MAX_SPILLED_STACKS`]) or never seen: those intervals'
    /// stacks are lost.
    stacks_missing: u64,
    undecodable: u64,
    drain_errors: u64,
}

/// Blocked time per stack, summed in the kernel.
pub struct InKernel {
    plan: BpfPlan,
    bpf: OffcpuBpf,
    _events: Vec<OwnedFd>,
    mechanisms: Vec<String>,
    runtime_dating: bool,
    report: Report,
    /// Every report handed over so far, for the summary.
    totals: Report,
    /// Spilled stacks by sequence number, with the drain generation they arrived in.
    spilled: HashMap<u64, (u64, Vec<u64>, Vec<u64>)>,
    generation: u64,
    last_upkeep: Instant,
    trim_limit: usize,
    /// Stacks of threads found blocked at start, by the index their entry carries.
    at_start: Vec<StackId>,
    seen: Seen,
    counters: OffcpuCounters,
    start_ns: u64,
    window_ns: u64,
    frames: Vec<Frame>,
    addrs: Vec<u64>,
    /// The process of each thread in the current report's keys.
    pids: HashMap<u32, u32>,
}

fn comm(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&c[..end]).into_owned()
}

impl InKernel {
    /// A collector over the loaded programs.
    pub fn new(plan: BpfPlan, loaded: Loaded) -> Self {
        InKernel {
            plan,
            bpf: loaded.bpf,
            _events: loaded.events,
            mechanisms: loaded.mechanisms,
            runtime_dating: loaded.runtime_dating,
            report: Report::default(),
            totals: Report::default(),
            spilled: HashMap::new(),
            generation: 0,
            last_upkeep: Instant::now(),
            trim_limit: TRIM_THREADS,
            at_start: Vec::new(),
            seen: Seen::default(),
            counters: OffcpuCounters::default(),
            start_ns: 0,
            window_ns: 0,
            frames: Vec::new(),
            addrs: Vec::new(),
            pids: HashMap::new(),
        }
    }

    /// Intern a stack the kernel recorded (leaf first, as PERF_SAMPLE_CALLCHAIN gives it).
    fn intern(&mut self, p: &mut Pipeline, pid: u32, user: &[u64], kernel: &[u64]) -> StackId {
        self.frames.clear();
        self.addrs.clear();
        push_stack(kernel.iter().copied(), &mut self.addrs);
        self.frames
            .extend(self.addrs.iter().map(|a| Frame::Kernel(*a)));
        self.addrs.clear();
        push_stack(user.iter().copied(), &mut self.addrs);
        if !self.addrs.is_empty() && pid != 0 && !p.tracker.procs.contains(pid) {
            p.tracker.load_process(pid);
        }
        for &a in &self.addrs {
            self.frames.push(p.tracker.user_frame(pid, a));
        }
        if self.frames.is_empty() {
            self.frames.push(Frame::Label("[stack lost]"));
        }
        p.intern_stack(&self.frames)
    }

    /// The blocked stack of `key` whose ids resolve to `user`/`kernel`.
    fn blocked_stack(
        &mut self,
        p: &mut Pipeline,
        key: &RawKey,
        user: &[u64],
        kernel: &[u64],
    ) -> StackId {
        if key.ustack == AT_START {
            if let Some(&id) = usize::try_from(key.kstack)
                .ok()
                .and_then(|i| self.at_start.get(i))
            {
                return id;
            }
        }
        self.intern(p, key.tgid, user, kernel)
    }

    fn waker(
        &mut self,
        p: &mut Pipeline,
        key: &RawKey,
        user: &[u64],
        kernel: &[u64],
    ) -> Option<WakerKey> {
        if !self.plan.wakers || key.waker_ustack == NO_WAKER {
            return None;
        }
        // An interrupt on an idle CPU wakes in the context of the idle task.
        let who = if key.waker_tgid == 0 {
            p.name(IDLE_COMM)
        } else {
            p.name(&comm(&key.waker_comm))
        };
        let stack = self.intern(p, key.waker_tgid, user, kernel);
        Some(WakerKey { who, stack })
    }

    fn add(
        &mut self,
        p: &mut Pipeline,
        key: &RawKey,
        stack: StackId,
        waker: Option<WakerKey>,
        ns: u64,
        n: u64,
    ) {
        let who = p.name(&comm(&key.comm));
        self.pids.insert(key.tid, key.tgid);
        let r = &mut self.report;
        *r.by_stack
            .entry(StackKey {
                who,
                stack,
                waker,
                state: None,
                tid: key.tid,
            })
            .or_insert(0) += ns;
        let t = r.per_thread.entry(key.tid).or_insert(ThreadTotals {
            who,
            ..Default::default()
        });
        t.who = who;
        t.blocked_ns += ns;
        t.intervals += n;
        r.blocked_ns += ns;
        r.counted_intervals += n;
    }

    /// A spilled stacks record's stacks, by sequence number.
    fn take_spilled(&mut self, seq: u64) -> (Vec<u64>, Vec<u64>) {
        match self.spilled.remove(&seq) {
            Some((_, user, kernel)) => (user, kernel),
            None => {
                self.seen.stacks_missing += 1;
                (Vec::new(), Vec::new())
            }
        }
    }

    /// Stacks by id, or from the ring when the entry says they were spilled.
    fn stacks_of(
        &mut self,
        spilled: bool,
        seq: u64,
        epoch: u32,
        ids: (i32, i32),
    ) -> (Vec<u64>, Vec<u64>) {
        if spilled {
            return self.take_spilled(seq);
        }
        let mut get = |id| {
            self.bpf
                .resolve(epoch, id)
                .map(|s| s.to_vec())
                .unwrap_or_default()
        };
        (get(ids.0), get(ids.1))
    }

    /// An interval that was closed (spilled) or is still open (`entry`) at the stop.
    fn add_entry(&mut self, p: &mut Pipeline, key: &RawKey, fl: u32, seqs: (u64, u64), ns: u64) {
        let (u, k) = if key.ustack == AT_START {
            (Vec::new(), Vec::new())
        } else {
            let spilled = fl & flags::SPILL_BLOCKED != 0;
            self.stacks_of(spilled, seqs.0, key.epoch, (key.ustack, key.kstack))
        };
        let stack = self.blocked_stack(p, key, &u, &k);
        let waker = if self.plan.wakers && key.waker_ustack != NO_WAKER {
            let spilled = fl & flags::SPILL_WAKER != 0;
            let ids = (key.waker_ustack, key.waker_kstack);
            let (wu, wk) = self.stacks_of(spilled, seqs.1, key.waker_epoch, ids);
            self.waker(p, key, &wu, &wk)
        } else {
            None
        };
        self.add(p, key, stack, waker, ns, 1);
    }

    fn on_spilled(&mut self, p: &mut Pipeline, raw: &[u8]) {
        match Spilled::decode(raw) {
            Some(Spilled::Stacks {
                seq, user, kernel, ..
            }) => {
                self.seen.spilled_stacks += 1;
                if self.spilled.len() < MAX_SPILLED_STACKS {
                    self.spilled.insert(seq, (self.generation, user, kernel));
                }
            }
            Some(Spilled::Interval {
                key,
                flags,
                blocked_ns,
                blocked_seq,
                waker_seq,
            }) => {
                self.seen.spilled_intervals += 1;
                self.add_entry(p, &key, flags, (blocked_seq, waker_seq), blocked_ns);
            }
            None => self.seen.undecodable += 1,
        }
    }

    /// Threads already blocked (for `-p`/`-t`): an entry opened for each, from the start,
    /// under a frame that says so, as the ring path does.
    fn blocked_at_start(&mut self, p: &mut Pipeline) {
        if matches!(self.plan.target, Target::AllCpus | Target::Command(_)) {
            return;
        }
        let only: Option<HashSet<u32>> = match &self.plan.target {
            Target::Tids(t) => Some(t.iter().copied().collect()),
            _ => None,
        };
        for &pid in &self.plan.pids.clone() {
            for tid in target::threads_of(pid).unwrap_or_default() {
                if only.as_ref().is_some_and(|o| !o.contains(&tid)) {
                    continue;
                }
                let Some(letter) = thread_state(pid, tid) else {
                    continue;
                };
                if TaskState::from_proc_letter(letter) == TaskState::Runnable {
                    continue;
                }
                let mut frames = proc_kernel_stack(pid, tid, &mut p.tables.frame_names);
                frames.push(Frame::Label("[blocked at start]"));
                let index = self.at_start.len() as i32;
                self.at_start.push(p.intern_stack(&frames));
                let entry = at_start_entry(pid, tid, index, self.start_ns);
                // A thread that switched out since the programs were armed has its own.
                let _ = self.bpf.insert_blocked_at_start(&entry);
            }
        }
    }

    /// Spilled stacks nothing will ask for: a waker's, replaced by a later wakeup of the
    /// same interval. Kept: those of open intervals, and those of the last two drains
    /// (their interval record may still be in the ring).
    fn forget_orphans(&mut self) {
        self.generation += 1;
        if self.spilled.is_empty() {
            return;
        }
        let open: HashSet<u64> = self
            .bpf
            .open_intervals()
            .unwrap_or_default()
            .iter()
            .flat_map(|e| [e.blocked_seq, e.waker_seq])
            .collect();
        let g = self.generation;
        self.spilled
            .retain(|seq, (gen, _, _)| *gen + 2 > g || open.contains(seq));
    }

    /// Intervals still open at the stop, counted up to it (as the ring path does).
    fn open_at_stop(&mut self, p: &mut Pipeline, stop_ns: u64) {
        let Ok(open) = self.bpf.open_intervals() else {
            return;
        };
        for e in open {
            let end = switched_in_since(&e).map_or(stop_ns, |t| t.min(stop_ns));
            if e.ts >= end {
                continue;
            }
            self.report.open_at_stop += 1;
            let seqs = (e.blocked_seq, e.waker_seq);
            self.add_entry(p, &e.key, e.flags, seqs, end - e.ts);
        }
    }

    /// `report` with its threads' labels (pids from the programs' keys); the pids of the
    /// next report are gathered afresh.
    fn labeled(&mut self, report: Report) -> OffCpuReport {
        let pids = std::mem::take(&mut self.pids);
        let labels = ThreadLabels::of(&report, &self.plan.labels.extra, |tid| {
            pids.get(&tid).copied().unwrap_or(tid)
        });
        OffCpuReport { report, labels }
    }

    fn take_report(&mut self) -> Report {
        let report = std::mem::take(&mut self.report);
        self.totals.add_totals(&report);
        report
    }
}

/// The start-map entry of a thread found blocked at start.
fn at_start_entry(pid: u32, tid: u32, index: i32, ts: u64) -> RawEntry {
    let mut key_bytes = [0u8; perfring::bpf::offcpu::layout::KEY_SIZE];
    key_bytes[..4].copy_from_slice(&pid.to_ne_bytes());
    let mut key = RawKey::decode(&key_bytes).expect("a zeroed key decodes");
    (key.tid, key.ustack, key.kstack) = (tid, AT_START, index);
    key.waker_ustack = NO_WAKER;
    if let Some(c) = target::comm_of(tid) {
        let n = c.len().min(15);
        key.comm[..n].copy_from_slice(&c.as_bytes()[..n]);
    }
    RawEntry {
        key,
        ts,
        flags: flags::AT_START,
        blocked_seq: 0,
        waker_seq: 0,
        woken: 0,
        // Exact while it is blocked: dates a switch-in that fires no sched_switch.
        runtime: schedstat_runtime(pid, tid).unwrap_or(0),
    }
}

/// When the thread of an interval still open has switched in after all, by a switch that
/// fired no `sched_switch` (the programs close those at its next switch-out, which has not
/// come): dated by the CPU time it gained since, as the programs do. `None`: it has not run
/// (still blocked), or its CPU time is unknown.
fn switched_in_since(e: &RawEntry) -> Option<u64> {
    if e.runtime == 0 {
        return None;
    }
    let now = schedstat_runtime(e.key.tgid, e.key.tid)?;
    let gained = now.checked_sub(e.runtime).filter(|&g| g > 0)?;
    Some(monotonic_ns().saturating_sub(gained))
}

fn schedstat_runtime(pid: u32, tid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

impl Collector for InKernel {
    fn labels(&self) -> Labels {
        self.plan.labels.clone()
    }

    fn start(&mut self, p: &mut Pipeline) {
        self.start_ns = monotonic_ns();
        if let Err(e) = self.bpf.arm(true) {
            crate::errln!("psample: offcpu --bpf: {e}");
        }
        self.blocked_at_start(p);
    }

    fn stopping(&mut self) {
        // Intervals closing from now on would end after the stop time.
        let _ = self.bpf.arm(false);
    }

    fn record(&mut self, p: &mut Pipeline, o: &Ordered<'_>) {
        if let Record::Sample(s) = &o.record {
            if let Some(raw) = s.raw {
                self.on_spilled(p, raw);
            }
        }
    }

    fn drain(&mut self, p: &mut Pipeline) -> Result<(), String> {
        let counts = self.bpf.drain().map_err(|e| {
            self.seen.drain_errors += 1;
            format!("offcpu --bpf: draining the counts failed: {e}")
        })?;
        for c in counts {
            self.seen.keys += 1;
            let stack = self.blocked_stack(p, &c.key, &c.user, &c.kernel);
            let waker = self.waker(p, &c.key, &c.waker_user, &c.waker_kernel);
            self.add(p, &c.key, stack, waker, c.blocked_ns, c.intervals);
        }
        if let Ok(c) = self.bpf.counters() {
            self.counters = c;
        }
        self.forget_orphans();
        Ok(())
    }

    fn upkeep(&mut self, _p: &mut Pipeline) {
        if self.last_upkeep.elapsed() < UPKEEP_EVERY {
            return;
        }
        self.last_upkeep = Instant::now();
        let gone = |tid| !target::thread_alive(tid);
        self.trim_limit = self.report.trim_threads(self.trim_limit, gone);
    }

    fn end_interval(&mut self, _p: &mut Pipeline) -> Box<dyn Aggregation> {
        let report = self.take_report();
        self.totals
            .trim_threads(TRIM_THREADS, |tid| !target::thread_alive(tid));
        Box::new(self.labeled(report))
    }

    fn finish(&mut self, p: &mut Pipeline, stopped: &Stopped) -> Finished {
        if let Err(e) = Collector::drain(self, p) {
            crate::errln!("psample: {e}");
        }
        self.open_at_stop(p, stopped.monotonic_ns);
        self.window_ns = stopped.monotonic_ns.saturating_sub(self.start_ns);
        let report = self.take_report();
        Finished {
            aggregation: Box::new(self.labeled(report)),
            window: Duration::from_nanos(self.window_ns),
        }
    }

    fn progress(&self) -> u64 {
        self.totals.counted_intervals + self.report.counted_intervals
    }

    fn summarize(&self, p: &Pipeline, s: &mut Summary) {
        blocked_lines(&self.totals, &p.tables.names, self.window_ns, s);
        let (c, seen) = (&self.counters, &self.seen);
        s.line(
            "bpf",
            format!(
                "in-kernel aggregation: {} keys drained; {} intervals and {} stacks spilled to the ring \
                 (stack map collisions/full: {} user, {} kernel; count map full: {})",
                seen.keys,
                seen.spilled_intervals,
                seen.spilled_stacks,
                c.user_not_recorded,
                c.kernel_not_recorded,
                c.count_map_full
            ),
        );
        let lost = c.spill_failed + self.bpf.unresolved + seen.stacks_missing;
        s.fact(
            "bpf",
            serde_json::json!({
                "keys": seen.keys,
                "spilled_intervals": seen.spilled_intervals,
                "spilled_stacks": seen.spilled_stacks,
                "user_stacks_not_recorded": c.user_not_recorded,
                "kernel_stacks_not_recorded": c.kernel_not_recorded,
                "count_map_full": c.count_map_full,
                "lost": lost,
                "spill_refused": c.spill_failed,
                "unresolved_stacks": self.bpf.unresolved,
                "spilled_stacks_missing": seen.stacks_missing,
                "start_map_full": c.start_map_full,
                "undecodable": seen.undecodable,
                "skipped_runs": self.bpf.skipped_runs(),
            }),
        );
        s.line(
            "bpf lost",
            format!(
                "{lost} ({} spill records refused by the ring, {} stack ids no longer resolvable, \
                 {} spilled stacks missing; {} switch-outs with the start map full{})",
                c.spill_failed,
                self.bpf.unresolved,
                seen.stacks_missing,
                c.start_map_full,
                if seen.undecodable > 0 {
                    format!(", {} undecodable spill records", seen.undecodable)
                } else {
                    String::new()
                }
            ),
        );
        let dating = if self.runtime_dating {
            "dated by CPU time"
        } else {
            "dated by CPU time (no BTF here)"
        };
        if let Some(n) = self.bpf.skipped_runs().filter(|&n| n > 0) {
            s.line(
                "bpf skipped",
                format!("{n} program runs skipped by the kernel (BPF already active on that CPU)"),
            );
        }
        s.fact(
            "switch_ins",
            serde_json::json!({
                "dated_by_cpu_time": c.ended_by_runtime,
                "ended_at_wakeup": c.ended_at_wakeup,
                "unpaired_dropped": c.unpaired,
            }),
        );
        s.line(
            "switch-ins",
            format!(
                "{} without a sched_switch: {} {dating}, {} ended at their wakeup, {} dropped (unpaired)",
                c.ended_by_runtime + c.ended_at_wakeup + c.unpaired,
                c.ended_by_runtime,
                c.ended_at_wakeup,
                c.unpaired
            ),
        );
    }

    fn summarize_tail(&self, _p: &Pipeline, s: &mut Summary) {
        let c = &self.counters;
        s.line(
            "filtered",
            format!(
                "{} preemptions/other states, {} outside -m/-M",
                c.not_blocked, c.filtered
            ),
        );
        if c.start_unconfirmed > 0 {
            s.line(
                "blocked at start",
                format!(
                    "{} were running after all (not counted)",
                    c.start_unconfirmed
                ),
            );
        }
        filtered_fact(s, c.not_blocked, c.filtered);
        s.fact("blocked_at_start_running", c.start_unconfirmed);
        s.line("mechanisms", self.mechanisms.join("; "));
        s.fact("mechanisms", self.mechanisms.clone());
    }

    fn table_sizes(&self) -> String {
        format!(
            ", {} spilled stacks held, {} stacks pinned by open intervals",
            self.spilled.len(),
            self.bpf.pinned_stacks()
        )
    }
}

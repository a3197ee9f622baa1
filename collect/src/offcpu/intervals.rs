//! The off-CPU interval engine: turns a time-ordered stream of switch-outs, switch-ins,
//! wakeups, lost-record notices and task lifecycle events into blocked time per stack.
//!
//! An interval runs from a task's switch-out in a blocked state to its next switch-in. The
//! engine never invents time: when records may have been lost while an interval was open, it
//! counts only the part that is certain and reports the rest as dropped.
//!
//! In wall mode ([`Options::runnable`], `psample wall`) the engine also counts the time a
//! thread is off CPU but runnable: from a preemption to the switch-in, and from the first
//! wakeup of a blocked interval to its switch-in. A thread is then, at every instant between
//! its switch-out and its switch-in, either blocked or runnable, never both.

use perfring::tracepoint::TaskState;

use crate::fast_map::FastMap;

/// A thread's name (comm) as interned by the caller when the event was read. Blocked time
/// is keyed by name, not by thread id, so a host that starts thousands of short-lived
/// processes adds keys per distinct program, not per thread (and the name is the one the
/// thread had then, as bcc's offcputime reports it, even after the thread is long gone).
pub use crate::names::NameId;
/// Stacks are interned by the caller; the engine only groups by id.
pub use crate::stacks::StackId;

/// One event the engine consumes, in time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffcpuEvent {
    /// A per-task `sched_switch` sample: `tid` leaves the CPU in `state`, with its stack.
    SwitchOut {
        /// When (sample time, ns).
        time: u64,
        /// The CPU whose ring delivered it.
        cpu: u32,
        /// The thread leaving the CPU.
        tid: u32,
        /// Its name at the switch-out.
        who: NameId,
        /// The state it leaves in (`prev_state`).
        state: TaskState,
        /// Its stack at the switch-out.
        stack: StackId,
    },
    /// `tid` starts running: a SWITCH record that is not a switch-out, a SWITCH_CPU_WIDE
    /// record's next task, or a CPU-wide `sched_switch`'s `next_pid`.
    SwitchIn {
        /// When.
        time: u64,
        /// The CPU whose ring delivered it.
        cpu: u32,
        /// The thread starting to run.
        tid: u32,
    },
    /// `tid` was running at `time`: a sample taken in its own context after it blocked (its
    /// syscall exit, on kernels without context-switch records, where a switch-in may never
    /// be seen). Ends an open interval like a switch-in would, at an upper bound of it.
    Ran {
        /// When.
        time: u64,
        /// The CPU whose ring delivered it.
        cpu: u32,
        /// The thread that ran.
        tid: u32,
    },
    /// `sched_wakeup`/`sched_wakeup_new` of `target_tid`, sampled in the waker's context.
    Wakeup {
        /// When.
        time: u64,
        /// The CPU whose ring delivered it.
        cpu: u32,
        /// The thread woken.
        target_tid: u32,
        /// The waker's name.
        waker: NameId,
        /// The waker's stack.
        waker_stack: StackId,
    },
    /// A PERF_RECORD_LOST from `cpu`'s ring (`time` from sample_id_all when available).
    Lost {
        /// The ring that lost records.
        cpu: u32,
        /// When the loss was reported (`None`: unknown).
        time: Option<u64>,
        /// Records lost.
        count: u64,
    },
    /// A thread exited (PERF_RECORD_EXIT): an interval still open lost its switch-in.
    Exit {
        /// When.
        time: u64,
        /// Its process.
        pid: u32,
        /// The thread.
        tid: u32,
    },
    /// A process exec'd (PERF_RECORD_COMM with the exec flag).
    Exec {
        /// When.
        time: u64,
        /// The process (its leader tid is alive again).
        pid: u32,
    },
    /// An on-CPU sample of `tid` at `time` (wall mode), standing for `period` ns of its CPU
    /// time: counted in the thread's on-CPU total. If an interval is still open (its
    /// switch-in was missed), the thread is running again: the interval ends at
    /// `time - period` (no earlier than its start). An interval found blocked at start
    /// was never confirmed and is dropped, as at a switch-out.
    Sampled {
        /// When.
        time: u64,
        /// The CPU whose ring delivered it.
        cpu: u32,
        /// The thread sampled.
        tid: u32,
        /// Its name.
        who: NameId,
        /// The CPU time the sample stands for, in ns.
        period: u64,
    },
}

impl OffcpuEvent {
    /// The event's time (`None` for a loss of unknown time).
    pub fn time(&self) -> Option<u64> {
        match *self {
            OffcpuEvent::SwitchOut { time, .. }
            | OffcpuEvent::SwitchIn { time, .. }
            | OffcpuEvent::Ran { time, .. }
            | OffcpuEvent::Wakeup { time, .. }
            | OffcpuEvent::Exit { time, .. }
            | OffcpuEvent::Exec { time, .. }
            | OffcpuEvent::Sampled { time, .. } => Some(time),
            OffcpuEvent::Lost { time, .. } => time,
        }
    }
}

/// Which switch-out states open an interval (`--state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateFilter {
    /// Every state in which the task is waiting: S, D, I, stopped, traced, parked, unknown.
    #[default]
    Blocked,
    /// Blocked states plus preemptions (time spent runnable but not running).
    Any,
    /// `S` only.
    Interruptible,
    /// `D` only.
    Uninterruptible,
}

impl StateFilter {
    /// Whether a switch-out in `state` opens an interval.
    pub fn accepts(self, state: TaskState) -> bool {
        match (self, state) {
            // A dead task never switches back in; its last switch-out is not a wait.
            (_, TaskState::Dead) => false,
            (StateFilter::Any, _) => true,
            (StateFilter::Blocked, TaskState::Runnable) => false,
            (StateFilter::Blocked, _) => true,
            (StateFilter::Interruptible, s) => s == TaskState::Interruptible,
            (StateFilter::Uninterruptible, s) => s == TaskState::Uninterruptible,
        }
    }
}

/// What the engine counts.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Intervals shorter than this are not reported (`-m`, in ns).
    pub min_ns: u64,
    /// Intervals longer than this are not reported (`-M`, in ns).
    pub max_ns: Option<u64>,
    /// Which switch-out states open an interval (`--state`).
    pub states: StateFilter,
    /// Attribute each interval to the stack that woke it (`--wakers`).
    pub wakers: bool,
    /// Wall mode: preemptions, and the time from a blocked interval's first wakeup to its
    /// switch-in, count as runnable time ([`Report::runnable`]); every blocked state opens
    /// an interval, keys carry its state, and what `states`, `min_ns` and `max_ns` leave
    /// out is counted as filtered time, so that a thread's kinds of time add up.
    pub runnable: bool,
    /// Keep each thread's time apart ([`StackKey::tid`]), for pprof's per-thread labels.
    pub by_thread: bool,
}

/// Who woke a blocked thread: the waker's name and stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WakerKey {
    /// The waker's name.
    pub who: NameId,
    /// The waker's stack.
    pub stack: StackId,
}

/// What blocked time is aggregated by: the blocked thread's name and stack (bcc's
/// offcputime folds the same way), and the waker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    /// The blocked thread's name.
    pub who: NameId,
    /// Its stack at the switch-out.
    pub stack: StackId,
    /// `None` without `--wakers`, or when no wakeup was seen for the interval.
    pub waker: Option<WakerKey>,
    /// Wall mode: the letter of the blocked state (`S`, `D`, …) of blocked time; `None` for
    /// runnable time and outside wall mode.
    pub state: Option<char>,
    /// The blocked thread, with [`Options::by_thread`] (0 otherwise: threads of one name
    /// share the key).
    pub tid: u32,
}

/// Blocked time of one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThreadTotals {
    /// Its name (when it last blocked).
    pub who: NameId,
    /// Blocked nanoseconds counted.
    pub blocked_ns: u64,
    /// Intervals counted.
    pub intervals: u64,
    /// Wall mode: runnable nanoseconds counted.
    pub runnable_ns: u64,
    /// Wall mode: blocked nanoseconds the filters left out.
    pub filtered_ns: u64,
    /// Wall mode: on-CPU nanoseconds (sample periods).
    pub oncpu_ns: u64,
    /// Wall mode: the span of time its counted time covers (`first_ns` 0: nothing yet) —
    /// from its first counted instant to its last, so a thread that started or exited
    /// inside the window is not taken for one whose time went unexplained.
    pub first_ns: u64,
    /// See `first_ns`.
    pub last_ns: u64,
}

impl ThreadTotals {
    /// Wall mode: time from `start` to `end` was counted.
    fn seen(&mut self, start: u64, end: u64) {
        if self.first_ns == 0 || start < self.first_ns {
            self.first_ns = start.max(1);
        }
        self.last_ns = self.last_ns.max(end);
    }

    /// Wall mode: the span its counted time covers.
    pub fn span_ns(&self) -> u64 {
        self.last_ns.saturating_sub(self.first_ns)
    }

    /// Wall mode: every kind of time accounted for (on-CPU, blocked, runnable, filtered).
    pub fn accounted_ns(&self) -> u64 {
        self.oncpu_ns
            .saturating_add(self.blocked_ns)
            .saturating_add(self.runnable_ns)
            .saturating_add(self.filtered_ns)
    }
}

/// The engine's result. Counters describe what happened to intervals that were not counted
/// whole; `discarded_at_exit` intervals are also reflected in the dropped/capped counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Blocked nanoseconds per stack.
    pub by_stack: FastMap<StackKey, u64>,
    /// Per thread id: live threads and the threads with the most blocked time (see
    /// [`Report::trim_threads`]).
    pub per_thread: FastMap<u32, ThreadTotals>,
    /// Exited threads whose `per_thread` entry was dropped to bound memory.
    pub threads_forgotten: u64,
    /// Blocked time of all intervals counted, including forgotten threads'.
    pub blocked_ns: u64,
    /// Intervals counted (whole or capped).
    pub counted_intervals: u64,
    /// Upper bound of blocked time not counted because the interval's end may have been in
    /// lost records.
    pub dropped_ns_lost: u64,
    /// Intervals of which nothing was counted because of lost records.
    pub dropped_intervals: u64,
    /// Intervals counted only up to the start of a loss window.
    pub capped_intervals: u64,
    /// Intervals outside `min_ns`/`max_ns`.
    pub filtered: u64,
    /// Switch-outs whose state the filter rejects (preemptions, by default).
    pub not_blocked: u64,
    /// Sum of PERF_RECORD_LOST counts.
    pub lost_records: u64,
    /// Threads reported blocked at start that turned out to be running (their switch-in
    /// happened between the /proc read and enabling the events).
    pub start_unconfirmed: u64,
    /// Intervals still open at the task's exit (its switch-in was never seen).
    pub discarded_at_exit: u64,
    /// Intervals counted up to the stop time.
    pub open_at_stop: u64,
    /// Intervals ended by [`OffcpuEvent::Ran`] because no switch-in came first.
    pub ended_by_ran: u64,
    /// Of those, the sum of (end − wakeup) where the wakeup was seen: the most they can
    /// include after the real switch-in (which lies between wakeup and end).
    pub ran_slack_ns: u64,
    /// Of those, the ones without a wakeup seen, whose excess is not bounded.
    pub ran_unbounded: u64,
    /// Wall mode: runnable nanoseconds per key (preempted: the stack it was preempted at;
    /// woken: its blocked stack, and waker).
    pub runnable: FastMap<StackKey, u64>,
    /// Wall mode: runnable time of all intervals, including forgotten threads'.
    pub runnable_ns: u64,
    /// Wall mode: blocked time the filters (`states`, `min_ns`, `max_ns`) left out.
    pub filtered_ns: u64,
    /// Wall mode: intervals whose switch-in was missed, ended by an on-CPU sample.
    pub ended_by_sample: u64,
    /// Wall mode: on-CPU nanoseconds of all threads (sample periods).
    pub oncpu_ns: u64,
}

/// Threads kept in `per_thread` when the rest are trimmed, for the summary's top list.
const TOP_THREADS: usize = 10;

impl Report {
    /// Threads that had blocked time counted.
    pub fn thread_count(&self) -> u64 {
        self.per_thread.len() as u64 + self.threads_forgotten
    }

    /// Bound `per_thread` on hosts with thread churn: once it holds more than `limit`
    /// entries, drop those of threads `gone` says have exited, except the top ones by
    /// blocked time. Returns the next limit to use (larger when most threads are alive).
    pub fn trim_threads(&mut self, limit: usize, gone: impl Fn(u32) -> bool) -> usize {
        if self.per_thread.len() <= limit {
            return limit;
        }
        let mut by_time: Vec<(u64, u32)> = self
            .per_thread
            .iter()
            .map(|(&tid, t)| (t.accounted_ns(), tid))
            .collect();
        by_time.sort_unstable_by(|a, b| b.cmp(a));
        let top: Vec<u32> = by_time.iter().take(TOP_THREADS).map(|&(_, t)| t).collect();
        let before = self.per_thread.len();
        self.per_thread
            .retain(|tid, _| top.contains(tid) || !gone(*tid));
        self.threads_forgotten += (before - self.per_thread.len()) as u64;
        limit.max(self.per_thread.len() * 2)
    }

    /// Add another report's counters and per-thread totals (not its stacks): the whole
    /// run's summary in continuous mode, where each interval's report is written and dropped.
    pub fn add_totals(&mut self, other: &Report) {
        for (tid, t) in &other.per_thread {
            let e = self.per_thread.entry(*tid).or_default();
            e.who = t.who;
            e.blocked_ns = e.blocked_ns.saturating_add(t.blocked_ns);
            e.intervals += t.intervals;
            e.runnable_ns = e.runnable_ns.saturating_add(t.runnable_ns);
            e.filtered_ns = e.filtered_ns.saturating_add(t.filtered_ns);
            e.oncpu_ns = e.oncpu_ns.saturating_add(t.oncpu_ns);
            if t.first_ns != 0 {
                e.seen(t.first_ns, t.last_ns);
            }
        }
        self.threads_forgotten += other.threads_forgotten;
        self.blocked_ns = self.blocked_ns.saturating_add(other.blocked_ns);
        self.counted_intervals += other.counted_intervals;
        self.dropped_ns_lost = self.dropped_ns_lost.saturating_add(other.dropped_ns_lost);
        self.dropped_intervals += other.dropped_intervals;
        self.capped_intervals += other.capped_intervals;
        self.filtered += other.filtered;
        self.not_blocked += other.not_blocked;
        self.lost_records = self.lost_records.saturating_add(other.lost_records);
        self.start_unconfirmed += other.start_unconfirmed;
        self.discarded_at_exit += other.discarded_at_exit;
        self.open_at_stop += other.open_at_stop;
        self.ended_by_ran += other.ended_by_ran;
        self.ran_slack_ns = self.ran_slack_ns.saturating_add(other.ran_slack_ns);
        self.ran_unbounded += other.ran_unbounded;
        self.runnable_ns = self.runnable_ns.saturating_add(other.runnable_ns);
        self.filtered_ns = self.filtered_ns.saturating_add(other.filtered_ns);
        self.ended_by_sample += other.ended_by_sample;
        self.oncpu_ns = self.oncpu_ns.saturating_add(other.oncpu_ns);
    }
}

#[derive(Debug, Clone, Copy)]
struct Interval {
    start: u64,
    who: NameId,
    stack: StackId,
    /// The state it switched out in (`Runnable`: preempted, wall mode only).
    state: TaskState,
    waker: Option<WakerKey>,
    /// Time of the last wakeup seen while open.
    woken_at: Option<u64>,
    /// Time of the first wakeup seen while open: runnable from here (wall mode).
    runnable_from: Option<u64>,
    at_start: bool,
    /// Earliest start of a loss window seen while open: the interval is certain only up to here.
    certain_until: Option<u64>,
}

impl Interval {
    fn new(start: u64, who: NameId, stack: StackId, state: TaskState, at_start: bool) -> Self {
        Interval {
            start,
            who,
            stack,
            state,
            waker: None,
            woken_at: None,
            runnable_from: None,
            at_start,
            certain_until: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Thread {
    open: Option<Interval>,
    /// Saw its exit and no switch-in since: a later switch-out is its final one.
    exited: bool,
}

/// Pairs switch-outs with switch-ins, per thread, into a [`Report`].
pub struct Engine {
    opts: Options,
    start_time: u64,
    /// The start time was not given on the events' clock (0): threads blocked at start are
    /// counted from the first event instead.
    start_from_first_event: bool,
    /// Latest event time processed; event times are clamped to it so that a stray
    /// out-of-order event cannot make intervals overlap.
    now: u64,
    threads: FastMap<u32, Thread>,
    /// Time of the last record seen from each CPU's ring: where a loss window on it begins.
    cpu_last: FastMap<u32, u64>,
    report: Report,
}

impl Engine {
    /// An engine counting with `opts` from `start_time`, on the events' clock; 0 when that
    /// clock is not known (no use_clockid), and the window then starts at the first event.
    pub fn new(opts: Options, start_time: u64) -> Engine {
        Engine {
            opts,
            start_time,
            start_from_first_event: start_time == 0,
            now: start_time,
            threads: FastMap::default(),
            cpu_last: FastMap::default(),
            report: Report::default(),
        }
    }

    /// A thread found blocked (from /proc) when recording started. Its interval counts from
    /// `start_time` under `stack`, which the caller builds with a "[blocked at start]" frame.
    /// Call before pushing events; a later call starts the interval at the latest event time.
    pub fn blocked_at_start(&mut self, who: NameId, tid: u32, state: TaskState, stack: StackId) {
        if tid == 0 {
            return;
        }
        // In wall mode a thread runnable at the start is the caller's (it may be running).
        if self.opts.runnable && state == TaskState::Runnable {
            return;
        }
        if !self.opts.runnable && !self.opts.states.accepts(state) {
            self.report.not_blocked += 1;
            return;
        }
        let start = self.now;
        let thread = self.threads.entry(tid).or_default();
        if thread.open.is_none() {
            thread.open = Some(Interval::new(start, who, stack, state, true));
        }
    }

    /// Feeds one event; events must come in time order (perfring's ordered reader delivers them so).
    pub fn push(&mut self, event: OffcpuEvent) {
        if self.start_from_first_event {
            if let Some(t) = event.time() {
                self.start_at_first_event(t);
            }
        }
        let time = event.time().map_or(self.now, |t| t.max(self.now));
        self.now = time;
        match event {
            OffcpuEvent::SwitchOut {
                cpu,
                tid,
                who,
                state,
                stack,
                ..
            } => {
                self.cpu_last.insert(cpu, time);
                self.switch_out(time, tid, who, state, stack);
            }
            OffcpuEvent::SwitchIn { cpu, tid, .. } => {
                self.cpu_last.insert(cpu, time);
                self.switch_in(time, tid);
            }
            OffcpuEvent::Ran { cpu, tid, .. } => {
                self.cpu_last.insert(cpu, time);
                self.ran(time, tid);
            }
            OffcpuEvent::Wakeup {
                cpu,
                target_tid,
                waker,
                waker_stack,
                ..
            } => {
                self.cpu_last.insert(cpu, time);
                if let Some(open) = self
                    .threads
                    .get_mut(&target_tid)
                    .and_then(|t| t.open.as_mut())
                {
                    // The last wakeup before the switch-in is the one that made it runnable.
                    open.woken_at = Some(time);
                    // ... unless it was runnable already (a wakeup of a runnable task is
                    // traced too): runnable time starts at the first.
                    open.runnable_from.get_or_insert(time);
                    if self.opts.wakers {
                        open.waker = Some(WakerKey {
                            who: waker,
                            stack: waker_stack,
                        });
                    }
                }
            }
            OffcpuEvent::Lost {
                cpu,
                time: lost_time,
                count,
            } => self.lost(cpu, lost_time.map(|_| time), count),
            OffcpuEvent::Exit { tid, .. } => self.exit(time, tid),
            OffcpuEvent::Exec { pid, .. } => {
                // A non-leader thread that execs takes over the leader's tid, which has just
                // reported its exit: that tid is alive again.
                if let Some(thread) = self.threads.get_mut(&pid) {
                    thread.exited = false;
                }
            }
            OffcpuEvent::Sampled {
                cpu,
                tid,
                who,
                period,
                ..
            } => {
                self.cpu_last.insert(cpu, time);
                self.sampled(time, tid, who, period);
            }
        }
    }

    fn switch_out(&mut self, time: u64, tid: u32, who: NameId, state: TaskState, stack: StackId) {
        if tid == 0 {
            return;
        }
        let thread = self.threads.entry(tid).or_default();
        if thread.exited {
            if state == TaskState::Dead {
                // Its final switch-out: nothing more can come from this thread.
                self.threads.remove(&tid);
            }
            return;
        }
        if let Some(open) = thread.open.take() {
            if open.at_start && open.certain_until.is_none() {
                self.report.start_unconfirmed += 1;
            } else {
                // The task ran in between, so its switch-in was lost.
                self.close_uncertain(tid, open, time);
            }
        }
        // Wall mode opens an interval for every state (filters apply when it closes).
        let opens = match self.opts.runnable {
            true => state != TaskState::Dead,
            false => self.opts.states.accepts(state),
        };
        if !opens {
            if state == TaskState::Dead {
                self.threads.remove(&tid);
            } else {
                self.report.not_blocked += 1;
            }
            return;
        }
        let thread = self.threads.entry(tid).or_default();
        thread.open = Some(Interval::new(time, who, stack, state, false));
    }

    fn switch_in(&mut self, time: u64, tid: u32) {
        if tid == 0 {
            return;
        }
        let Some(thread) = self.threads.get_mut(&tid) else {
            return;
        };
        thread.exited = false;
        if let Some(open) = thread.open.take() {
            self.close(tid, open, time);
        }
    }

    /// The thread ran at `time` with no switch-in seen since it blocked: its switch-in was
    /// at or before `time` (and after its wakeup, when one was seen).
    fn ran(&mut self, time: u64, tid: u32) {
        let Some(open) = self.threads.get_mut(&tid).and_then(|t| t.open.take()) else {
            return;
        };
        self.report.ended_by_ran += 1;
        match open.woken_at {
            Some(woken) => {
                self.report.ran_slack_ns = self
                    .report
                    .ran_slack_ns
                    .saturating_add(time.saturating_sub(woken));
            }
            None => self.report.ran_unbounded += 1,
        }
        self.close(tid, open, time);
    }

    /// An on-CPU sample of a thread whose interval is open (see [`OffcpuEvent::Sampled`]).
    fn sampled(&mut self, time: u64, tid: u32, who: NameId, period: u64) {
        self.report.oncpu_ns = self.report.oncpu_ns.saturating_add(period);
        let thread = self.report.per_thread.entry(tid).or_default();
        thread.who = who;
        thread.oncpu_ns = thread.oncpu_ns.saturating_add(period);
        thread.seen(time.saturating_sub(period), time);
        let Some(open) = self.threads.get_mut(&tid).and_then(|t| t.open.take()) else {
            return;
        };
        let end = time.saturating_sub(period).max(open.start);
        if open.at_start {
            if open.certain_until.is_none() {
                // It was running when recording started: not blocked at all.
                self.report.start_unconfirmed += 1;
            } else {
                self.close_uncertain(tid, open, end);
            }
            return;
        }
        self.report.ended_by_sample += 1;
        self.close(tid, open, end);
    }

    /// Without a start time on the events' clock, intervals of threads blocked at start begin
    /// with the first event.
    fn start_at_first_event(&mut self, first: u64) {
        self.start_from_first_event = false;
        self.start_time = first;
        self.now = self.now.max(first);
        for open in self.threads.values_mut().filter_map(|t| t.open.as_mut()) {
            if open.at_start {
                open.start = open.start.max(first);
            }
        }
    }

    /// `loss_end` is the LOST record's time when it had one.
    fn lost(&mut self, cpu: u32, loss_end: Option<u64>, count: u64) {
        self.report.lost_records = self.report.lost_records.saturating_add(count);
        let window_start = self.cpu_last.get(&cpu).copied().unwrap_or(self.start_time);
        // A switch-in lost from any CPU's ring may belong to any open interval (tasks
        // migrate), so every interval open now is only certain up to the window's start.
        for open in self.threads.values_mut().filter_map(|t| t.open.as_mut()) {
            let limit = window_start.max(open.start);
            open.certain_until = Some(open.certain_until.map_or(limit, |c| c.min(limit)));
        }
        if let Some(end) = loss_end {
            self.cpu_last.insert(cpu, end);
        }
    }

    fn exit(&mut self, time: u64, tid: u32) {
        if tid == 0 {
            return;
        }
        let thread = self.threads.entry(tid).or_default();
        thread.exited = true;
        if let Some(open) = thread.open.take() {
            // It ran to exit, so its switch-in was lost: count only what is certain.
            self.report.discarded_at_exit += 1;
            self.close_uncertain(tid, open, time);
        }
    }

    /// Closes an interval whose end is unknown (somewhere before `time`): only the part
    /// before a loss window counts, and without a loss window nothing does.
    fn close_uncertain(&mut self, tid: u32, mut open: Interval, time: u64) {
        open.certain_until = Some(open.certain_until.unwrap_or(open.start));
        self.close(tid, open, time);
    }

    fn close(&mut self, tid: u32, open: Interval, end: u64) {
        let end = end.max(open.start);
        let counted_end = match open.certain_until {
            Some(certain) if certain < end => {
                let certain = certain.max(open.start);
                self.report.dropped_ns_lost =
                    self.report.dropped_ns_lost.saturating_add(end - certain);
                if certain == open.start {
                    self.report.dropped_intervals += 1;
                    return;
                }
                self.report.capped_intervals += 1;
                certain
            }
            _ => end,
        };
        if !self.opts.runnable {
            self.count_blocked(tid, &open, counted_end - open.start);
            return;
        }
        // Wall mode: blocked until the first wakeup (none for a preemption), runnable after.
        let split = match (open.state, open.runnable_from) {
            (TaskState::Runnable, _) => open.start,
            (_, Some(w)) => w.clamp(open.start, counted_end),
            (_, None) => counted_end,
        };
        self.count_blocked(tid, &open, split - open.start);
        self.count_runnable(tid, &open, counted_end - split);
        if let Some(t) = self.report.per_thread.get_mut(&tid) {
            t.seen(open.start, counted_end);
        }
    }

    /// Count `len` of `open` as blocked time, unless the filters leave it out.
    fn count_blocked(&mut self, tid: u32, open: &Interval, len: u64) {
        if len == 0 {
            return;
        }
        let state_filtered = self.opts.runnable && !self.opts.states.accepts(open.state);
        if state_filtered || len < self.opts.min_ns || self.opts.max_ns.is_some_and(|m| len > m) {
            self.report.filtered += 1;
            if self.opts.runnable {
                self.report.filtered_ns = self.report.filtered_ns.saturating_add(len);
                let thread = self.report.per_thread.entry(tid).or_default();
                thread.who = open.who;
                thread.filtered_ns = thread.filtered_ns.saturating_add(len);
            }
            return;
        }
        let key = StackKey {
            who: open.who,
            stack: open.stack,
            waker: open.waker,
            state: self.opts.runnable.then(|| open.state.letter()),
            tid: if self.opts.by_thread { tid } else { 0 },
        };
        let total = self.report.by_stack.entry(key).or_default();
        *total = total.saturating_add(len);
        self.report.blocked_ns = self.report.blocked_ns.saturating_add(len);
        let thread = self.report.per_thread.entry(tid).or_default();
        thread.who = open.who;
        thread.blocked_ns = thread.blocked_ns.saturating_add(len);
        thread.intervals += 1;
        self.report.counted_intervals += 1;
    }

    /// Count `len` of `open` as runnable time (wall mode).
    fn count_runnable(&mut self, tid: u32, open: &Interval, len: u64) {
        if len == 0 {
            return;
        }
        let key = StackKey {
            who: open.who,
            stack: open.stack,
            waker: open.waker,
            state: None,
            tid: 0,
        };
        let total = self.report.runnable.entry(key).or_default();
        *total = total.saturating_add(len);
        self.report.runnable_ns = self.report.runnable_ns.saturating_add(len);
        let thread = self.report.per_thread.entry(tid).or_default();
        thread.who = open.who;
        thread.runnable_ns = thread.runnable_ns.saturating_add(len);
    }

    /// Continuous mode: the report of the intervals closed so far. Open intervals keep
    /// running and are counted in the report they close in.
    pub fn take_report(&mut self) -> Report {
        std::mem::take(&mut self.report)
    }

    /// Stack ids that open intervals still refer to (blocked and waker stacks).
    pub fn open_stacks(&self) -> Vec<StackId> {
        let mut v: Vec<StackId> = Vec::new();
        for t in self.threads.values() {
            if let Some(o) = &t.open {
                v.push(o.stack);
                v.extend(o.waker.map(|w| w.stack));
            }
        }
        v
    }

    /// Renumber the stacks of open intervals after the caller compacted its stack table.
    pub fn remap_stacks(&mut self, f: impl Fn(StackId) -> StackId) {
        for t in self.threads.values_mut() {
            if let Some(o) = &mut t.open {
                o.stack = f(o.stack);
                if let Some(w) = &mut o.waker {
                    w.stack = f(w.stack);
                }
            }
        }
    }

    /// Names that open intervals still refer to (blocked threads and their wakers).
    pub fn open_names(&self) -> Vec<NameId> {
        let mut v: Vec<NameId> = Vec::new();
        for t in self.threads.values() {
            if let Some(o) = &t.open {
                v.push(o.who);
                v.extend(o.waker.map(|w| w.who));
            }
        }
        v
    }

    /// Renumber the names of open intervals after the caller compacted its name table.
    pub fn remap_names(&mut self, f: impl Fn(NameId) -> NameId) {
        for t in self.threads.values_mut() {
            if let Some(o) = &mut t.open {
                o.who = f(o.who);
                if let Some(w) = &mut o.waker {
                    w.who = f(w.who);
                }
            }
        }
    }

    /// Forget threads with nothing open: running ones (an absent entry means the same) and
    /// exited ones for which `gone` says their final switch-out cannot come any more (their
    /// final switch-out usually removes them; this catches the ones whose was lost).
    pub fn forget_threads(&mut self, gone: impl Fn(u32) -> bool) {
        self.threads
            .retain(|tid, t| t.open.is_some() || (t.exited && !gone(*tid)));
    }

    /// Threads the engine holds state for.
    pub fn thread_entries(&self) -> usize {
        self.threads.len()
    }

    /// [`Report::trim_threads`] on the report being built.
    pub fn trim_threads(&mut self, limit: usize, gone: impl Fn(u32) -> bool) -> usize {
        self.report.trim_threads(limit, gone)
    }

    /// Ends recording: intervals still open count up to `stop_time`.
    pub fn finish(mut self, stop_time: u64) -> Report {
        let mut open: Vec<(u32, Interval)> = self
            .threads
            .iter_mut()
            .filter_map(|(&tid, t)| t.open.take().map(|o| (tid, o)))
            .collect();
        // Deterministic order keeps reports reproducible; HashMap order is not.
        open.sort_by_key(|&(tid, o)| (o.start, tid));
        for (tid, interval) in open {
            self.report.open_at_stop += 1;
            self.close(tid, interval, stop_time);
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use TaskState::{Interruptible as S, Runnable as R, Uninterruptible as D};

    const MS: u64 = 1_000_000;

    fn out(time: u64, tid: u32, state: TaskState, stack: StackId) -> OffcpuEvent {
        OffcpuEvent::SwitchOut {
            time,
            cpu: 0,
            tid,
            who: tid,
            state,
            stack,
        }
    }

    fn sin(time: u64, tid: u32) -> OffcpuEvent {
        OffcpuEvent::SwitchIn { time, cpu: 1, tid }
    }

    fn ran(time: u64, tid: u32) -> OffcpuEvent {
        OffcpuEvent::Ran { time, cpu: 1, tid }
    }

    fn wake(time: u64, target_tid: u32, waker_tid: u32, waker_stack: StackId) -> OffcpuEvent {
        OffcpuEvent::Wakeup {
            time,
            cpu: 1,
            target_tid,
            waker: waker_tid,
            waker_stack,
        }
    }

    fn run(opts: Options, start: u64, stop: u64, events: &[OffcpuEvent]) -> Report {
        let mut engine = Engine::new(opts, start);
        for &e in events {
            engine.push(e);
        }
        engine.finish(stop)
    }

    fn key(tid: u32, stack: StackId) -> StackKey {
        StackKey {
            who: tid,
            stack,
            waker: None,
            state: None,
            tid: 0,
        }
    }

    #[test]
    fn continuous_reports_keep_open_intervals_running() {
        let mut e = Engine::new(Options::default(), 0);
        e.push(out(10 * MS, 1, D, 5));
        e.push(sin(20 * MS, 1));
        e.push(out(30 * MS, 2, S, 6));
        let first = e.take_report();
        assert_eq!(first.by_stack.values().sum::<u64>(), 10 * MS);
        assert_eq!(e.open_stacks(), vec![6]);
        // The caller compacted its table: stack 6 is now 0.
        e.remap_stacks(|s| if s == 6 { 0 } else { s });
        e.forget_threads(|_| true);
        e.push(sin(45 * MS, 2));
        let second = e.finish(50 * MS);
        let key = StackKey {
            who: 2,
            stack: 0,
            waker: None,
            state: None,
            tid: 0,
        };
        assert_eq!(second.by_stack.get(&key), Some(&(15 * MS)));
        assert_eq!(second.by_stack.len(), 1);
    }

    #[test]
    fn blocked_interval_runs_from_switch_out_to_switch_in() {
        let r = run(
            Options::default(),
            0,
            100 * MS,
            &[
                out(10 * MS, 7, S, 1),
                sin(17 * MS, 7),
                out(20 * MS, 7, D, 2),
                sin(23 * MS, 7),
            ],
        );
        assert_eq!(r.by_stack[&key(7, 1)], 7 * MS);
        assert_eq!(r.by_stack[&key(7, 2)], 3 * MS);
        assert_eq!(r.per_thread[&7].blocked_ns, 10 * MS);
        assert_eq!(r.per_thread[&7].intervals, 2);
        assert_eq!(r.per_thread[&7].who, 7);
        assert_eq!(r.blocked_ns, 10 * MS);
        assert_eq!(r.counted_intervals, 2);
    }

    #[test]
    fn preemption_counts_only_with_state_any() {
        let events = [out(10, 7, R, 1), sin(30, 7)];
        let r = run(Options::default(), 0, 100, &events);
        assert!(r.by_stack.is_empty());
        assert_eq!(r.not_blocked, 1);
        let any = Options {
            states: StateFilter::Any,
            ..Options::default()
        };
        let r = run(any, 0, 100, &events);
        assert_eq!(r.by_stack[&key(7, 1)], 20);
    }

    #[test]
    fn state_filter_selects_s_or_d() {
        let events = [out(10, 7, S, 1), sin(20, 7), out(30, 7, D, 2), sin(45, 7)];
        let only = |states| Options {
            states,
            ..Options::default()
        };
        let r = run(only(StateFilter::Interruptible), 0, 100, &events);
        assert_eq!(r.by_stack.len(), 1);
        assert_eq!(r.by_stack[&key(7, 1)], 10);
        let r = run(only(StateFilter::Uninterruptible), 0, 100, &events);
        assert_eq!(r.by_stack.len(), 1);
        assert_eq!(r.by_stack[&key(7, 2)], 15);
        assert!(!StateFilter::Any.accepts(TaskState::Dead));
        assert!(StateFilter::Blocked.accepts(TaskState::Idle));
        assert!(StateFilter::Blocked.accepts(TaskState::Other(0x4000)));
    }

    #[test]
    fn waker_is_the_last_wakeup_between_switch_out_and_in() {
        let opts = Options {
            wakers: true,
            ..Options::default()
        };
        let events = [
            wake(5, 7, 50, 90), // before the switch-out: not this interval's waker
            out(10, 7, S, 1),
            wake(12, 7, 51, 91),
            wake(14, 7, 52, 92),
            sin(15, 7),
            wake(16, 7, 53, 93), // after the switch-in
            out(20, 7, S, 1),
            sin(25, 7),
        ];
        let r = run(opts, 0, 100, &events);
        let woken_by = |tid, stack| StackKey {
            waker: Some(WakerKey { who: tid, stack }),
            ..key(7, 1)
        };
        assert_eq!(r.by_stack[&woken_by(52, 92)], 5);
        assert_eq!(r.by_stack[&key(7, 1)], 5, "second interval had no wakeup");
        assert_eq!(r.by_stack.len(), 2);

        let r = run(Options::default(), 0, 100, &events);
        assert_eq!(
            r.by_stack[&key(7, 1)],
            10,
            "without --wakers keys carry no waker"
        );
    }

    #[test]
    fn second_switch_out_without_switch_in_drops_the_interval() {
        let r = run(
            Options::default(),
            0,
            100,
            &[out(10, 7, S, 1), out(40, 7, S, 2), sin(45, 7)],
        );
        assert_eq!(r.by_stack.get(&key(7, 1)), None, "never invent time");
        assert_eq!(r.dropped_intervals, 1);
        assert_eq!(r.dropped_ns_lost, 30, "bounded by the second switch-out");
        assert_eq!(r.by_stack[&key(7, 2)], 5);
    }

    #[test]
    fn lost_records_cap_open_intervals_at_the_loss_window() {
        // CPU 1's last record before the loss is at 20; anything after may be missing.
        let events = [
            out(10, 7, S, 1),
            OffcpuEvent::SwitchIn {
                time: 20,
                cpu: 1,
                tid: 9,
            },
            OffcpuEvent::Lost {
                cpu: 1,
                time: Some(50),
                count: 3,
            },
            sin(60, 7),
        ];
        let r = run(Options::default(), 0, 100, &events);
        assert_eq!(r.by_stack[&key(7, 1)], 10, "counted 10..20 only");
        assert_eq!(r.capped_intervals, 1);
        assert_eq!(r.dropped_ns_lost, 40);
        assert_eq!(r.lost_records, 3);
    }

    #[test]
    fn a_loss_window_older_than_the_interval_drops_it_entirely() {
        let events = [
            out(30, 7, S, 1),
            OffcpuEvent::Lost {
                cpu: 3, // never delivered a record: window starts at the start time
                time: None,
                count: 1,
            },
            sin(60, 7),
            out(70, 7, S, 1),
            sin(80, 7),
        ];
        let r = run(Options::default(), 0, 100, &events);
        assert_eq!(r.dropped_intervals, 1);
        assert_eq!(r.dropped_ns_lost, 30);
        assert_eq!(
            r.by_stack[&key(7, 1)],
            10,
            "intervals after the loss are whole"
        );
    }

    #[test]
    fn lost_switch_in_after_a_loss_keeps_the_certain_part() {
        let events = [
            out(10, 7, S, 1),
            OffcpuEvent::SwitchIn {
                time: 25,
                cpu: 2,
                tid: 9,
            },
            OffcpuEvent::Lost {
                cpu: 2,
                time: Some(40),
                count: 1,
            },
            out(60, 7, S, 2), // the switch-in fell into the loss
            sin(65, 7),
        ];
        let r = run(Options::default(), 0, 100, &events);
        assert_eq!(r.by_stack[&key(7, 1)], 15);
        assert_eq!(r.dropped_ns_lost, 35);
        assert_eq!(r.by_stack[&key(7, 2)], 5);
    }

    #[test]
    fn exit_discards_and_the_final_switch_out_is_not_a_wait() {
        let events = [
            out(10, 7, S, 1),
            OffcpuEvent::Exit {
                time: 30,
                pid: 100,
                tid: 7,
            },
            out(31, 7, TaskState::Other(0x40), 2), // final switch-out, state undecodable
            out(32, 8, TaskState::Dead, 3),
        ];
        let r = run(Options::default(), 0, 100, &events);
        assert!(r.by_stack.is_empty(), "{:?}", r.by_stack);
        assert_eq!(r.discarded_at_exit, 1);
        assert_eq!(r.dropped_ns_lost, 20);
        assert_eq!(r.open_at_stop, 0);
    }

    #[test]
    fn exec_keeps_the_thread() {
        let events = [
            out(10, 100, S, 1),
            sin(20, 100),
            OffcpuEvent::Exec { time: 25, pid: 100 },
            out(30, 100, S, 2),
            sin(35, 100),
        ];
        let r = run(Options::default(), 0, 100, &events);
        assert_eq!(r.per_thread[&100].blocked_ns, 15);
        assert_eq!(r.per_thread[&100].intervals, 2);
    }

    #[test]
    fn exec_by_a_non_leader_revives_the_leader_tid() {
        // Thread 101 execs: the leader 100 is reaped (EXIT) and 101 continues as tid 100.
        let events = [
            OffcpuEvent::Exit {
                time: 10,
                pid: 100,
                tid: 100,
            },
            OffcpuEvent::Exec { time: 11, pid: 100 },
            out(20, 100, S, 1),
            sin(30, 100),
        ];
        let r = run(Options::default(), 0, 100, &events);
        assert_eq!(r.by_stack[&key(100, 1)], 10);
    }

    #[test]
    fn threads_blocked_at_start_count_from_the_start() {
        let mut engine = Engine::new(Options::default(), 1000);
        engine.blocked_at_start(7, 7, S, 50);
        engine.blocked_at_start(8, 8, D, 51);
        engine.blocked_at_start(9, 9, R, 52);
        engine.blocked_at_start(10, 10, S, 53);
        engine.push(sin(1400, 7));
        engine.push(out(1500, 10, S, 1)); // was running after all
        let r = engine.finish(3000);
        assert_eq!(r.by_stack[&key(7, 50)], 400);
        assert_eq!(
            r.by_stack[&key(8, 51)],
            2000,
            "blocked for the whole window"
        );
        assert_eq!(r.by_stack.get(&key(9, 52)), None);
        assert_eq!(r.not_blocked, 1);
        assert_eq!(r.start_unconfirmed, 1);
        assert_eq!(r.by_stack[&key(10, 1)], 1500);
        assert_eq!(r.open_at_stop, 2);
    }

    #[test]
    fn a_thread_seen_running_ends_its_interval_when_no_switch_in_came_first() {
        // Woken on an idle CPU, its switch-in never seen: its syscall exit ends the interval.
        let r = run(
            Options::default(),
            0,
            100,
            &[out(10, 7, S, 1), ran(50, 7), ran(60, 7)],
        );
        assert_eq!(r.by_stack[&key(7, 1)], 40);
        assert_eq!((r.ended_by_ran, r.ran_unbounded, r.ran_slack_ns), (1, 1, 0));
        // A switch-in seen first ends it; the later syscall exit changes nothing.
        let r = run(
            Options::default(),
            0,
            100,
            &[out(10, 7, S, 1), sin(30, 7), ran(35, 7)],
        );
        assert_eq!(r.by_stack[&key(7, 1)], 20);
        assert_eq!(r.ended_by_ran, 0);
    }

    #[test]
    fn the_excess_of_a_syscall_exit_end_is_bounded_by_the_wakeup() {
        // The real switch-in lies between the wakeup (40) and the exit (45).
        let r = run(
            Options::default(),
            0,
            100,
            &[out(10, 7, S, 1), wake(40, 7, 9, 2), ran(45, 7)],
        );
        assert_eq!(r.by_stack[&key(7, 1)], 35);
        assert_eq!((r.ended_by_ran, r.ran_unbounded, r.ran_slack_ns), (1, 0, 5));
    }

    #[test]
    fn without_a_start_clock_threads_blocked_at_start_count_from_the_first_event() {
        // No use_clockid: start 0 is not on the events' clock (which counts from boot).
        let mut engine = Engine::new(Options::default(), 0);
        engine.blocked_at_start(7, 7, S, 50);
        engine.push(out(5_000, 8, S, 1));
        engine.push(sin(5_400, 7));
        let r = engine.finish(6_000);
        assert_eq!(r.by_stack[&key(7, 50)], 400);
        assert_eq!(r.by_stack[&key(8, 1)], 1_000);
    }

    #[test]
    fn intervals_open_at_stop_count_up_to_stop() {
        let r = run(Options::default(), 0, 100, &[out(60, 7, D, 1)]);
        assert_eq!(r.by_stack[&key(7, 1)], 40);
        assert_eq!(r.open_at_stop, 1);
    }

    #[test]
    fn min_and_max_filter_by_length() {
        let opts = Options {
            min_ns: 5,
            max_ns: Some(20),
            ..Options::default()
        };
        let events = [
            out(0, 7, S, 1),
            sin(4, 7), // 4: too short
            out(10, 7, S, 2),
            sin(15, 7), // 5: kept (bounds inclusive)
            out(20, 7, S, 3),
            sin(41, 7), // 21: too long
            out(50, 7, S, 4),
            sin(70, 7), // 20: kept
        ];
        let r = run(opts, 0, 100, &events);
        assert_eq!(r.filtered, 2);
        let stacks: Vec<_> = {
            let mut s: Vec<_> = r.by_stack.keys().map(|k| k.stack).collect();
            s.sort();
            s
        };
        assert_eq!(stacks, vec![2, 4]);
    }

    #[test]
    fn the_idle_task_is_never_reported() {
        let events = [
            OffcpuEvent::SwitchOut {
                time: 1,
                cpu: 0,
                tid: 0,
                who: 0,
                state: S,
                stack: 1,
            },
            sin(50, 0),
        ];
        let mut engine = Engine::new(Options::default(), 0);
        engine.blocked_at_start(0, 0, S, 2);
        for e in events {
            engine.push(e);
        }
        let r = engine.finish(100);
        assert!(r.by_stack.is_empty());
        assert!(r.per_thread.is_empty());
    }

    #[test]
    fn a_late_event_cannot_make_intervals_overlap() {
        let r = run(
            Options::default(),
            0,
            100,
            &[out(10, 7, S, 1), sin(50, 7), out(20, 7, S, 1), sin(60, 7)],
        );
        // The stray switch-out at 20 is treated as happening at 50.
        assert_eq!(r.per_thread[&7].blocked_ns, 50);
    }

    fn arbitrary_event(start: u64, stop: u64) -> impl Strategy<Value = OffcpuEvent> {
        let time = start..=stop;
        let tid = 0u32..3;
        let state = prop_oneof![
            Just(R),
            Just(S),
            Just(D),
            Just(TaskState::Dead),
            any::<u64>().prop_map(TaskState::Other)
        ];
        prop_oneof![
            (time.clone(), 0u32..3, tid.clone(), state, 0u32..4).prop_map(
                |(time, cpu, tid, state, stack)| OffcpuEvent::SwitchOut {
                    time,
                    cpu,
                    tid,
                    who: tid,
                    state,
                    stack
                }
            ),
            (time.clone(), 0u32..3, tid.clone())
                .prop_map(|(time, cpu, tid)| OffcpuEvent::SwitchIn { time, cpu, tid }),
            (time.clone(), 0u32..3, tid.clone()).prop_map(|(time, cpu, tid)| OffcpuEvent::Ran {
                time,
                cpu,
                tid
            }),
            (time.clone(), tid.clone(), tid.clone(), 0u32..4).prop_map(
                |(time, target_tid, waker_tid, waker_stack)| OffcpuEvent::Wakeup {
                    time,
                    cpu: 0,
                    target_tid,
                    waker: waker_tid,
                    waker_stack
                }
            ),
            (0u32..3, proptest::option::of(time.clone()), 0u64..10)
                .prop_map(|(cpu, time, count)| OffcpuEvent::Lost { cpu, time, count }),
            (time.clone(), tid.clone()).prop_map(|(time, tid)| OffcpuEvent::Exit {
                time,
                pid: 100,
                tid
            }),
            time.prop_map(|time| OffcpuEvent::Exec { time, pid: 100 }),
        ]
    }

    #[test]
    fn churn_leaves_no_per_thread_state() {
        // Thousands of short-lived threads of one program: each blocks once, exits and
        // switches out for the last time. Keys are per name, and no thread state stays.
        let mut e = Engine::new(Options::default(), 0);
        let who = 1;
        for tid in 1000..6000u32 {
            let t = u64::from(tid) * 10;
            e.push(OffcpuEvent::SwitchOut {
                time: t,
                cpu: 0,
                tid,
                who,
                state: S,
                stack: 3,
            });
            e.push(sin(t + 4, tid));
            e.push(OffcpuEvent::Exit {
                time: t + 5,
                pid: tid,
                tid,
            });
            e.push(out(t + 6, tid, TaskState::Dead, 4));
        }
        assert_eq!(e.thread_entries(), 0);
        let limit = e.trim_threads(100, |_| true);
        assert!(limit >= 100);
        let r = e.finish(100_000);
        assert_eq!(r.by_stack.len(), 1);
        let k = StackKey {
            who,
            stack: 3,
            waker: None,
            state: None,
            tid: 0,
        };
        assert_eq!(r.by_stack[&k], 5000 * 4);
        assert_eq!(r.blocked_ns, 5000 * 4);
        assert_eq!(r.per_thread.len(), TOP_THREADS);
        assert_eq!(r.thread_count(), 5000);
    }

    #[test]
    fn trimming_keeps_live_threads_and_raises_the_limit() {
        let mut r = Report::default();
        for tid in 0..50u32 {
            r.per_thread.insert(
                tid,
                ThreadTotals {
                    who: 0,
                    blocked_ns: u64::from(tid),
                    intervals: 1,
                    ..ThreadTotals::default()
                },
            );
        }
        // All alive: nothing can go, and the limit grows so the check is not repeated.
        assert_eq!(r.trim_threads(10, |_| false), 100);
        assert_eq!(r.per_thread.len(), 50);
        // Odd tids exited: they go, except the top ones by blocked time.
        r.trim_threads(10, |tid| tid % 2 == 1);
        assert!(r.per_thread.contains_key(&49) && !r.per_thread.contains_key(&1));
        assert_eq!(r.thread_count(), 50);
        let mut total = Report::default();
        total.add_totals(&r);
        total.add_totals(&r);
        assert_eq!(total.per_thread[&49].blocked_ns, 98);
        assert_eq!(total.threads_forgotten, 2 * r.threads_forgotten);
    }

    proptest! {
        #[test]
        fn reported_time_never_exceeds_the_window(
            (start, stop, mut events) in (0u64..1_000, 1u64..200).prop_flat_map(|(start, len)| {
                let stop = start + len;
                (
                    Just(start),
                    Just(stop),
                    proptest::collection::vec(arbitrary_event(start, stop), 0..80),
                )
            }),
            at_start in proptest::collection::vec((0u32..3, 0u32..4), 0..3),
            wakers in any::<bool>(),
            sorted in any::<bool>(),
        ) {
            if sorted {
                events.sort_by_key(|e| e.time().unwrap_or(0));
            }
            let opts = Options { wakers, states: StateFilter::Any, ..Options::default() };
            let mut engine = Engine::new(opts, start);
            for (tid, stack) in at_start {
                engine.blocked_at_start(tid, tid, S, stack);
            }
            for e in events {
                engine.push(e);
            }
            let report = engine.finish(stop);
            for (tid, totals) in &report.per_thread {
                prop_assert!(*tid != 0);
                prop_assert!(totals.blocked_ns <= stop - start, "{tid}: {totals:?}");
            }
            let by_stack: u64 = report.by_stack.values().sum();
            let by_thread: u64 = report.per_thread.values().map(|t| t.blocked_ns).sum();
            prop_assert_eq!(by_stack, by_thread);
            prop_assert_eq!(by_stack, report.blocked_ns);
        }
    }

    fn wall() -> Options {
        Options {
            runnable: true,
            ..Options::default()
        }
    }

    fn sampled(time: u64, tid: u32, period: u64) -> OffcpuEvent {
        OffcpuEvent::Sampled {
            time,
            cpu: 0,
            tid,
            who: tid,
            period,
        }
    }

    fn with_state(k: StackKey, letter: char) -> StackKey {
        StackKey {
            state: Some(letter),
            ..k
        }
    }

    /// Wall mode: a preemption is runnable until the switch-in; a blocked interval is
    /// blocked until its first wakeup and runnable from there; on-CPU samples count by
    /// their period; per thread the kinds cover exactly the time seen.
    #[test]
    fn wall_mode_splits_blocked_runnable_and_on_cpu_time() {
        let r = run(
            wall(),
            0,
            100 * MS,
            &[
                sampled(10 * MS, 1, 10 * MS),
                out(10 * MS, 1, R, 5),
                sin(14 * MS, 1),
                sampled(20 * MS, 1, 6 * MS),
                out(20 * MS, 1, S, 6),
                wake(50 * MS, 1, 9, 0),
                // A second wakeup of a task already runnable does not move the split.
                wake(55 * MS, 1, 9, 0),
                sin(60 * MS, 1),
                sampled(100 * MS, 1, 40 * MS),
            ],
        );
        assert_eq!(r.runnable[&key(1, 5)], 4 * MS);
        assert_eq!(r.runnable[&key(1, 6)], 10 * MS);
        assert_eq!(r.by_stack[&with_state(key(1, 6), 'S')], 30 * MS);
        assert_eq!(r.by_stack.len(), 1, "a preemption is not blocked time");
        let t = &r.per_thread[&1];
        assert_eq!(
            (t.oncpu_ns, t.blocked_ns, t.runnable_ns),
            (56 * MS, 30 * MS, 14 * MS)
        );
        assert_eq!(t.accounted_ns(), 100 * MS);
        assert_eq!((t.first_ns, t.last_ns), (1, 100 * MS));
        assert_eq!(r.oncpu_ns, 56 * MS);
    }

    /// An on-CPU sample of a thread whose switch-in was missed ends its interval where the
    /// sample's period began; -m/-M leave blocked time out but count it as filtered.
    #[test]
    fn wall_mode_samples_end_missed_switch_ins_and_filters_are_counted() {
        let opts = Options {
            min_ns: 5 * MS,
            ..wall()
        };
        let r = run(
            opts,
            0,
            100 * MS,
            &[
                out(10 * MS, 1, D, 3),
                sampled(40 * MS, 1, 10 * MS),
                out(50 * MS, 1, S, 4),
                sin(52 * MS, 1),
            ],
        );
        assert_eq!(r.ended_by_sample, 1);
        assert_eq!(r.by_stack[&with_state(key(1, 3), 'D')], 20 * MS);
        assert_eq!(r.filtered_ns, 2 * MS);
        assert_eq!(r.per_thread[&1].filtered_ns, 2 * MS);
        assert!(!r.by_stack.keys().any(|k| k.stack == 4));
    }
}

//! [`EmulatedKernel`]: a [`Kernel`] that behaves like one [`KernelProfile`].
//!
//! Event fds are real memfds (so `read()`, `fcntl()` and `close()` work as psample expects)
//! whose per-fd state is kept here, keyed by fd number and checked against the memfd's inode
//! so a reused number is never mistaken for an old event. Rings are [`HeapRing`]s with the
//! profile's header layout. Records come from a [`Script`]: each step is delivered, when its
//! time has come, to every enabled event that would see it on that kernel, in that kernel's
//! record layouts (MMAP vs MMAP2, SWITCH only with context_switch, …).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use perfring::attr::{event_type, flag, RawAttr};
use perfring::ring::{HeapRing, PushOutcome, RingMemory};
use perfring::sys::{Errno, Ioctl, Kernel};

use crate::attr_rules::{self, NR_CPUS};
use crate::encode::{self, misc, Origin, SampleBody};
use crate::ioctl_rules::{self, PerfIoctl};
use crate::profile::{KernelProfile, TracingLayout};
use crate::script::{Action, BlockState, Script, Stack, Step, Task};
use crate::tracefs::{self, Filter, Payload, SchedEvents, TracingPath};

const PAGE_SIZE: usize = 4096;

/// Software event configs.
const SW_CPU_CLOCK: u64 = 0;
const SW_TASK_CLOCK: u64 = 1;
const SW_CONTEXT_SWITCHES: u64 = 3;

/// BPF program types SET_BPF accepts: tracepoint programs on tracepoints, perf_event
/// programs (4.9+) on sampling events.
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_PERF_EVENT: u32 = 7;

/// One `perf_event_open` call as the emulator saw it, for tests of the ladder.
#[derive(Debug, Clone)]
pub struct OpenAttempt {
    pub attr: RawAttr,
    pub pid: i32,
    pub cpu: i32,
    pub flags: u64,
    pub result: Result<(), Errno>,
}

/// One ioctl as the emulator answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoctlAttempt {
    pub name: &'static str,
    pub result: Result<u64, Errno>,
}

/// Totals of what the emulator delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    pub records: u64,
    pub samples: u64,
    /// Records the rings had no room for (reported to the reader as PERF_RECORD_LOST).
    pub lost: u64,
    /// Records dropped because the ring was paused (PAUSE_OUTPUT).
    pub paused: u64,
    /// Samples consumed by an attached BPF program (it aggregates in the kernel).
    pub to_bpf: u64,
    pub steps: u64,
}

/// What SET_BPF does on a profile that has the ioctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfPolicy {
    /// Validate the program fd and type like the kernel; on success the event's samples go
    /// to the program (which the emulator cannot run) instead of the ring.
    Validate,
    /// Refuse every attach with this errno (a kernel where perf_event programs are not
    /// usable, e.g. RHEL 7's tracing-only tech preview).
    Refuse(Errno),
}

#[derive(Debug)]
struct Event {
    ino: u64,
    attr: RawAttr,
    /// Target task (resolved for pid 0), or -1.
    pid: i32,
    cpu: i32,
    id: u64,
    enabled: bool,
    output: Option<RawFd>,
    ring: Option<HeapRing>,
    paused: bool,
    filter: Option<Filter>,
    bpf: bool,
    samples_since_wakeup: u64,
}

#[derive(Debug)]
struct State {
    events: BTreeMap<RawFd, Event>,
    next_id: u64,
    cursor: usize,
    start: Option<Instant>,
    /// (clockid, clock value at start) for the clocks events asked for; -1 is perf's clock.
    bases: Vec<(i32, u64)>,
    debugfs_mounted: bool,
    opens: Vec<OpenAttempt>,
    ioctls: Vec<IoctlAttempt>,
    delivery: Delivery,
    bpf_policy: BpfPolicy,
}

/// A kernel of one profile running a scripted workload.
#[derive(Debug)]
pub struct EmulatedKernel {
    profile: KernelProfile,
    sched: SchedEvents,
    script: Script,
    state: Mutex<State>,
}

fn inode_of(fd: RawFd) -> Option<u64> {
    // SAFETY: fstat on an fd number with a zeroed out-parameter; failure is reported.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstat(fd, &mut st) };
    (rc == 0).then_some(st.st_ino)
}

fn clock_ns(clockid: i32) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clockid, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// A task that exited (or is a zombie) no longer produces events; its events report POLLHUP.
fn task_gone(tid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{tid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// The program type of a BPF program fd, from /proc/self/fdinfo.
fn bpf_prog_type(fd: RawFd) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("prog_type:"))
        .and_then(|v| v.trim().parse().ok())
}

impl EmulatedKernel {
    pub fn new(profile: KernelProfile, script: Script) -> Result<EmulatedKernel, String> {
        let sched = SchedEvents::of(&profile)?;
        let debugfs_mounted = match profile.tracing {
            TracingLayout::Tracefs => true,
            TracingLayout::DebugfsOnly { debugfs_mounted } => debugfs_mounted,
        };
        Ok(EmulatedKernel {
            profile,
            sched,
            script,
            state: Mutex::new(State {
                events: BTreeMap::new(),
                next_id: 1000,
                cursor: 0,
                start: None,
                bases: Vec::new(),
                debugfs_mounted,
                opens: Vec::new(),
                ioctls: Vec::new(),
                delivery: Delivery::default(),
                bpf_policy: BpfPolicy::Validate,
            }),
        })
    }

    pub fn profile(&self) -> &KernelProfile {
        &self.profile
    }

    pub fn sched_events(&self) -> &SchedEvents {
        &self.sched
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock (a failed assertion in a test thread) must not
        // turn every later call into a second panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_bpf_policy(&self, policy: BpfPolicy) {
        self.lock().bpf_policy = policy;
    }

    /// Every perf_event_open call so far.
    pub fn opens(&self) -> Vec<OpenAttempt> {
        self.lock().opens.clone()
    }

    pub fn ioctls(&self) -> Vec<IoctlAttempt> {
        self.lock().ioctls.clone()
    }

    pub fn delivery(&self) -> Delivery {
        self.lock().delivery
    }

    /// The attrs of currently open events, as the kernel stored them.
    pub fn open_events(&self) -> Vec<(RawAttr, i32, i32)> {
        self.lock()
            .events
            .values()
            .map(|e| (e.attr, e.pid, e.cpu))
            .collect()
    }

    /// Whether every step of the script has been delivered.
    pub fn script_done(&self) -> bool {
        self.lock().cursor >= self.script.steps().len()
    }

    /// Delivers every step that is due now (or all of them with `all`), as time passing on
    /// the emulated machine would.
    pub fn run_due(&self, all: bool) {
        let mut st = self.lock();
        let now = if all { u64::MAX } else { st.elapsed_ns() };
        self.advance(&mut st, now);
    }

    /// Delivers the steps up to `at_ns` of emulated time, regardless of the wall clock
    /// (for tests that interleave delivery and reading).
    pub fn run_until(&self, at_ns: u64) {
        let mut st = self.lock();
        self.advance(&mut st, at_ns);
    }

    fn advance(&self, st: &mut State, now_ns: u64) {
        if st.start.is_none() {
            return;
        }
        while let Some(step) = self.script.steps().get(st.cursor) {
            if step.at_ns > now_ns {
                break;
            }
            st.cursor += 1;
            st.delivery.steps += 1;
            self.deliver(st, step);
        }
    }

    fn deliver(&self, st: &mut State, step: &Step) {
        let cpu = step.cpu;
        match &step.action {
            Action::OnCpu { task, stack } => {
                self.each_event(st, step, task, |ev| {
                    let clock = ev.attr.type_ == event_type::SOFTWARE
                        && matches!(ev.attr.config, SW_CPU_CLOCK | SW_TASK_CLOCK);
                    clock.then_some(Rec::Sample {
                        task,
                        stack,
                        raw: None,
                    })
                });
            }
            Action::Mmap { task, map } => {
                self.each_event(st, step, task, |ev| {
                    let wants = ev.attr.has(flag::MMAP2)
                        || (ev.attr.has(flag::MMAP) && (map.exec || ev.attr.has(flag::MMAP_DATA)));
                    wants.then(|| Rec::side(move |a, o| encode::mmap(a, o, map)))
                });
            }
            Action::Comm { task, exec } => {
                self.each_event(st, step, task, |ev| {
                    ev.attr
                        .has(flag::COMM)
                        .then(|| Rec::side(move |a, o| encode::comm(a, o, &task.comm, *exec)))
                });
            }
            Action::SwitchOut { task, state, stack } => {
                let idle = Task::idle(cpu);
                self.switch(st, step, task, &idle, Some((*state, stack)));
            }
            Action::SwitchIn { task } => {
                let idle = Task::idle(cpu);
                self.switch(st, step, &idle, task, None);
            }
            Action::Wakeup {
                waker,
                stack,
                wakee,
                target_cpu,
            } => {
                let mut p = Payload::new(&self.sched.wakeup);
                p.int("common_pid", i64::from(waker.tid))
                    .str("comm", &wakee.comm)
                    .int("pid", i64::from(wakee.tid))
                    .int("prio", 120)
                    .int("success", 1)
                    .int("target_cpu", i64::from(*target_cpu));
                let raw = p.into_bytes();
                let id = self.sched.wakeup_id();
                // Delivered to the waker's (current task's) events, CPU-wide events, and the
                // woken task's own events — but only to those bound to this CPU.
                let which = |ev: &Event| {
                    ev.pid == -1 || ev.pid == waker.tid as i32 || ev.pid == wakee.tid as i32
                };
                self.each_event_where(st, step, waker, which, |ev| {
                    self.tracepoint_hit(ev, id, &raw).then_some(Rec::Sample {
                        task: waker,
                        stack,
                        raw: Some(&raw),
                    })
                });
            }
        }
    }

    /// A context switch on `step.cpu` from `prev` to `next`; `out` carries prev's state and
    /// blocked stack when prev is a scripted task going to sleep.
    fn switch(
        &self,
        st: &mut State,
        step: &Step,
        prev: &Task,
        next: &Task,
        out: Option<(BlockState, &Stack)>,
    ) {
        // The idle task leaves while runnable; its stack (the idle loop) is not modelled.
        let empty = Stack::default();
        let (state, prev_stack) = out.unwrap_or((BlockState::Preempted, &empty));
        let prev_state = match state {
            BlockState::Sleeping => 1,
            BlockState::DiskWait => 2,
            BlockState::Preempted => self.profile.preempt_state,
        };
        let mut p = Payload::new(&self.sched.switch);
        p.int("common_pid", i64::from(prev.tid))
            .str("prev_comm", &prev.comm)
            .int("prev_pid", i64::from(prev.tid))
            .int("prev_prio", 120)
            .int("prev_state", prev_state as i64)
            .str("next_comm", &next.comm)
            .int("next_pid", i64::from(next.tid))
            .int("next_prio", 120);
        let raw = p.into_bytes();
        let switch_id = self.sched.switch_id();
        // The tracepoint and the context-switches software event fire in prev's context.
        self.each_event(st, step, prev, |ev| {
            if self.tracepoint_hit(ev, switch_id, &raw) {
                return Some(Rec::Sample {
                    task: prev,
                    stack: prev_stack,
                    raw: Some(&raw),
                });
            }
            let cs = ev.attr.type_ == event_type::SOFTWARE && ev.attr.config == SW_CONTEXT_SWITCHES;
            cs.then_some(Rec::Sample {
                task: prev,
                stack: prev_stack,
                raw: None,
            })
        });
        if !self.profile.knows_flag(flag::CONTEXT_SWITCH) {
            return;
        }
        let preempt = state == BlockState::Preempted && self.profile.switch_out_preempt;
        let out_misc = misc::SWITCH_OUT | if preempt { misc::SWITCH_OUT_PREEMPT } else { 0 };
        // Switch-out in prev's context: per-task events get SWITCH, CPU-wide ones
        // SWITCH_CPU_WIDE naming the next task; then the same for the switch-in of next.
        for (current, other, m) in [(prev, next, out_misc), (next, prev, 0)] {
            let other_ids = (other.pid, other.tid);
            self.each_event(st, step, current, |ev| {
                let cpu_wide = ev.pid == -1;
                ev.attr.has(flag::CONTEXT_SWITCH).then(|| {
                    Rec::side(move |a, o| {
                        if cpu_wide {
                            encode::switch_cpu_wide(a, o, m, other_ids)
                        } else {
                            encode::switch(a, o, m)
                        }
                    })
                })
            });
        }
    }

    /// Whether a tracepoint event `ev` fires for tracepoint `id` with this payload.
    fn tracepoint_hit(&self, ev: &Event, id: u64, raw: &[u8]) -> bool {
        if ev.attr.type_ != event_type::TRACEPOINT || ev.attr.config != id {
            return false;
        }
        // Tracepoints are kernel code: events that exclude the kernel never fire.
        if ev.attr.has(flag::EXCLUDE_KERNEL) {
            return false;
        }
        match (&ev.filter, tracefs::format_for(&self.sched, id)) {
            (Some(f), Some(format)) => f.matches(format, raw),
            _ => true,
        }
    }

    fn sample_bytes(
        &self,
        ev: &Event,
        origin: &Origin,
        stack: &Stack,
        raw: Option<&[u8]>,
    ) -> Vec<u8> {
        let max_stack = (self.profile.honours_sample_max_stack && ev.attr.sample_max_stack > 0)
            .then_some(ev.attr.sample_max_stack);
        // Tracepoint samples are taken in the kernel; clock samples at the user leaf unless
        // the task was in the kernel.
        let ip = if raw.is_some() || stack.user.is_empty() {
            stack.kernel.first()
        } else {
            stack.user.first()
        };
        let body = SampleBody {
            ip: ip.copied().unwrap_or(0),
            period: if ev.attr.has(flag::FREQ) {
                1_000_000_000 / ev.attr.sample_period_or_freq.max(1)
            } else {
                ev.attr.sample_period_or_freq.max(1)
            },
            kernel: &stack.kernel,
            user: &stack.user,
            raw,
            count: 0,
            max_stack,
            user_regs: stack.user_regs,
            user_stack: &stack.user_stack,
        };
        encode::sample(&ev.attr, origin, &body)
    }

    fn each_event<'a>(
        &self,
        st: &mut State,
        step: &Step,
        task: &Task,
        make: impl Fn(&Event) -> Option<Rec<'a>>,
    ) {
        let tid = task.tid as i32;
        self.each_event_where(st, step, task, |ev| ev.pid == -1 || ev.pid == tid, make);
    }

    /// For every enabled event on the step's CPU accepted by `which`, build the record it
    /// sees with `make` (None: it does not see this step) and write it to its ring.
    fn each_event_where<'a>(
        &self,
        st: &mut State,
        step: &Step,
        current: &Task,
        which: impl Fn(&Event) -> bool,
        make: impl Fn(&Event) -> Option<Rec<'a>>,
    ) {
        let fds: Vec<RawFd> = st
            .events
            .iter()
            .filter(|(_, ev)| {
                ev.enabled && (ev.cpu == -1 || ev.cpu == step.cpu as i32) && which(ev)
            })
            .map(|(fd, _)| *fd)
            .collect();
        for fd in fds {
            let Some(ev) = st.events.get(&fd) else {
                continue;
            };
            let Some(rec) = make(ev) else { continue };
            let (pid, tid) = match &rec {
                Rec::Sample { task, .. } => (task.pid, task.tid),
                Rec::Side(_) => (current.pid, current.tid),
            };
            let origin = Origin {
                pid,
                tid,
                time: st.time_for(&ev.attr, step.at_ns),
                cpu: step.cpu,
                id: ev.id,
            };
            let (bytes, is_sample) = match rec {
                Rec::Sample { stack, raw, .. } => {
                    (self.sample_bytes(ev, &origin, stack, raw), true)
                }
                Rec::Side(f) => (f(&ev.attr, &origin), false),
            };
            if is_sample && ev.bpf {
                st.delivery.to_bpf += 1;
                continue;
            }
            st.write(fd, &bytes, &origin, is_sample);
        }
    }

    fn event_mut<'s>(st: &'s mut State, fd: BorrowedFd<'_>) -> Result<&'s mut Event, Errno> {
        let raw = fd.as_raw_fd();
        let ino = inode_of(raw).ok_or(Errno::EBADF)?;
        match st.events.get_mut(&raw) {
            Some(ev) if ev.ino == ino => Ok(ev),
            _ => Err(Errno::ENOTTY),
        }
    }

    fn do_ioctl(&self, st: &mut State, fd: BorrowedFd<'_>, op: &Ioctl<'_>) -> Result<u64, Errno> {
        ioctl_rules::check_ioctl(&self.profile, perf_ioctl(op))?;
        match op {
            Ioctl::Enable => {
                Self::event_mut(st, fd)?;
                if st.start.is_none() {
                    st.begin();
                }
                Self::event_mut(st, fd)?.enabled = true;
                Ok(0)
            }
            Ioctl::Disable => {
                // Whatever happened before the disable was recorded.
                let now = st.elapsed_ns();
                self.advance(st, now);
                Self::event_mut(st, fd)?.enabled = false;
                Ok(0)
            }
            Ioctl::Id => Ok(Self::event_mut(st, fd)?.id),
            Ioctl::SetOutput(out) => {
                let out_raw = out.as_raw_fd();
                let out_cpu = Self::event_mut(st, *out)?.cpu;
                let ev = Self::event_mut(st, fd)?;
                if ev.ring.is_some() {
                    return Err(Errno::EBUSY);
                }
                if out_raw == fd.as_raw_fd() || out_cpu != ev.cpu {
                    return Err(Errno::EINVAL);
                }
                ev.output = Some(out_raw);
                Ok(0)
            }
            Ioctl::SetFilter(text) => {
                let ev = Self::event_mut(st, fd)?;
                if ev.attr.type_ != event_type::TRACEPOINT {
                    return Err(Errno::EINVAL);
                }
                let format =
                    tracefs::format_for(&self.sched, ev.attr.config).ok_or(Errno::EINVAL)?;
                ev.filter = Some(Filter::parse(text, format).ok_or(Errno::EINVAL)?);
                Ok(0)
            }
            Ioctl::SetBpf(prog) => {
                if let BpfPolicy::Refuse(e) = st.bpf_policy {
                    return Err(e);
                }
                let prog_type = bpf_prog_type(prog.as_raw_fd()).ok_or(Errno::EBADF)?;
                let ev = Self::event_mut(st, fd)?;
                let wanted = if ev.attr.type_ == event_type::TRACEPOINT {
                    BPF_PROG_TYPE_TRACEPOINT
                } else {
                    BPF_PROG_TYPE_PERF_EVENT
                };
                if prog_type != wanted {
                    return Err(Errno::EINVAL);
                }
                ev.bpf = true;
                Ok(0)
            }
            Ioctl::PauseOutput(pause) => {
                let ev = Self::event_mut(st, fd)?;
                if ev.ring.is_none() {
                    return Err(Errno::EINVAL);
                }
                ev.paused = *pause;
                Ok(0)
            }
        }
    }

    /// poll(2) readiness of one fd (0 when it is not one of ours: POLLNVAL).
    fn revents(&self, st: &mut State, pfd: &libc::pollfd) -> i16 {
        let Some(ino) = inode_of(pfd.fd) else {
            return libc::POLLNVAL;
        };
        let Some(ev) = st.events.get_mut(&pfd.fd).filter(|e| e.ino == ino) else {
            return libc::POLLNVAL;
        };
        let mut r = 0;
        if ev.pid > 0 && task_gone(ev.pid) {
            r |= libc::POLLHUP;
        }
        if let Some(ring) = &ev.ring {
            let pending = ring.head().wrapping_sub(ring.tail());
            let by_count = !ev.attr.has(flag::WATERMARK) && ev.attr.wakeup > 0;
            let ready = if by_count {
                pending > 0 && ev.samples_since_wakeup >= u64::from(ev.attr.wakeup)
            } else {
                let mark = if ev.attr.has(flag::WATERMARK) && ev.attr.wakeup > 0 {
                    u64::from(ev.attr.wakeup)
                } else {
                    ring.data_size() / 2
                };
                pending >= mark.max(1)
            };
            if ready {
                ev.samples_since_wakeup = 0;
                r |= libc::POLLIN;
            }
        }
        r & (pfd.events | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL)
    }
}

/// The ioctl rules' name for one of perfring's ioctls.
fn perf_ioctl(op: &Ioctl<'_>) -> PerfIoctl {
    match op {
        Ioctl::Enable => PerfIoctl::Enable,
        Ioctl::Disable => PerfIoctl::Disable,
        Ioctl::SetOutput(_) => PerfIoctl::SetOutput,
        Ioctl::SetFilter(_) => PerfIoctl::SetFilter,
        Ioctl::Id => PerfIoctl::Id,
        Ioctl::SetBpf(_) => PerfIoctl::SetBpf,
        Ioctl::PauseOutput(_) => PerfIoctl::PauseOutput,
    }
}

/// Builds a side-band record from the event's attr and the record's origin.
type SideRecord<'a> = Box<dyn Fn(&RawAttr, &Origin) -> Vec<u8> + 'a>;

/// What one event sees of a step.
enum Rec<'a> {
    Sample {
        task: &'a Task,
        stack: &'a Stack,
        raw: Option<&'a [u8]>,
    },
    Side(SideRecord<'a>),
}

impl<'a> Rec<'a> {
    fn side(f: impl Fn(&RawAttr, &Origin) -> Vec<u8> + 'a) -> Rec<'a> {
        Rec::Side(Box::new(f))
    }
}

impl State {
    fn begin(&mut self) {
        self.start = Some(Instant::now());
        self.bases = [
            (-1, libc::CLOCK_MONOTONIC),
            (libc::CLOCK_REALTIME, libc::CLOCK_REALTIME),
            (libc::CLOCK_MONOTONIC, libc::CLOCK_MONOTONIC),
            (libc::CLOCK_MONOTONIC_RAW, libc::CLOCK_MONOTONIC_RAW),
            (libc::CLOCK_BOOTTIME, libc::CLOCK_BOOTTIME),
            (libc::CLOCK_TAI, libc::CLOCK_TAI),
        ]
        .iter()
        .map(|(id, clock)| (*id, clock_ns(*clock)))
        .collect();
    }

    fn elapsed_ns(&self) -> u64 {
        self.start.map_or(0, |s| {
            u64::try_from(s.elapsed().as_nanos()).unwrap_or(u64::MAX)
        })
    }

    /// A record's timestamp: perf's clock (monotonic here), or the event's clockid.
    fn time_for(&self, attr: &RawAttr, at_ns: u64) -> u64 {
        let clock = if attr.has(flag::USE_CLOCKID) {
            attr.clockid
        } else {
            -1
        };
        let base = self
            .bases
            .iter()
            .find(|(id, _)| *id == clock)
            .map_or(0, |(_, b)| *b);
        base.saturating_add(at_ns)
    }

    /// Writes a record into the ring `fd`'s output leads to (following SET_OUTPUT).
    fn write(&mut self, fd: RawFd, bytes: &[u8], origin: &Origin, is_sample: bool) {
        let mut owner = fd;
        for _ in 0..8 {
            match self.events.get(&owner).and_then(|e| e.output) {
                Some(next) => owner = next,
                None => break,
            }
        }
        if let Some(ev) = self.events.get_mut(&fd) {
            if is_sample {
                ev.samples_since_wakeup += 1;
            }
        }
        let Some(ev) = self.events.get_mut(&owner) else {
            return;
        };
        let (attr, id, paused) = (ev.attr, ev.id, ev.paused);
        // A redirect to an event without a ring (or before mmap) loses the record, as the
        // kernel's NULL rb does.
        let Some(ring) = ev.ring.as_mut() else {
            return;
        };
        if paused {
            self.delivery.paused += 1;
            return;
        }
        if is_sample && owner != fd {
            ev.samples_since_wakeup += 1;
        }
        ring.set_lost_record(id, encode::sample_id_trailer(&attr, origin));
        match ring.push_record(bytes) {
            PushOutcome::Written => {
                self.delivery.records += 1;
                if is_sample {
                    self.delivery.samples += 1;
                }
            }
            PushOutcome::Lost => self.delivery.lost += 1,
        }
    }
}

fn memfd() -> Result<OwnedFd, Errno> {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"psample-emulated-perf-event".as_ptr(), 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_read_value(fd: &OwnedFd, bytes: &[u8]) -> Result<(), Errno> {
    // SAFETY: writing our buffer at offset 0 of a memfd we own; the file offset that read()
    // uses is left at 0.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    if n < 0 || n as usize != bytes.len() {
        return Err(Errno::last());
    }
    Ok(())
}

impl Kernel for EmulatedKernel {
    fn perf_event_open(
        &self,
        attr: &mut RawAttr,
        pid: i32,
        cpu: i32,
        group_fd: Option<BorrowedFd<'_>>,
        flags: u64,
    ) -> Result<OwnedFd, Errno> {
        let mut st = self.lock();
        let tried = *attr;
        let result =
            attr_rules::check_open(&self.profile, attr, pid, cpu, flags, &self.sched.ids())
                .and_then(|accepted| {
                    if let Some(g) = group_fd {
                        Self::event_mut(&mut st, g).map_err(|_| Errno::EBADF)?;
                    }
                    let fd = memfd()?;
                    let ino = inode_of(fd.as_raw_fd()).ok_or(Errno::EBADF)?;
                    let id = st.next_id;
                    st.next_id += 1;
                    set_read_value(&fd, &encode::read_value(&accepted, 0, 0, id))?;
                    let enabled = !accepted.has(flag::DISABLED);
                    if enabled && st.start.is_none() {
                        st.begin();
                    }
                    st.events.insert(
                        fd.as_raw_fd(),
                        Event {
                            ino,
                            attr: accepted,
                            pid: if pid == 0 { gettid() } else { pid },
                            cpu,
                            id,
                            enabled,
                            output: None,
                            ring: None,
                            paused: false,
                            filter: None,
                            bpf: false,
                            samples_since_wakeup: 0,
                        },
                    );
                    Ok(fd)
                });
        st.opens.push(OpenAttempt {
            attr: tried,
            pid,
            cpu,
            flags,
            result: result.as_ref().map(|_| ()).map_err(|e| *e),
        });
        result
    }

    fn ioctl(&self, fd: BorrowedFd<'_>, op: Ioctl<'_>) -> Result<u64, Errno> {
        let mut st = self.lock();
        let name = perf_ioctl(&op).name();
        let result = self.do_ioctl(&mut st, fd, &op);
        st.ioctls.push(IoctlAttempt { name, result });
        result
    }

    fn mmap_ring(
        &self,
        fd: BorrowedFd<'_>,
        data_pages: usize,
    ) -> Result<Box<dyn RingMemory>, Errno> {
        let legacy = !self.profile.ring_data_offset;
        let mlock_kb = self.profile.sysctl_mlock_kb;
        let mut st = self.lock();
        let ev = Self::event_mut(&mut st, fd).map_err(|_| Errno::ENODEV)?;
        if data_pages == 0 || !data_pages.is_power_of_two() {
            return Err(Errno::EINVAL);
        }
        if ev.output.is_some() || ev.ring.is_some() {
            return Err(Errno::EINVAL);
        }
        // Inherited per-task events on any CPU cannot share one ring between CPUs.
        if ev.cpu == -1 && ev.attr.has(flag::INHERIT) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let kb = (data_pages as i64 + 1) * (PAGE_SIZE as i64 / 1024);
        if !root && kb > mlock_kb {
            return Err(Errno::EPERM);
        }
        let ring =
            HeapRing::with_layout(PAGE_SIZE, data_pages, legacy).map_err(|_| Errno::ENOMEM)?;
        let mem = ring.memory();
        ev.ring = Some(ring);
        Ok(mem)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let p = &self.profile;
        let sysctl = |v: Option<i64>| match v {
            Some(v) => Ok(format!("{v}\n").into_bytes()),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        match path.to_str() {
            Some("/proc/sys/kernel/perf_event_paranoid") => return sysctl(Some(p.sysctl_paranoid)),
            Some("/proc/sys/kernel/perf_event_max_sample_rate") => {
                return sysctl(Some(p.sysctl_max_sample_rate))
            }
            Some("/proc/sys/kernel/perf_event_mlock_kb") => return sysctl(Some(p.sysctl_mlock_kb)),
            Some("/proc/sys/kernel/perf_event_max_stack") => return sysctl(p.sysctl_max_stack),
            Some("/sys/devices/system/cpu/online") => {
                return Ok(format!("0-{}\n", NR_CPUS - 1).into_bytes())
            }
            _ => {}
        }
        let mounted = self.lock().debugfs_mounted;
        match tracefs::lookup(p, &self.sched, mounted, path) {
            TracingPath::NotTracing => std::fs::read(path),
            TracingPath::File(bytes) => Ok(bytes),
            TracingPath::Dir => Err(io::Error::from_raw_os_error(libc::EISDIR)),
            TracingPath::Missing => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn file_exists(&self, path: &Path) -> bool {
        let mounted = self.lock().debugfs_mounted;
        match tracefs::lookup(&self.profile, &self.sched, mounted, path) {
            TracingPath::NotTracing => path.exists(),
            TracingPath::Missing => false,
            TracingPath::Dir | TracingPath::File(_) => true,
        }
    }

    fn mount_tracefs(&self, target: &Path) -> io::Result<()> {
        let mut st = self.lock();
        match (self.profile.tracing, target.to_str()) {
            (TracingLayout::Tracefs, Some(tracefs::TRACEFS)) => Ok(()),
            (
                TracingLayout::Tracefs | TracingLayout::DebugfsOnly { .. },
                Some(tracefs::DEBUGFS),
            ) => {
                st.debugfs_mounted = true;
                Ok(())
            }
            // No tracefs in this kernel: the mount point does not exist.
            (TracingLayout::DebugfsOnly { .. }, Some(tracefs::TRACEFS)) => {
                Err(io::Error::from(io::ErrorKind::NotFound))
            }
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn page_size(&self) -> usize {
        PAGE_SIZE
    }

    /// Records are written only inside `poll`, by the reading thread itself.
    fn rings_fill_unpolled(&self) -> bool {
        false
    }

    /// Lets emulated time pass: steps fall due and are delivered while we wait, and the call
    /// returns as soon as a ring crosses its wakeup mark (or a task exits), or at timeout.
    fn poll(&self, fds: &mut [libc::pollfd], timeout_ms: i32) -> Result<usize, Errno> {
        let started = Instant::now();
        let timeout = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
        loop {
            let next_due = {
                let mut st = self.lock();
                let now = st.elapsed_ns();
                self.advance(&mut st, now);
                let mut ready = 0;
                for pfd in fds.iter_mut() {
                    pfd.revents = self.revents(&mut st, pfd);
                    if pfd.revents != 0 {
                        ready += 1;
                    }
                }
                if ready > 0 {
                    return Ok(ready);
                }
                let next = self.script.steps().get(st.cursor).map(|s| s.at_ns);
                match (st.start, next) {
                    (Some(_), Some(at)) => Some(Duration::from_nanos(at.saturating_sub(now))),
                    _ => None,
                }
            };
            let left = match timeout {
                Some(t) => match t.checked_sub(started.elapsed()) {
                    Some(l) if !l.is_zero() => l,
                    _ => return Ok(0),
                },
                None => Duration::from_millis(10),
            };
            let nap = next_due
                .unwrap_or(left)
                .min(left)
                .max(Duration::from_micros(200));
            std::thread::sleep(nap.min(Duration::from_millis(10)));
        }
    }
}

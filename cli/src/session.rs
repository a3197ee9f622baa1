//! Opening a session's events on the chosen target and running its read loop; shared by
//! `record` and `offcpu`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use perfring::event::{Session, SessionError};
use perfring::features::Feature;
use perfring::record::{parse_record, Record, SampleFormat};
use perfring::sys::{Errno, Kernel};

use symbolize::identity::ProcessIdentity;

use crate::error::CliError;
use crate::perms;
use crate::signals;
use crate::target::{self, Launched, Target};

/// How events are attached to the target.
pub struct Attach<'a> {
    pub session: &'a mut Session,
    /// Specs opened per thread (with inherit) for -p/-t/command, per CPU for -a.
    pub task_specs: &'a [usize],
    /// Specs always opened per CPU for every task (e.g. sched_wakeup for offcpu).
    pub cpu_specs: &'a [usize],
}

/// Open `task_specs` on every thread of the target (per CPU) and `cpu_specs` per CPU.
/// Threads that vanish while we attach are skipped; failing to open anything is an error.
pub fn attach(
    a: Attach<'_>,
    target: &Target,
    launched: Option<&Launched>,
) -> Result<Vec<u32>, CliError> {
    let kernel = a.session.kernel().clone();
    let cpus = kernel
        .online_cpus()
        .map_err(|e| CliError::new(format!("cannot list online CPUs: {e}")))?;
    let mut opened_tids: HashSet<u32> = HashSet::new();
    let mut pids: Vec<u32> = Vec::new();
    let open_thread = |session: &mut Session, tid: u32| -> Result<bool, CliError> {
        for &spec in a.task_specs {
            for &cpu in &cpus {
                match session.open(spec, tid as i32, cpu) {
                    Ok(()) => {}
                    Err(SessionError::Open(e)) if e.errno == Errno::ESRCH => return Ok(false),
                    Err(SessionError::Open(e)) => {
                        return Err(CliError::new(perms::explain_open(
                            kernel.as_ref(),
                            e.errno,
                            &format!("{} for thread {tid}", session.spec(spec).name),
                        )))
                    }
                    Err(e) => return Err(CliError::new(e.to_string())),
                }
            }
        }
        Ok(true)
    };
    match target {
        Target::AllCpus => {
            for &spec in a.task_specs.iter().chain(a.cpu_specs) {
                for &cpu in &cpus {
                    a.session
                        .open(spec, -1, cpu)
                        .map_err(|e| open_err(kernel.as_ref(), a.session, spec, e))?;
                }
            }
            return Ok(target::all_pids());
        }
        Target::Command(_) => {
            let pid = launched.map(|l| l.pid).unwrap_or(0);
            if !open_thread(a.session, pid)? {
                return Err(CliError::new(
                    "the launched command exited before it could be profiled",
                ));
            }
            pids.push(pid);
        }
        Target::Pids(list) => {
            for &pid in list {
                if !target::process_alive(pid) {
                    return Err(CliError::new(format!(
                        "no such process: {pid} (check the PID with `ps -p {pid}`)"
                    )));
                }
                // Threads may appear while we attach; rescan until no new ones show up.
                for _round in 0..4 {
                    let tids = target::threads_of(pid).unwrap_or_default();
                    let new: Vec<u32> = tids
                        .into_iter()
                        .filter(|t| !opened_tids.contains(t))
                        .collect();
                    if new.is_empty() {
                        break;
                    }
                    for tid in new {
                        if open_thread(a.session, tid)? {
                            opened_tids.insert(tid);
                        }
                    }
                }
                if !opened_tids.iter().any(|t| target::tgid_of(*t) == Some(pid))
                    && !target::process_alive(pid)
                {
                    return Err(CliError::new(format!(
                        "process {pid} exited during start-up"
                    )));
                }
                pids.push(pid);
            }
        }
        Target::Tids(list) => {
            for &tid in list {
                if !target::thread_alive(tid) || !open_thread(a.session, tid)? {
                    return Err(CliError::new(format!(
                        "no such thread: {tid} (list threads with `ls /proc/PID/task`)"
                    )));
                }
                if let Some(pid) = target::tgid_of(tid) {
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
            }
        }
    }
    for &spec in a.cpu_specs {
        for &cpu in &cpus {
            a.session
                .open(spec, -1, cpu)
                .map_err(|e| open_err(kernel.as_ref(), a.session, spec, e))?;
        }
    }
    if a.session.event_count() == 0 {
        return Err(CliError::new("no events could be opened for the target"));
    }
    Ok(pids)
}

fn open_err(kernel: &dyn Kernel, session: &Session, spec: usize, e: SessionError) -> CliError {
    match e {
        SessionError::Open(o) => CliError::new(perms::explain_open(
            kernel,
            o.errno,
            &format!("{} on CPU {}", session.spec(spec).name, o.cpu),
        )),
        other => CliError::new(other.to_string()),
    }
}

/// Why the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    Duration,
    Signal,
    TargetsExited,
}

impl StopCause {
    pub fn describe(self) -> &'static str {
        match self {
            StopCause::Duration => "duration reached",
            StopCause::Signal => "stopped by signal",
            StopCause::TargetsExited => "targets exited",
        }
    }
}

/// Most memory the background drainer may hold per ring byte, and in all.
const DRAIN_RINGS: usize = 16;
const DRAIN_MAX: usize = 256 << 20;

/// Let a background thread empty rings the reader leaves past half full (see
/// [`Session::drain_in_background`]): the first DWARF unwind in a large binary can hold the
/// reader for a second, longer than a default ring lasts. Bounded to [`DRAIN_RINGS`] times
/// the rings' size (at most [`DRAIN_MAX`]); beyond it the kernel drops and counts records.
pub fn drain_in_background(session: &mut Session, ring_pages: usize) -> Result<(), CliError> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let rings = ring_pages
        .saturating_mul(page)
        .saturating_mul(session.ring_count().max(1));
    let limit = rings.saturating_mul(DRAIN_RINGS).clamp(16 << 20, DRAIN_MAX);
    session
        .drain_in_background(limit)
        .map_err(|e| CliError::new(format!("cannot start the ring drainer thread: {e}")))
}

/// One record drained from a ring, kept until the batch is sorted by time.
struct Pending {
    time: u64,
    cpu: u32,
    start: usize,
    end: usize,
}

/// Drains rings in batches, sorts each batch by time across CPUs (so an MMAP on one CPU is
/// seen before a sample that hits it on another), and hands records to the consumer.
pub struct Reader {
    arena: Vec<u8>,
    pending: Vec<Pending>,
    pub parse_errors: u64,
    pub records: u64,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

impl Reader {
    pub fn new() -> Self {
        Reader {
            arena: Vec::new(),
            pending: Vec::new(),
            parse_errors: 0,
            records: 0,
        }
    }

    /// Drain every ring once and deliver the records in time order.
    pub fn pump(
        &mut self,
        session: &mut Session,
        fmt: &SampleFormat,
        mut consume: impl FnMut(u32, &Record<'_>),
    ) -> usize {
        self.arena.clear();
        self.pending.clear();
        let (arena, pending) = (&mut self.arena, &mut self.pending);
        let mut errors = 0u64;
        let n = session.drain(|cpu, bytes| {
            let time = match parse_record(bytes, fmt) {
                Ok(r) => record_time(&r),
                Err(_) => {
                    errors += 1;
                    return;
                }
            };
            let start = arena.len();
            arena.extend_from_slice(bytes);
            pending.push(Pending {
                time,
                cpu,
                start,
                end: arena.len(),
            });
        });
        self.parse_errors += errors;
        // Stable: records of one ring keep their order when times tie (or are absent).
        self.pending.sort_by_key(|p| p.time);
        for p in &self.pending {
            if let Ok(rec) = parse_record(&self.arena[p.start..p.end], fmt) {
                consume(p.cpu, &rec);
            }
        }
        self.records += n as u64;
        // Keep the arena's capacity bounded after a burst.
        if self.arena.capacity() > 64 << 20 {
            self.arena = Vec::new();
        }
        n
    }
}

/// The time of a record (0 when the kernel gave none, which keeps ring order).
pub fn record_time(r: &Record<'_>) -> u64 {
    let t = match r {
        Record::Sample(s) => s.time,
        Record::Mmap(m) => m.sample_id.time,
        Record::Comm(c) => c.sample_id.time,
        Record::Fork(f) | Record::Exit(f) => Some(f.time),
        Record::Lost(l) => l.sample_id.time,
        Record::LostSamples(l) => l.sample_id.time,
        Record::Throttle(t) | Record::Unthrottle(t) => Some(t.time),
        Record::Switch(s) => s.sample_id.time,
        Record::SwitchCpuWide(s) => s.sample_id.time,
        _ => None,
    };
    t.unwrap_or(0)
}

/// Stop conditions for the read loop.
///
/// Targets are followed by identity (pid and start time, [`ProcessIdentity`]): a PID reused by
/// another process right after the target exited is not the target, however quickly it came.
/// When every event reports POLLHUP (their tasks exited) the liveness check runs at once
/// instead of at the next 200 ms tick.
pub struct Stopper {
    start: Instant,
    duration: Option<Duration>,
    targets: Vec<Followed>,
    last_check: Instant,
    system_wide: bool,
    /// Every event reported POLLHUP at the last wait.
    hung_up: bool,
    /// Check the targets at the next [`Self::check`], whatever the time.
    check_now: bool,
}

/// A process or thread being profiled: its identity when /proc gave one.
struct Followed {
    id: u32,
    identity: Option<ProcessIdentity>,
}

impl Followed {
    fn new(id: u32) -> Followed {
        Followed {
            id,
            identity: ProcessIdentity::of(id),
        }
    }

    fn running(&self) -> bool {
        match self.identity {
            Some(i) => i.is_running(),
            None => target::process_alive(self.id),
        }
    }
}

impl Stopper {
    pub fn new(duration: Option<f64>, target: &Target, pids: &[u32]) -> Self {
        let ids: Vec<u32> = match target {
            Target::Tids(t) => t.clone(),
            Target::AllCpus => Vec::new(),
            _ => pids.to_vec(),
        };
        Stopper {
            start: Instant::now(),
            duration: duration.map(Duration::from_secs_f64),
            targets: ids.into_iter().map(Followed::new).collect(),
            last_check: Instant::now(),
            system_wide: matches!(target, Target::AllCpus),
            hung_up: false,
            check_now: false,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Milliseconds to wait in poll before the next check.
    pub fn poll_timeout_ms(&self) -> i32 {
        match self.duration {
            Some(d) => {
                let left = d.saturating_sub(self.start.elapsed());
                left.as_millis().clamp(1, 100) as i32
            }
            None => 100,
        }
    }

    /// What [`Session::wait`] said about POLLHUP. Every event hung up means its task exited;
    /// but only ring owners are polled, so the targets are checked before stopping, and a
    /// poll that keeps returning at once (an owner thread exited, others run on) is paced.
    pub fn after_wait(&mut self, all_hung_up: bool) {
        if all_hung_up && self.hung_up {
            std::thread::sleep(Duration::from_millis(self.poll_timeout_ms() as u64));
        } else if all_hung_up {
            self.check_now = true;
        }
        self.hung_up = all_hung_up;
    }

    pub fn check(&mut self, launched: Option<&Launched>) -> Option<StopCause> {
        if signals::stop_requested() {
            return Some(StopCause::Signal);
        }
        if self.duration.is_some_and(|d| self.start.elapsed() >= d) {
            return Some(StopCause::Duration);
        }
        if let Some(l) = launched {
            if l.try_wait().is_some() {
                return Some(StopCause::TargetsExited);
            }
            return None;
        }
        let now = std::mem::take(&mut self.check_now);
        if self.system_wide || (!now && self.last_check.elapsed() < Duration::from_millis(200)) {
            return None;
        }
        self.last_check = Instant::now();
        let any_alive = self.targets.iter().any(Followed::running);
        (!any_alive).then_some(StopCause::TargetsExited)
    }
}

/// Human-readable list of the fallbacks the ladder took.
pub fn fallbacks(session: &Session) -> Vec<String> {
    let mut v: Vec<String> = session
        .ladder
        .fallbacks()
        .into_iter()
        .map(|f: Feature| format!("no {} → {}", f.name(), f.fallback()))
        .collect();
    v.extend(session.notes.iter().cloned());
    v
}

/// The kernel, shared by everything in a run.
pub fn linux_kernel() -> Arc<dyn Kernel> {
    Arc::new(perfring::sys::LinuxKernel)
}

/// A DWARF sample carries its copy of the user stack, and the kernel cannot write a record
/// larger than the ring: every sample would be dropped, without even a LOST record. Refuse
/// that combination of `--mmap-pages` and `--call-graph dwarf,SIZE` before sampling.
pub fn check_ring_fits(pages: usize, mode: crate::args::CallGraph) -> Result<(), CliError> {
    let crate::args::CallGraph::Dwarf(stack) = mode else {
        return Ok(());
    };
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let ring = pages.saturating_mul(page);
    // Stack copy plus header, registers and a kernel callchain of up to 127 frames.
    let sample = stack as usize + 2048;
    if ring < sample {
        let need = sample.div_ceil(page).next_power_of_two();
        return Err(CliError::new(format!(
            "--mmap-pages {pages} gives a {ring}-byte ring, smaller than one DWARF sample \
             (~{sample} bytes with {stack} bytes of stack): use --mmap-pages {need} or more, \
             or a smaller --call-graph dwarf,SIZE"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod ring_fit_tests {
    use super::*;
    use crate::args::CallGraph;

    #[test]
    fn dwarf_samples_must_fit_the_ring() {
        assert!(check_ring_fits(1, CallGraph::Fp).is_ok());
        assert!(check_ring_fits(1, CallGraph::Dwarf(1024)).is_ok());
        let err = check_ring_fits(1, CallGraph::Dwarf(8192)).unwrap_err();
        assert!(err.message.contains("--mmap-pages 4"), "{err}");
        assert!(check_ring_fits(4, CallGraph::Dwarf(8192)).is_ok());
        assert!(check_ring_fits(512, CallGraph::Dwarf(65528)).is_ok());
    }
}

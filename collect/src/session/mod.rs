//! Opening a session's events on the chosen target and running its read loop; shared by
//! `record` and `offcpu`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use perfring::event::{Session, SessionError};
use perfring::features::Feature;
use perfring::sys::{Errno, Kernel};

use crate::output::Format;
use crate::perms;
use crate::stack::StackMode;
use crate::target::{self, Launched, Target};
use crate::Error;

pub mod signals;
pub mod summary;

pub use summary::Summary;

/// What every profiling session takes besides the command's own options.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// What to profile.
    pub target: crate::target::TargetSpec,
    /// One profile per interval instead of one at the end.
    pub continuous: Option<crate::continuous::ContinuousOptions>,
    /// Stop after this long (`None`: on a signal, or when the targets exit).
    pub duration: Option<Duration>,
    /// Where the profile goes (`None`: stdout). Not used in continuous mode.
    pub output: Option<std::path::PathBuf>,
    /// The output format; `None`: what the output file name says.
    pub format: Option<Format>,
    /// More in the summary: every kernel feature, table sizes, the BPF verifier log.
    pub verbose: bool,
    /// Data pages per CPU ring (`None`: the command's default for the stack mode).
    pub mmap_pages: Option<usize>,
    /// How user stacks are collected.
    pub stack: StackMode,
    /// A command launched under sudo keeps root instead of running as the invoking user.
    pub keep_root: bool,
    /// How frames are named after collection.
    pub symbols: symbolize::SymbolizeOptions,
}

/// What the caller sees of a run while it goes: a progress counter, the summary of each
/// session, and notices (waiting for a target to come back). The command line prints them;
/// tests and other programs may ignore them.
pub trait Observer {
    /// Events collected so far in this session (samples, switch-outs), several times a second.
    fn progress(&mut self, _count: u64) {}
    /// The session stopped reading; the progress display can go.
    fn progress_done(&mut self) {}
    /// A session ended: what it collected, lost and fell back on.
    fn summary(&mut self, _summary: &Summary) {}
    /// Something the user should know while a long run goes on.
    fn notice(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {}

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
) -> Result<Vec<u32>, Error> {
    let kernel = a.session.kernel().clone();
    let cpus = kernel
        .online_cpus()
        .map_err(|e| Error::new(format!("cannot list online CPUs: {e}")))?;
    let mut opened_tids: HashSet<u32> = HashSet::new();
    let mut pids: Vec<u32> = Vec::new();
    let open_thread = |session: &mut Session, tid: u32| -> Result<bool, Error> {
        for &spec in a.task_specs {
            for &cpu in &cpus {
                match session.open(spec, tid as i32, cpu) {
                    Ok(()) => {}
                    Err(SessionError::Open(e)) if e.errno == Errno::ESRCH => return Ok(false),
                    Err(SessionError::Open(e)) => {
                        return Err(Error::new(perms::explain_open(
                            kernel.as_ref(),
                            e.errno,
                            &format!("{} for thread {tid}", session.spec(spec).name),
                        )))
                    }
                    Err(e) => return Err(Error::new(e.to_string())),
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
                return Err(Error::new(
                    "the launched command exited before it could be profiled",
                ));
            }
            pids.push(pid);
        }
        Target::Pids(list) => {
            for &pid in list {
                if !target::process_alive(pid) {
                    return Err(Error::new(format!(
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
                    return Err(Error::new(format!("process {pid} exited during start-up")));
                }
                pids.push(pid);
            }
        }
        Target::Tids(list) => {
            for &tid in list {
                if !target::thread_alive(tid) || !open_thread(a.session, tid)? {
                    return Err(Error::new(format!(
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
        return Err(Error::new("no events could be opened for the target"));
    }
    Ok(pids)
}

fn open_err(kernel: &dyn Kernel, session: &Session, spec: usize, e: SessionError) -> Error {
    match e {
        SessionError::Open(o) => Error::new(perms::explain_open(
            kernel,
            o.errno,
            &format!("{} on CPU {}", session.spec(spec).name, o.cpu),
        )),
        other => Error::new(other.to_string()),
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

/// Stop conditions for the read loop.
pub struct Stopper {
    start: Instant,
    duration: Option<Duration>,
    pids: Vec<u32>,
    tids: Vec<u32>,
    last_check: Instant,
    system_wide: bool,
}

impl Stopper {
    pub fn new(duration: Option<Duration>, target: &Target, pids: &[u32]) -> Self {
        let (pids, tids) = match target {
            Target::Tids(t) => (Vec::new(), t.clone()),
            Target::AllCpus => (Vec::new(), Vec::new()),
            _ => (pids.to_vec(), Vec::new()),
        };
        Stopper {
            start: Instant::now(),
            duration,
            pids,
            tids,
            last_check: Instant::now(),
            system_wide: matches!(target, Target::AllCpus),
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
        if self.system_wide || self.last_check.elapsed() < Duration::from_millis(200) {
            return None;
        }
        self.last_check = Instant::now();
        let any_alive = self.pids.iter().any(|p| target::process_alive(*p))
            || self.tids.iter().any(|t| target::thread_alive(*t));
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
pub fn check_ring_fits(pages: usize, mode: StackMode) -> Result<(), Error> {
    let StackMode::Dwarf(stack) = mode else {
        return Ok(());
    };
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let ring = pages.saturating_mul(page);
    // Stack copy plus header, registers and a kernel callchain of up to 127 frames.
    let sample = stack as usize + 2048;
    if ring < sample {
        let need = sample.div_ceil(page).next_power_of_two();
        return Err(Error::new(format!(
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

    #[test]
    fn dwarf_samples_must_fit_the_ring() {
        assert!(check_ring_fits(1, StackMode::Fp).is_ok());
        assert!(check_ring_fits(1, StackMode::Dwarf(1024)).is_ok());
        let err = check_ring_fits(1, StackMode::Dwarf(8192)).unwrap_err();
        assert!(err.message.contains("--mmap-pages 4"), "{err}");
        assert!(check_ring_fits(4, StackMode::Dwarf(8192)).is_ok());
        assert!(check_ring_fits(512, StackMode::Dwarf(65528)).is_ok());
    }
}

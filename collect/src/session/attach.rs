//! Setting a session up: the output and ring size checked before anything is opened, the
//! command launched, the events opened on every thread of the target (or every CPU).

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use perfring::event::{Session, SessionError};
use perfring::sys::{Errno, Kernel};

use super::{signals, SessionOptions, Summary};
use crate::output::{self, Format};
use crate::perms;
use crate::stack::StackMode;
use crate::target::{self, Launched, Target};
use crate::Error;

/// A session whose options were checked and whose events are being defined: the command
/// adds its event specs to `session`, then calls [`Setup::attach`].
pub struct Setup<'a> {
    /// The session options.
    pub opts: &'a SessionOptions,
    /// What this session profiles.
    pub target: Target,
    /// The perf session the command adds its specs to.
    pub session: Session,
    /// The summary, for warnings and lines the command knows before sampling.
    pub summary: Summary,
    /// The output format.
    pub format: Format,
}

/// Ring sizes (data pages per CPU) a command uses when `--mmap-pages` is not given.
#[derive(Clone, Copy, Debug)]
pub struct DefaultPages {
    /// With frame-pointer stacks.
    pub fp: usize,
    /// With hybrid stacks (frame pointers and a small copy of the user stack).
    pub auto: usize,
    /// With DWARF stacks (each sample carries a copy of the user stack).
    pub dwarf: usize,
}

impl<'a> Setup<'a> {
    /// Check the output and the ring size, and create the perf session.
    pub fn new(
        command: &'static str,
        opts: &'a SessionOptions,
        target: Target,
        kernel: Arc<dyn Kernel>,
        pages: DefaultPages,
    ) -> Result<Setup<'a>, Error> {
        let format = Format::resolve(opts.format, opts.output.as_deref()).map_err(Error::new)?;
        if let Some(p) = &opts.output {
            output::check_writable(p).map_err(Error::new)?;
        }
        let pages = opts.mmap_pages.unwrap_or(match opts.stack {
            StackMode::Fp => pages.fp,
            StackMode::Auto(_) => pages.auto,
            StackMode::Dwarf(_) => pages.dwarf,
        });
        check_ring_fits(pages, opts.stack)?;
        let mut summary = Summary::new(command);
        summary.verbose = opts.verbose;
        Ok(Setup {
            opts,
            target,
            session: Session::new(kernel, pages),
            summary,
            format,
        })
    }

    /// Events open with inheritance to new threads (not for `-t`, not CPU-wide).
    pub fn inherit(&self) -> bool {
        self.target.inherits()
    }

    /// Whether the target is a command psample launches (events enabled at its exec).
    pub fn is_command(&self) -> bool {
        self.target.is_command()
    }

    /// Launch the command (held before exec), install the stop signals, and open
    /// `task_specs` on every thread of the target and `cpu_specs` on every CPU.
    pub fn attach(self, task_specs: &[usize], cpu_specs: &[usize]) -> Result<Attached<'a>, Error> {
        let Setup {
            opts,
            target,
            mut session,
            summary,
            format,
        } = self;
        let launched = match &target {
            Target::Command(argv) => Some(
                Launched::spawn(argv, target::sudo_user(opts.keep_root))
                    .map_err(|e| Error::new(format!("cannot start {:?}: {e}", argv[0])))?,
            ),
            _ => None,
        };
        signals::install();
        let a = Attach {
            session: &mut session,
            task_specs,
            cpu_specs,
        };
        let pids = attach(a, &target, launched.as_ref())?;
        Ok(Attached {
            opts,
            target,
            session,
            summary,
            format,
            pids,
            launched,
            cpu_wide: cpu_specs.to_vec(),
        })
    }
}

/// A session whose events are open on the target, not enabled yet; [`Attached::run`]
/// (in the driver) samples until it stops.
pub struct Attached<'a> {
    /// The session options.
    pub opts: &'a SessionOptions,
    /// What this session profiles.
    pub target: Target,
    /// The perf session, events open.
    pub session: Session,
    /// The summary so far.
    pub summary: Summary,
    /// The output format.
    pub format: Format,
    /// The target processes (every process for `-a`).
    pub pids: Vec<u32>,
    /// The launched command, held before exec until the events are enabled.
    pub launched: Option<Launched>,
    /// Specs open on every CPU for every task besides the target's own events (sched_wakeup,
    /// a CPU-wide switch-in source). With a launched command they cannot wait for its exec
    /// (enable_on_exec is per task), so the driver enables them as it starts the command;
    /// a command that opens one after attaching adds it here.
    pub cpu_wide: Vec<usize>,
}

/// How events are attached to the target.
pub struct Attach<'a> {
    /// The session to open the events in.
    pub session: &'a mut Session,
    /// Specs opened per thread (with inherit) for -p/-t/command, per CPU for -a.
    pub task_specs: &'a [usize],
    /// Specs always opened per CPU for every task (e.g. sched_wakeup for offcpu).
    pub cpu_specs: &'a [usize],
}

/// Open `task_specs` on every thread of the target (per CPU) and `cpu_specs` per CPU.
/// Threads that vanish while we attach are skipped; failing to open anything is an error.
/// Returns the target processes.
pub fn attach(
    a: Attach<'_>,
    target: &Target,
    launched: Option<&Launched>,
) -> Result<Vec<u32>, Error> {
    let cpus = a
        .session
        .kernel()
        .online_cpus()
        .map_err(|e| Error::new(format!("cannot list online CPUs: {e}")))?;
    let mut opener = Opener {
        session: a.session,
        task_specs: a.task_specs,
        cpus: &cpus,
    };
    let pids = match target {
        Target::AllCpus => {
            let all: Vec<usize> = a.task_specs.iter().chain(a.cpu_specs).copied().collect();
            opener.open_per_cpu(&all)?;
            return Ok(target::all_pids());
        }
        Target::Command(_) => {
            let pid = launched.map(|l| l.pid).unwrap_or(0);
            if !opener.open_thread(pid)? {
                return Err(Error::new(
                    "the launched command exited before it could be profiled",
                ));
            }
            vec![pid]
        }
        Target::Pids(list) => opener.open_processes(list)?,
        Target::Tids(list) => opener.open_threads(list)?,
        Target::Cgroup(dir) => opener.open_cgroup(dir)?,
    };
    opener.open_per_cpu(a.cpu_specs)?;
    if opener.session.event_count() == 0 {
        return Err(Error::new("no events could be opened for the target"));
    }
    Ok(pids)
}

/// Opens specs on threads or CPUs, explaining refusals.
struct Opener<'s> {
    session: &'s mut Session,
    task_specs: &'s [usize],
    cpus: &'s [u32],
}

impl Opener<'_> {
    /// Every task spec on `tid`, per CPU. `Ok(false)` when the thread is gone (ESRCH).
    fn open_thread(&mut self, tid: u32) -> Result<bool, Error> {
        for &spec in self.task_specs {
            for &cpu in self.cpus {
                match self.session.open(spec, tid as i32, cpu) {
                    Ok(()) => {}
                    Err(SessionError::Open(e)) if e.errno == Errno::ESRCH => return Ok(false),
                    Err(SessionError::Open(e)) => {
                        return Err(Error::new(perms::explain_open(
                            self.session.kernel().as_ref(),
                            e.errno,
                            &format!("{} for thread {tid}", self.session.spec(spec).name),
                        )))
                    }
                    Err(e) => return Err(Error::new(e.to_string())),
                }
            }
        }
        Ok(true)
    }

    /// `specs` on every CPU for every task.
    fn open_per_cpu(&mut self, specs: &[usize]) -> Result<(), Error> {
        for &spec in specs {
            for &cpu in self.cpus {
                self.session
                    .open(spec, -1, cpu)
                    .map_err(|e| open_err(self.session, spec, e))?;
            }
        }
        Ok(())
    }

    /// Every thread of every process in `list`, including threads that appear meanwhile.
    fn open_processes(&mut self, list: &[u32]) -> Result<Vec<u32>, Error> {
        let mut opened: HashSet<u32> = HashSet::new();
        for &pid in list {
            if !target::process_alive(pid) {
                return Err(Error::new(format!(
                    "no such process: {pid} (check the PID with `ps -p {pid}`)"
                )));
            }
            // Threads may appear while we attach; rescan until no new ones show up.
            for _round in 0..4 {
                let new: Vec<u32> = target::threads_of(pid)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| !opened.contains(t))
                    .collect();
                if new.is_empty() {
                    break;
                }
                for tid in new {
                    if self.open_thread(tid)? {
                        opened.insert(tid);
                    }
                }
            }
            if !opened.iter().any(|t| target::tgid_of(*t) == Some(pid))
                && !target::process_alive(pid)
            {
                return Err(Error::new(format!("process {pid} exited during start-up")));
            }
        }
        Ok(list.to_vec())
    }

    /// Every task spec on every CPU in perf_event's cgroup mode; where the kernel refuses
    /// it (a v1 hierarchy without the perf_event controller, a kernel without
    /// CONFIG_CGROUP_PERF), the processes in `cgroup.procs` now, per thread. Returns the
    /// processes in the group.
    fn open_cgroup(&mut self, dir: &Path) -> Result<Vec<u32>, Error> {
        let procs = target::cgroup_procs(dir)
            .map_err(|e| Error::new(format!("--cgroup: reading {}: {e}", dir.display())))?;
        let group = std::fs::File::open(dir)
            .map_err(|e| Error::new(format!("--cgroup: opening {}: {e}", dir.display())))?;
        let mut refused = None;
        'open: for &spec in self.task_specs {
            for &cpu in self.cpus {
                match self.session.open_cgroup(spec, group.as_fd(), cpu) {
                    Ok(()) => {}
                    Err(SessionError::Open(e)) if self.session.event_count() == 0 => {
                        refused = Some(e.errno);
                        break 'open;
                    }
                    Err(e) => return Err(open_err(self.session, spec, e)),
                }
            }
        }
        let Some(errno) = refused else {
            self.session.notes.push(format!(
                "--cgroup {}: perf_event cgroup mode on every CPU",
                dir.display()
            ));
            return Ok(procs);
        };
        if procs.is_empty() {
            return Err(Error::new(format!(
                "--cgroup {}: the kernel refused cgroup mode ({}) and the group has no \
                 process to profile instead",
                dir.display(),
                errno.desc()
            )));
        }
        self.session.notes.push(format!(
            "--cgroup {}: the kernel refused cgroup mode ({}); profiling the {} processes in \
             cgroup.procs at start (processes that join later are not)",
            dir.display(),
            errno.desc(),
            procs.len()
        ));
        self.open_processes(&procs)
    }

    /// Exactly these threads; returns their processes.
    fn open_threads(&mut self, list: &[u32]) -> Result<Vec<u32>, Error> {
        let mut pids = Vec::new();
        for &tid in list {
            if !target::thread_alive(tid) || !self.open_thread(tid)? {
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
        Ok(pids)
    }
}

/// A refusal to open `spec` CPU-wide, explained.
pub fn open_err(session: &Session, spec: usize, e: SessionError) -> Error {
    match e {
        SessionError::Open(o) => Error::new(perms::explain_open(
            session.kernel().as_ref(),
            o.errno,
            &format!("{} on CPU {}", session.spec(spec).name, o.cpu),
        )),
        other => Error::new(other.to_string()),
    }
}

/// A DWARF or hybrid sample carries its copy of the user stack, and the kernel cannot write
/// a record larger than the ring: every sample would be dropped, without even a LOST
/// record. Refuse that combination of `--mmap-pages` and `--call-graph MODE,SIZE` before
/// sampling.
pub fn check_ring_fits(pages: usize, mode: StackMode) -> Result<(), Error> {
    let Some(stack) = mode.stack_copy() else {
        return Ok(());
    };
    let dwarf = matches!(mode, StackMode::Dwarf(_));
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let ring = pages.saturating_mul(page);
    // Stack copy plus header, registers and a kernel callchain of up to 127 frames.
    let sample = stack as usize + 2048;
    if ring < sample {
        let need = sample.div_ceil(page).next_power_of_two();
        return Err(Error::new(format!(
            "--mmap-pages {pages} gives a {ring}-byte ring, smaller than one {kind} sample \
             (~{sample} bytes with {stack} bytes of stack): use --mmap-pages {need} or more, \
             or a smaller --call-graph {mode},SIZE",
            kind = if dwarf { "DWARF" } else { "hybrid" },
            mode = if dwarf { "dwarf" } else { "auto" }
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
        assert!(check_ring_fits(1, StackMode::DEFAULT).is_ok());
        let err = check_ring_fits(1, StackMode::Auto(8192)).unwrap_err();
        assert!(err.message.contains("--call-graph auto,SIZE"), "{err}");
    }
}

//! Opening sets of events and reading them through one ring per CPU.
//!
//! A [`Session`] holds every event of one recording. The first event opened on a CPU gets a
//! ring mapped; every later event on that CPU is redirected into it with
//! `PERF_EVENT_IOC_SET_OUTPUT`. That is the only layout that works for all targets: the
//! kernel refuses to map inherited per-task events opened with cpu = -1, and SET_OUTPUT only
//! joins events of the same CPU. So `-p PID` opens one event per (thread, CPU), `-a` one per
//! CPU, and each CPU's ring carries everything that happened there.
//!
//! All events in a session share one sample layout (sample_type, regs mask, sample_id_all)
//! with PERF_SAMPLE_ID, so a sample's event is identified by its id wherever it lands.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use crate::attr::{sample, RawAttr};
use crate::drain::{self, CpuRing, Drainer, RingSet, SharedRings};
use crate::features::{Feature, Ladder, OpenError, Support};
use crate::record::SampleFormat;
use crate::ring::{RingBuffer, RingStats};
use crate::sys::{open_flag, Errno, Ioctl, Kernel};

/// Errors from building or reading a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// perf_event_open refused, even after the ladder's fallbacks.
    #[error("{0}")]
    Open(#[from] OpenError),
    #[error("mapping the ring buffer for CPU {cpu} failed even at {pages} pages: {errno} ({}). \
             Raise the limit with `sysctl kernel.perf_event_mlock_kb=2048` or `ulimit -l`",
             errno.desc())]
    /// The ring could not be mapped, even shrunk.
    Mmap {
        /// The ring's CPU.
        cpu: u32,
        /// The smallest size tried, in data pages.
        pages: usize,
        /// Why.
        errno: Errno,
    },
    /// PERF_EVENT_IOC_SET_OUTPUT refused.
    #[error("redirecting an event into CPU {cpu}'s ring failed: {errno} ({})", errno.desc())]
    SetOutput {
        /// The ring's CPU.
        cpu: u32,
        /// Why.
        errno: Errno,
    },
    /// The mapped ring's header is unusable.
    #[error("the kernel's ring header for CPU {cpu} is invalid: {detail}")]
    Ring {
        /// The ring's CPU.
        cpu: u32,
        /// What is wrong.
        detail: String,
    },
    /// An event with a different record layout than the session's first.
    #[error("events in one session must share a sample layout (event {0} differs)")]
    MixedLayout(String),
    /// An ioctl on the events failed.
    #[error("ioctl {what} failed: {errno} ({})", errno.desc())]
    Ioctl {
        /// Which.
        what: &'static str,
        /// Why.
        errno: Errno,
    },
    /// poll(2) failed.
    #[error("poll failed: {0}")]
    Poll(Errno),
}

/// read_format bit: include the event id in read().
const READ_FORMAT_ID: u64 = 1 << 2;

/// One kind of event in the session (e.g. "cpu-clock", "sched:sched_switch").
#[derive(Debug, Clone)]
pub struct EventSpec {
    /// Its name, for messages.
    pub name: String,
    /// Its attr, as the ladder leaves it.
    pub attr: RawAttr,
}

#[derive(Debug)]
struct OpenEvent {
    fd: OwnedFd,
    spec: usize,
    cpu: u32,
    tid: Option<u32>,
}

/// All open events of one recording and their per-CPU rings.
pub struct Session {
    kernel: Arc<dyn Kernel>,
    /// What the kernel accepted and refused so far.
    pub ladder: Ladder,
    specs: Vec<EventSpec>,
    events: Vec<OpenEvent>,
    rings: SharedRings,
    /// Empties rings the reader has left past half full (see [`Session::drain_in_background`]).
    drainer: Option<Drainer>,
    ids: HashMap<u64, usize>,
    format: Option<SampleFormat>,
    ring_pages: usize,
    /// Notes on what was degraded while opening (ring shrunk, …).
    pub notes: Vec<String>,
}

impl Session {
    /// `ring_pages`: data pages per CPU ring (a power of two).
    pub fn new(kernel: Arc<dyn Kernel>, ring_pages: usize) -> Session {
        Session {
            kernel,
            ladder: Ladder::new(),
            specs: Vec::new(),
            events: Vec::new(),
            rings: Arc::new(Mutex::new(RingSet::default())),
            drainer: None,
            ids: HashMap::new(),
            format: None,
            ring_pages: ring_pages.max(1).next_power_of_two(),
            notes: Vec::new(),
        }
    }

    /// The kernel the session talks to.
    pub fn kernel(&self) -> &Arc<dyn Kernel> {
        &self.kernel
    }

    /// Register an event kind; PERF_SAMPLE_ID is added so samples can be told apart.
    pub fn add_spec(&mut self, name: &str, mut attr: RawAttr) -> usize {
        attr.sample_type |= sample::ID;
        // PERF_FORMAT_ID lets read() report the id on kernels without PERF_EVENT_IOC_ID.
        attr.read_format |= READ_FORMAT_ID;
        self.specs.push(EventSpec {
            name: name.to_string(),
            attr,
        });
        self.specs.len() - 1
    }

    /// The spec registered as `index`.
    pub fn spec(&self, index: usize) -> &EventSpec {
        &self.specs[index]
    }

    /// The record layout shared by every event (known after the first open).
    pub fn sample_format(&self) -> Option<SampleFormat> {
        self.format
    }

    /// Which spec produced a sample or record with this id.
    pub fn spec_for_id(&self, id: u64) -> Option<usize> {
        self.ids.get(&id).copied()
    }

    /// A copy of the id → spec table, for readers that cannot borrow the session while
    /// draining it.
    pub fn id_table(&self) -> HashMap<u64, usize> {
        self.ids.clone()
    }

    /// Events open.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// Rings mapped (one per CPU).
    pub fn ring_count(&self) -> usize {
        drain::lock(&self.rings).list.len()
    }

    /// The CPU of every ring, in the order [`Session::drain`] reads them.
    pub fn ring_cpus(&self) -> Vec<u32> {
        drain::lock(&self.rings)
            .list
            .iter()
            .map(|r| r.cpu)
            .collect()
    }

    /// Open `spec` for `pid`/`tid` (-1 for any task) on `cpu`, walking the ladder, and route it
    /// into that CPU's ring. Returns the errno-level error unchanged so callers can tell a
    /// vanished thread (ESRCH) from a real failure.
    pub fn open(&mut self, spec: usize, tid: i32, cpu: u32) -> Result<(), SessionError> {
        self.open_target(spec, tid, cpu, 0)?;
        Ok(())
    }

    /// Open `spec` on `cpu` for the tasks of the cgroup whose directory `cgroup` is open
    /// (perf's `-G`: `PERF_FLAG_PID_CGROUP`, since 2.6.39; the kernel refuses a cgroup
    /// without the perf_event controller, and cgroup v2 always has it).
    pub fn open_cgroup(
        &mut self,
        spec: usize,
        cgroup: BorrowedFd<'_>,
        cpu: u32,
    ) -> Result<(), SessionError> {
        self.open_target(spec, cgroup.as_raw_fd(), cpu, open_flag::PID_CGROUP)
    }

    fn open_target(
        &mut self,
        spec: usize,
        tid: i32,
        cpu: u32,
        flags: u64,
    ) -> Result<(), SessionError> {
        let wanted = self.specs[spec].attr;
        let (fd, accepted) = self.ladder.open_with_flags(
            self.kernel.as_ref(),
            &wanted,
            tid,
            cpu as i32,
            None,
            flags,
        )?;
        let tid = if flags & open_flag::PID_CGROUP != 0 {
            -1
        } else {
            tid
        };
        let fmt = accepted.sample_format();
        match self.format {
            None => self.format = Some(fmt),
            Some(f)
                if f.sample_type == fmt.sample_type
                    && f.regs_user_mask == fmt.regs_user_mask
                    && f.sample_id_all == fmt.sample_id_all => {}
            Some(_) => return Err(SessionError::MixedLayout(self.specs[spec].name.clone())),
        }
        // Later opens of the same spec start from what the kernel accepted.
        self.specs[spec].attr = accepted;
        let id = self.event_id(&fd)?;
        self.ids.insert(id, spec);
        let index = self.events.len();
        self.events.push(OpenEvent {
            fd,
            spec,
            cpu,
            tid: (tid >= 0).then_some(tid as u32),
        });
        self.route(index)
    }

    fn event_id(&mut self, fd: &OwnedFd) -> Result<u64, SessionError> {
        if self.ladder.support(Feature::IocId) != Support::No {
            match self.kernel.ioctl(fd.as_fd(), Ioctl::Id) {
                Ok(id) => {
                    self.ladder.set_support(Feature::IocId, Support::Yes);
                    return Ok(id);
                }
                Err(Errno::ENOTTY | Errno::EINVAL) => {
                    self.ladder.set_support(Feature::IocId, Support::No);
                }
                Err(errno) => return Err(SessionError::Ioctl { what: "ID", errno }),
            }
        }
        // Before 3.12: read() returns {value, id} when read_format has PERF_FORMAT_ID.
        // Sessions set read_format ID on every attr for this reason.
        let mut buf = [0u8; 16];
        // SAFETY: reading into a local buffer from an fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 16 {
            Ok(u64::from_ne_bytes(buf[8..16].try_into().unwrap_or([0; 8])))
        } else {
            Err(SessionError::Ioctl {
                what: "ID (read fallback)",
                errno: Errno::last(),
            })
        }
    }

    fn route(&mut self, index: usize) -> Result<(), SessionError> {
        let cpu = self.events[index].cpu;
        let owner = drain::lock(&self.rings)
            .list
            .iter()
            .find(|r| r.cpu == cpu)
            .map(|r| r.owner);
        if let Some(owner) = owner {
            let owner = self.events[owner].fd.as_fd();
            return self
                .kernel
                .ioctl(self.events[index].fd.as_fd(), Ioctl::SetOutput(owner))
                .map(|_| ())
                .map_err(|errno| SessionError::SetOutput { cpu, errno });
        }
        // First event on this CPU: map its ring, halving on mlock-limit refusals.
        let mut pages = self.ring_pages;
        let mut mem = loop {
            match self.kernel.mmap_ring(self.events[index].fd.as_fd(), pages) {
                Ok(mem) => break mem,
                Err(Errno::EPERM | Errno::ENOMEM) if pages > 1 => pages /= 2,
                Err(errno) => return Err(SessionError::Mmap { cpu, pages, errno }),
            }
        };
        if pages < self.ring_pages {
            // The mlock budget (perf_event_mlock_kb, then RLIMIT_MEMLOCK) is per user and
            // shared by all CPUs' rings: the first ring to hit it would take nearly all of
            // it and leave not even one page for the last CPUs. Split what fitted between
            // this CPU and the CPUs still to be mapped.
            let mapped: Vec<u32> = drain::lock(&self.rings)
                .list
                .iter()
                .map(|r| r.cpu)
                .collect();
            let to_map = self
                .kernel
                .online_cpus()
                .map(|cpus| cpus.iter().filter(|c| !mapped.contains(c)).count())
                .unwrap_or(1)
                .max(1);
            let share = (pages / to_map.next_power_of_two()).max(1);
            if share < pages {
                drop(mem);
                pages = share;
                mem = self
                    .kernel
                    .mmap_ring(self.events[index].fd.as_fd(), pages)
                    .map_err(|errno| SessionError::Mmap { cpu, pages, errno })?;
            }
            self.notes.push(format!(
                "ring for CPU {cpu} shrunk to {pages} pages (mlock limit); raise \
                 kernel.perf_event_mlock_kb to avoid lost records"
            ));
            // Use the size that worked for the other CPUs too.
            self.ring_pages = pages;
        }
        let ring = RingBuffer::new(mem).map_err(|e| SessionError::Ring {
            cpu,
            detail: e.to_string(),
        })?;
        if ring.used_header_fallback() {
            self.ladder
                .set_support(Feature::RingDataOffset, Support::No);
        } else if self.ladder.support(Feature::RingDataOffset) == Support::Unknown {
            self.ladder
                .set_support(Feature::RingDataOffset, Support::Yes);
        }
        drain::lock(&self.rings)
            .list
            .push(CpuRing::new(cpu, ring, index));
        Ok(())
    }

    /// Enable every event (they are opened disabled unless enable_on_exec is used).
    pub fn enable(&self) -> Result<(), SessionError> {
        self.enable_where(|_| true)
    }

    /// Enable the events of one spec (e.g. CPU-wide events beside per-task ones that wait
    /// for enable_on_exec).
    pub fn enable_spec(&self, spec: usize) -> Result<(), SessionError> {
        self.enable_where(|e| e.spec == spec)
    }

    fn enable_where(&self, which: impl Fn(&OpenEvent) -> bool) -> Result<(), SessionError> {
        for e in self.events.iter().filter(|e| which(e)) {
            self.kernel
                .ioctl(e.fd.as_fd(), Ioctl::Enable)
                .map_err(|errno| SessionError::Ioctl {
                    what: "ENABLE",
                    errno,
                })?;
        }
        Ok(())
    }

    /// Disable every event, so a final drain sees a stable ring.
    pub fn disable(&self) {
        for e in &self.events {
            let _ = self.kernel.ioctl(e.fd.as_fd(), Ioctl::Disable);
        }
    }

    /// Install an ftrace filter on every open event of `spec`.
    pub fn set_filter(&self, spec: usize, filter: &str) -> Result<(), SessionError> {
        for e in self.events.iter().filter(|e| e.spec == spec) {
            self.kernel
                .ioctl(e.fd.as_fd(), Ioctl::SetFilter(filter))
                .map_err(|errno| SessionError::Ioctl {
                    what: "SET_FILTER",
                    errno,
                })?;
        }
        Ok(())
    }

    /// File descriptors of one spec's events (e.g. to attach a BPF program).
    pub fn fds_of(&self, spec: usize) -> impl Iterator<Item = std::os::fd::BorrowedFd<'_>> {
        self.events
            .iter()
            .filter(move |e| e.spec == spec)
            .map(|e| e.fd.as_fd())
    }

    /// The kernel's counters of `spec`'s events per CPU (summed over a CPU's events), or
    /// None when a counter cannot be read. With a sample period of 1 a counter minus the
    /// samples that arrived is what the kernel counted but never wrote.
    pub fn counters_of(&self, spec: usize) -> Option<Vec<(u32, u64)>> {
        let mut per_cpu: Vec<(u32, u64)> = Vec::new();
        for e in self.events.iter().filter(|e| e.spec == spec) {
            let n = self.kernel.read_counter(e.fd.as_fd()).ok()?;
            match per_cpu.iter_mut().find(|(cpu, _)| *cpu == e.cpu) {
                Some((_, sum)) => *sum = sum.saturating_add(n),
                None => per_cpu.push((e.cpu, n)),
            }
        }
        Some(per_cpu)
    }

    /// Threads that have an event of `spec` open.
    pub fn threads_of(&self, spec: usize) -> impl Iterator<Item = u32> + '_ {
        self.events
            .iter()
            .filter(move |e| e.spec == spec)
            .filter_map(|e| e.tid)
    }

    /// Wait until a ring has data or `timeout_ms` passes. Returns whether any ring has data,
    /// and whether every ring's event reported POLLHUP (all targets gone).
    pub fn wait(&self, timeout_ms: i32) -> Result<(bool, bool), SessionError> {
        let mut fds: Vec<libc::pollfd> = drain::lock(&self.rings)
            .list
            .iter()
            .map(|r| libc::pollfd {
                fd: self.events[r.owner].fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            return Ok((false, true));
        }
        match self.kernel.poll(&mut fds, timeout_ms) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok((false, false)),
            Err(e) => return Err(SessionError::Poll(e)),
        }
        let hup = fds.iter().all(|p| p.revents & libc::POLLHUP != 0);
        let data = drain::lock(&self.rings).has_data();
        Ok((data, hup))
    }

    /// Hand every pending record of every ring to `f(cpu, bytes)`, in each ring's order
    /// (records the background drainer took out first). Returns records read.
    pub fn drain(&mut self, f: impl FnMut(u32, &[u8])) -> usize {
        drain::lock(&self.rings).drain(f)
    }

    /// As [`Session::drain`], but the background drainer's copies of a ring come as one
    /// chunk, by value, for a reader that keeps records anyway (the ordered reader).
    pub(crate) fn take(&mut self, f: impl FnMut(u32, drain::Taken<'_>)) -> usize {
        drain::lock(&self.rings).take(f)
    }

    /// The reader still holds `bytes` of records it took out of the rings: the background
    /// drainer's limit counts them (see [`Session::drain_in_background`]).
    pub(crate) fn reader_holds(&self, bytes: usize) {
        drain::lock(&self.rings).reader_held(bytes);
    }

    /// From now on, a background thread copies out every record of a ring the reader has
    /// left past half full, so a reader held up by slow work (the first DWARF unwind in a
    /// large binary) loses nothing. What is held outside the rings — the copies and what the
    /// ordered reader still holds — stays under `limit_bytes`. Does nothing on kernels whose
    /// rings fill only while they are polled (emulated ones).
    pub fn drain_in_background(&mut self, limit_bytes: usize) -> Result<(), std::io::Error> {
        if self.drainer.is_none() && self.kernel.rings_fill_unpolled() {
            self.drainer = Some(Drainer::start(self.rings.clone(), limit_bytes)?);
        }
        Ok(())
    }

    /// Data bytes of every ring mapped, together (what the kernel can buffer before the
    /// reader or the drainer must step in).
    pub fn ring_bytes(&self) -> usize {
        drain::lock(&self.rings)
            .list
            .iter()
            .map(|r| r.ring.data_size() as usize)
            .sum()
    }

    /// Most bytes the background drainer held at once (0 when the reader kept up).
    pub fn drained_peak(&self) -> usize {
        drain::lock(&self.rings).spill_peak()
    }

    /// Lost-record accounting per CPU ring.
    pub fn ring_stats(&self) -> Vec<(u32, RingStats)> {
        drain::lock(&self.rings)
            .list
            .iter()
            .map(|r| (r.cpu, r.ring.stats()))
            .collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Stop the drainer before the rings and the events go.
        self.drainer.take();
    }
}

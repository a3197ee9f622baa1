//! The fallback ladder: learning which attr features this kernel accepts.
//!
//! psample opens events with the features it wants. When the kernel refuses, the errno says
//! what kind of refusal it was (E2BIG: attr too large for this kernel, which wrote its own size
//! back; EINVAL: an unknown bit; ENOENT/EOPNOTSUPP: no such hardware event; EACCES/EPERM:
//! not allowed). [`Ladder::open`] drops the newest feature that could explain the refusal,
//! retries, and remembers the answer for the rest of the run so the ladder is walked once,
//! not per event. Nothing here looks at the kernel version string.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use crate::attr::{flag, sample, size, EventKind, RawAttr};
use crate::sys::{open_flag, Errno, Kernel};

/// A capability that may be missing on older kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// PERF_FLAG_FD_CLOEXEC (3.14); fallback: fcntl(FD_CLOEXEC).
    Cloexec,
    /// attr.sample_id_all (2.6.38); fallback: no trailer on side-band records.
    SampleIdAll,
    /// attr.exclude_callchain_user (3.7); fallback: cut the callchain at PERF_CONTEXT_USER.
    ExcludeCallchainUser,
    /// PERF_SAMPLE_REGS_USER and PERF_SAMPLE_STACK_USER (3.7; a kernel built without
    /// perf_regs support refuses them on every version); fallback: the kernel's
    /// frame-pointer callchain alone.
    UserStackCopy,
    /// attr.mmap2 (3.16); fallback: MMAP records + /proc/PID/maps.
    Mmap2,
    /// attr.comm_exec (3.16); fallback: exec detected from COMM + a maps re-read.
    CommExec,
    /// attr.use_clockid (4.1); fallback: perf's default clock.
    UseClockid,
    /// attr.context_switch (4.3); fallback: CPU-wide sched_switch events and per-task
    /// syscall exits (see collect's offcpu::legacy).
    ContextSwitch,
    /// attr.sample_max_stack (4.8); fallback: the kernel's default depth (127).
    SampleMaxStack,
    /// precise_ip > 0 (PEBS/IBS); fallback: lower it.
    PreciseIp,
    /// Hardware PMU events; fallback: cpu-clock.
    Hardware,
    /// Kernel-mode samples for unprivileged users; fallback: exclude_kernel (user stacks only).
    KernelSamples,
    /// PERF_EVENT_IOC_ID (3.12); fallback: read() with PERF_FORMAT_ID.
    IocId,
    /// data_offset/data_size in the ring header (4.1); fallback: data at one page.
    RingDataOffset,
}

impl Feature {
    /// Every feature, in probe order.
    pub const ALL: [Feature; 14] = [
        Feature::Cloexec,
        Feature::SampleIdAll,
        Feature::ExcludeCallchainUser,
        Feature::UserStackCopy,
        Feature::Mmap2,
        Feature::CommExec,
        Feature::UseClockid,
        Feature::ContextSwitch,
        Feature::SampleMaxStack,
        Feature::PreciseIp,
        Feature::Hardware,
        Feature::KernelSamples,
        Feature::IocId,
        Feature::RingDataOffset,
    ];

    /// Attr features that an EINVAL may stand for, newest first: on an EINVAL we drop the
    /// newest one still present and untested, as perf does.
    /// The stack copy, as old as exclude_callchain_user, goes first of the two: without it
    /// the kernel's user callchain is needed, which exclude_callchain_user would cut.
    const EINVAL_LADDER: [Feature; 9] = [
        Feature::SampleMaxStack,
        Feature::ContextSwitch,
        Feature::UseClockid,
        Feature::CommExec,
        Feature::Mmap2,
        Feature::Cloexec,
        Feature::UserStackCopy,
        Feature::ExcludeCallchainUser,
        Feature::SampleIdAll,
    ];

    /// Its name, as `psample check` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Cloexec => "PERF_FLAG_FD_CLOEXEC",
            Feature::SampleIdAll => "sample_id_all",
            Feature::ExcludeCallchainUser => "exclude_callchain_user",
            Feature::UserStackCopy => "user regs/stack copy",
            Feature::Mmap2 => "mmap2",
            Feature::CommExec => "comm_exec",
            Feature::UseClockid => "use_clockid",
            Feature::ContextSwitch => "context_switch",
            Feature::SampleMaxStack => "sample_max_stack",
            Feature::PreciseIp => "precise_ip",
            Feature::Hardware => "hardware events",
            Feature::KernelSamples => "kernel samples",
            Feature::IocId => "PERF_EVENT_IOC_ID",
            Feature::RingDataOffset => "ring data_offset/data_size",
        }
    }

    /// What psample does instead when the feature is missing.
    pub fn fallback(self) -> &'static str {
        match self {
            Feature::Cloexec => "fcntl(FD_CLOEXEC) after open",
            Feature::SampleIdAll => "side-band records without sample_id trailer",
            Feature::ExcludeCallchainUser => "user callchain cut at PERF_CONTEXT_USER",
            Feature::UserStackCopy => "frame-pointer user stacks (no DWARF unwinding)",
            Feature::Mmap2 => "MMAP records + /proc/PID/maps",
            Feature::CommExec => "exec detected from COMM records",
            Feature::UseClockid => "kernel default perf clock",
            Feature::ContextSwitch => "CPU-wide sched_switch and syscall exits for switch-ins",
            Feature::SampleMaxStack => "kernel default callchain depth",
            Feature::PreciseIp => "non-precise sampling",
            Feature::Hardware => "cpu-clock software event",
            Feature::KernelSamples => "user-space samples only (exclude_kernel)",
            Feature::IocId => "event id via read() with PERF_FORMAT_ID",
            Feature::RingDataOffset => "ring data at fixed one-page offset",
        }
    }

    /// Attr features whose presence can be checked and removed.
    fn present_in(self, attr: &RawAttr, open_flags: u64) -> bool {
        match self {
            Feature::Cloexec => open_flags & open_flag::FD_CLOEXEC != 0,
            Feature::SampleIdAll => attr.has(flag::SAMPLE_ID_ALL),
            Feature::ExcludeCallchainUser => attr.has(flag::EXCLUDE_CALLCHAIN_USER),
            Feature::UserStackCopy => {
                attr.sample_type & (sample::REGS_USER | sample::STACK_USER) != 0
            }
            Feature::Mmap2 => attr.has(flag::MMAP2),
            Feature::CommExec => attr.has(flag::COMM_EXEC),
            Feature::UseClockid => attr.has(flag::USE_CLOCKID),
            Feature::ContextSwitch => attr.has(flag::CONTEXT_SWITCH),
            Feature::SampleMaxStack => attr.sample_max_stack != 0,
            Feature::PreciseIp => attr.precise_ip() > 0,
            Feature::Hardware => attr.type_ == crate::attr::event_type::HARDWARE,
            Feature::KernelSamples => {
                !attr.has(flag::EXCLUDE_KERNEL) && attr.type_ != crate::attr::event_type::TRACEPOINT
            }
            Feature::IocId | Feature::RingDataOffset => false,
        }
    }

    fn remove_from(self, attr: &mut RawAttr, open_flags: &mut u64) {
        match self {
            Feature::Cloexec => *open_flags &= !open_flag::FD_CLOEXEC,
            Feature::SampleIdAll => attr.set(flag::SAMPLE_ID_ALL, false),
            Feature::ExcludeCallchainUser => attr.set(flag::EXCLUDE_CALLCHAIN_USER, false),
            Feature::UserStackCopy => {
                attr.sample_type &= !(sample::REGS_USER | sample::STACK_USER);
                attr.sample_regs_user = 0;
                attr.sample_stack_user = 0;
                // The user stack now comes from the kernel's walk: let it make one.
                attr.set(flag::EXCLUDE_CALLCHAIN_USER, false);
            }
            Feature::Mmap2 => {
                attr.set(flag::MMAP2, false);
                attr.set(flag::MMAP, true);
            }
            Feature::CommExec => attr.set(flag::COMM_EXEC, false),
            Feature::UseClockid => {
                attr.set(flag::USE_CLOCKID, false);
                attr.clockid = 0;
            }
            Feature::ContextSwitch => attr.set(flag::CONTEXT_SWITCH, false),
            Feature::SampleMaxStack => attr.sample_max_stack = 0,
            Feature::PreciseIp => attr.set_precise_ip(attr.precise_ip().saturating_sub(1)),
            Feature::Hardware => {
                let (t, c) = EventKind::CpuClock.type_and_config();
                attr.type_ = t;
                attr.config = c;
            }
            Feature::KernelSamples => attr.set(flag::EXCLUDE_KERNEL, true),
            Feature::IocId | Feature::RingDataOffset => {}
        }
        attr.size = attr.minimal_size();
    }

    /// Byte offset where this feature lives in the attr, for E2BIG decisions.
    fn attr_end(self) -> Option<u32> {
        match self {
            Feature::SampleMaxStack => Some(110),
            Feature::UseClockid => Some(96),
            _ => None,
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What we know about one feature on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Support {
    /// Not tried yet.
    #[default]
    Unknown,
    /// Accepted.
    Yes,
    /// Refused: the fallback is used.
    No,
}

/// Why an open failed after the ladder was exhausted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError {
    /// The refusal.
    pub errno: Errno,
    /// The attr as last tried (boxed: it is large and errors travel far).
    pub attr: Box<RawAttr>,
    /// The task it was opened for (-1: any).
    pub pid: i32,
    /// The CPU (-1: any).
    pub cpu: i32,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "perf_event_open(type={}, config={}, pid={}, cpu={}) failed: {} ({})",
            self.attr.type_,
            self.attr.config,
            self.pid,
            self.cpu,
            self.errno.desc(),
            self.errno
        )
    }
}

impl std::error::Error for OpenError {}

/// The remembered answers of the fallback ladder for one run.
#[derive(Debug, Clone, Default)]
pub struct Ladder {
    status: [Support; Feature::ALL.len()],
    /// The attr size the kernel reported on E2BIG.
    pub kernel_attr_size: Option<u32>,
    /// Allow dropping to user-only samples on EACCES (off for root, where it means another problem).
    pub allow_user_only: bool,
}

fn index(f: Feature) -> usize {
    Feature::ALL.iter().position(|x| *x == f).unwrap_or(0)
}

impl Ladder {
    /// Nothing known yet.
    pub fn new() -> Self {
        Ladder {
            allow_user_only: true,
            ..Default::default()
        }
    }

    /// What is known of `f`.
    pub fn support(&self, f: Feature) -> Support {
        self.status[index(f)]
    }

    /// Record what was learned of `f`.
    pub fn set_support(&mut self, f: Feature, s: Support) {
        self.status[index(f)] = s;
    }

    /// Features found missing, in ladder order, for the summary.
    pub fn fallbacks(&self) -> Vec<Feature> {
        Feature::ALL
            .iter()
            .copied()
            .filter(|f| self.support(*f) == Support::No)
            .collect()
    }

    /// Remove from `attr` everything already known to be refused.
    pub fn apply_known(&self, attr: &mut RawAttr, open_flags: &mut u64) {
        for f in Feature::ALL {
            if self.support(f) == Support::No {
                while f.present_in(attr, *open_flags) {
                    f.remove_from(attr, open_flags);
                    if f != Feature::PreciseIp {
                        break;
                    }
                }
            }
        }
        if let Some(max) = self.kernel_attr_size {
            attr.size = attr.size.min(max.max(size::VER0));
        }
    }

    /// Open an event, walking the ladder on refusal. Returns the fd and the attr that the
    /// kernel accepted (callers must parse records with that attr's sample format).
    pub fn open(
        &mut self,
        kernel: &dyn Kernel,
        attr: &RawAttr,
        pid: i32,
        cpu: i32,
        group: Option<BorrowedFd<'_>>,
    ) -> Result<(OwnedFd, RawAttr), OpenError> {
        self.open_with_flags(kernel, attr, pid, cpu, group, 0)
    }

    /// [`Self::open`] with more `perf_event_open` flags (`PERF_FLAG_PID_CGROUP`: `pid` is
    /// then a cgroup directory's fd), kept on every rung of the ladder.
    pub fn open_with_flags(
        &mut self,
        kernel: &dyn Kernel,
        attr: &RawAttr,
        pid: i32,
        cpu: i32,
        group: Option<BorrowedFd<'_>>,
        extra_flags: u64,
    ) -> Result<(OwnedFd, RawAttr), OpenError> {
        let mut a = *attr;
        a.size = a.minimal_size();
        let mut flags = open_flag::FD_CLOEXEC | extra_flags;
        self.apply_known(&mut a, &mut flags);
        // Features dropped on this walk, confirmed missing only once an open succeeds.
        let mut tentative: Vec<Feature> = Vec::new();
        // Bounded: every retry removes something, and there are few things to remove.
        for _ in 0..32 {
            let mut tried = a;
            match kernel.perf_event_open(&mut tried, pid, cpu, group, flags) {
                Ok(fd) => {
                    if flags & open_flag::FD_CLOEXEC == 0 {
                        set_cloexec(&fd);
                    }
                    for f in tentative {
                        self.set_support(f, Support::No);
                    }
                    for f in Feature::EINVAL_LADDER
                        .iter()
                        .chain([Feature::Hardware, Feature::KernelSamples].iter())
                    {
                        if f.present_in(&a, flags) && self.support(*f) == Support::Unknown {
                            self.set_support(*f, Support::Yes);
                        }
                    }
                    return Ok((fd, a));
                }
                Err(Errno::E2BIG) => {
                    let ksize = tried.size;
                    if ksize < size::VER0 || ksize >= a.size {
                        return Err(self.fail(Errno::E2BIG, a, pid, cpu));
                    }
                    self.kernel_attr_size = Some(ksize);
                    for f in Feature::EINVAL_LADDER {
                        if f.attr_end().is_some_and(|end| end > ksize) && f.present_in(&a, flags) {
                            f.remove_from(&mut a, &mut flags);
                            self.set_support(f, Support::No);
                        }
                    }
                    if a.minimal_size() > ksize {
                        // Something we cannot do without lives past the kernel's struct.
                        return Err(self.fail(Errno::E2BIG, a, pid, cpu));
                    }
                    a.size = a.minimal_size();
                }
                Err(Errno::EINVAL) | Err(Errno::EOVERFLOW) => {
                    let next = Feature::EINVAL_LADDER.iter().copied().find(|f| {
                        f.present_in(&a, flags)
                            && self.support(*f) == Support::Unknown
                            && !tentative.contains(f)
                    });
                    match next {
                        Some(f) => {
                            f.remove_from(&mut a, &mut flags);
                            tentative.push(f);
                        }
                        None => return Err(self.fail(Errno::EINVAL, a, pid, cpu)),
                    }
                }
                Err(e @ (Errno::ENOENT | Errno::ENODEV | Errno::ENXIO | Errno::EOPNOTSUPP))
                    if Feature::PreciseIp.present_in(&a, flags)
                        || Feature::Hardware.present_in(&a, flags) =>
                {
                    let f = if Feature::PreciseIp.present_in(&a, flags) && e == Errno::EOPNOTSUPP {
                        Feature::PreciseIp
                    } else {
                        Feature::Hardware
                    };
                    f.remove_from(&mut a, &mut flags);
                    self.set_support(f, Support::No);
                }
                Err(Errno::EACCES | Errno::EPERM)
                    if self.allow_user_only && Feature::KernelSamples.present_in(&a, flags) =>
                {
                    Feature::KernelSamples.remove_from(&mut a, &mut flags);
                    self.set_support(Feature::KernelSamples, Support::No);
                }
                Err(e) => return Err(self.fail(e, a, pid, cpu)),
            }
        }
        Err(self.fail(Errno::EINVAL, a, pid, cpu))
    }

    fn fail(&self, errno: Errno, attr: RawAttr, pid: i32, cpu: i32) -> OpenError {
        OpenError {
            errno,
            attr: Box::new(attr),
            pid,
            cpu,
        }
    }
}

fn set_cloexec(fd: &OwnedFd) {
    // SAFETY: F_SETFD on an fd we own.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

//! How a kernel of one [`KernelProfile`] answers each intercepted call, decided with the
//! emulator's own rules ([`attr_rules`], [`ioctl_rules`]) and carried out on the real kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use perfring::attr::RawAttr;
use perfring::sys::{open_flag, Errno};

use super::listener::{Listener, Notification};
use super::remote::Remote;
use super::ring_header::HiddenHeaders;
use crate::attr_rules;
use crate::ioctl_rules::{self, PerfIoctl};
use crate::profile::KernelProfile;

/// Largest attr the kernel reads (the page-size limit of perf_copy_attr).
const MAX_ATTR: usize = 4096;

/// Lines kept in [`Tally::log`].
const LOG_LINES: usize = 200;

/// What the interposer did, for tests and for the person running it.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// perf_event_open calls passed to the real kernel unchanged.
    pub opens_passed: u64,
    /// Accepted calls whose attr the old kernel would store differently (fields it ignores):
    /// opened by the supervisor with that attr and the fd handed to the caller.
    pub opens_rewritten: u64,
    /// Refused perf_event_open calls, by errno.
    pub opens_refused: BTreeMap<String, u64>,
    /// Refused perf ioctls, by name.
    pub ioctls_refused: BTreeMap<&'static str, u64>,
    pub bpf_refused: u64,
    /// Ring mappings whose header's data_offset/data_size were cleared.
    pub headers_hidden: u64,
    /// Problems of the interposer itself (a caller's memory that could not be read, …).
    pub errors: Vec<String>,
    /// Every refusal and rewrite, in order (the first [`LOG_LINES`]).
    pub log: Vec<String>,
}

impl Tally {
    fn note(&mut self, line: String) {
        if self.log.len() < LOG_LINES {
            self.log.push(line);
        }
    }

    pub fn refused_opens(&self) -> u64 {
        self.opens_refused.values().sum()
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "perf_event_open: {} passed, {} rewritten, refused {:?}",
            self.opens_passed, self.opens_rewritten, self.opens_refused
        )?;
        writeln!(
            f,
            "ioctls refused {:?}; bpf refused {}; ring headers hidden {}",
            self.ioctls_refused, self.bpf_refused, self.headers_hidden
        )?;
        for e in &self.errors {
            writeln!(f, "interposer error: {e}")?;
        }
        for l in &self.log {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

/// The answer to one call.
enum Answer {
    /// Let the real kernel run it as made.
    Pass,
    Refuse(Errno),
    /// Open this attr (what the old kernel stores) for the caller and return the fd.
    OpenFor(Box<OpenFor>),
}

struct OpenFor {
    attr: RawAttr,
    pid: i32,
    cpu: i32,
    group_fd: i32,
    flags: u64,
}

/// Answers calls as the profile's kernel would.
pub struct Answerer {
    profile: KernelProfile,
    /// Real ids of the tracepoints the old kernel has.
    tracepoint_ids: Vec<u64>,
    nr_cpus: i32,
    headers: HiddenHeaders,
    pub tally: Tally,
}

impl Answerer {
    pub fn new(profile: KernelProfile, tracepoint_ids: Vec<u64>, nr_cpus: i32) -> Answerer {
        Answerer {
            profile,
            tracepoint_ids,
            nr_cpus,
            headers: HiddenHeaders::default(),
            tally: Tally::default(),
        }
    }

    pub fn holding_headers(&self) -> bool {
        self.headers.pending()
    }

    pub fn release_headers(&mut self) {
        self.headers.release_done();
    }

    /// Decide and send the answer to `n`.
    pub fn handle(&mut self, listener: &Listener, n: &Notification) -> std::io::Result<()> {
        let caller = Remote { tid: n.tid };
        let answer = match n.nr {
            libc::SYS_perf_event_open => self.perf_event_open(caller, n),
            libc::SYS_ioctl => self.ioctl(caller, n),
            libc::SYS_bpf => self.bpf(),
            libc::SYS_mmap => self.mmap(caller, n),
            _ => Answer::Pass,
        };
        // What we read may belong to a thread that died meanwhile (its id reused): answer
        // only calls still waiting.
        if !listener.still_valid(n.id) {
            return Ok(());
        }
        match answer {
            Answer::Pass => listener.allow(n.id),
            Answer::Refuse(e) => listener.fail(n.id, e),
            Answer::OpenFor(o) => match open_event(&o, n.tid) {
                Ok(fd) => listener.return_fd(n.id, &fd, o.flags & open_flag::FD_CLOEXEC != 0),
                Err(e) => listener.fail(n.id, e),
            },
        }
    }

    fn perf_event_open(&mut self, caller: Remote, n: &Notification) -> Answer {
        let [attr_ptr, pid, cpu, group_fd, flags, _] = n.args;
        let (pid, cpu, group_fd) = (pid as i32, cpu as i32, group_fd as i32);
        let given = match read_attr(caller, attr_ptr) {
            Ok(Some(a)) => a,
            // A non-zero tail beyond anything any kernel knows: E2BIG like check_open.
            Ok(None) => return self.e2big(caller, attr_ptr, "attr tail beyond 136 bytes"),
            Err(e) => {
                // The real kernel will answer EFAULT for memory we could not read either.
                self.tally
                    .errors
                    .push(format!("reading attr of {}: {e}", n.tid));
                return Answer::Pass;
            }
        };
        let mut judged = given;
        let verdict = attr_rules::check_open_on(
            &self.profile,
            &mut judged,
            pid,
            cpu,
            flags,
            &self.tracepoint_ids,
            self.nr_cpus,
        );
        let what = describe(&given, pid, cpu, flags);
        match verdict {
            Err(Errno::E2BIG) => self.e2big(caller, attr_ptr, &what),
            Err(e) => {
                *self.tally.opens_refused.entry(format!("{e}")).or_default() += 1;
                self.tally.note(format!("perf_event_open {what} → {e}"));
                Answer::Refuse(e)
            }
            Ok(stored) if stored == given => {
                self.tally.opens_passed += 1;
                Answer::Pass
            }
            Ok(stored) => {
                self.tally.opens_rewritten += 1;
                self.tally.note(format!(
                    "perf_event_open {what} → accepted, opened as stored (ignored fields cleared)"
                ));
                Answer::OpenFor(Box::new(OpenFor {
                    attr: stored,
                    pid,
                    cpu,
                    group_fd,
                    flags,
                }))
            }
        }
    }

    /// E2BIG, with the kernel's attr size written back into the caller's attr.
    fn e2big(&mut self, caller: Remote, attr_ptr: u64, what: &str) -> Answer {
        let size = self.profile.attr_size.to_ne_bytes();
        if let Err(e) = caller.write(attr_ptr + 4, &size) {
            self.tally
                .errors
                .push(format!("writing attr.size back: {e}"));
        }
        *self.tally.opens_refused.entry("E2BIG".into()).or_default() += 1;
        self.tally.note(format!(
            "perf_event_open {what} → E2BIG (size {})",
            self.profile.attr_size
        ));
        Answer::Refuse(Errno::E2BIG)
    }

    fn ioctl(&mut self, caller: Remote, n: &Notification) -> Answer {
        let (fd, request) = (n.args[0] as i32, n.args[1] as u32);
        let Some(which) = PerfIoctl::from_request(request) else {
            return Answer::Pass;
        };
        if !caller.is_perf_fd(fd) {
            return Answer::Pass;
        }
        match ioctl_rules::check_ioctl(&self.profile, which) {
            Ok(()) => Answer::Pass,
            Err(e) => {
                *self.tally.ioctls_refused.entry(which.name()).or_default() += 1;
                self.tally.note(format!("ioctl {} → {e}", which.name()));
                Answer::Refuse(e)
            }
        }
    }

    fn bpf(&mut self) -> Answer {
        match ioctl_rules::check_bpf_syscall(&self.profile) {
            Ok(()) => Answer::Pass,
            Err(e) => {
                self.tally.bpf_refused += 1;
                self.tally.note(format!("bpf → {e}"));
                Answer::Refuse(e)
            }
        }
    }

    fn mmap(&mut self, caller: Remote, n: &Notification) -> Answer {
        let [_, len, _, _, fd, offset] = n.args;
        let fd = fd as i32;
        if self.profile.ring_data_offset || offset != 0 || !caller.is_perf_fd(fd) {
            return Answer::Pass;
        }
        match self.headers.hide(caller, fd, len as usize) {
            Ok(()) => self.tally.headers_hidden += 1,
            // Let the real kernel answer; psample then sees the real header, which the test
            // notices (no data_offset fallback reported).
            Err(e) => self.tally.errors.push(format!("hiding a ring header: {e}")),
        }
        Answer::Pass
    }
}

/// The caller's attr (up to `size` bytes); None when bytes past our struct are non-zero.
fn read_attr(caller: Remote, ptr: u64) -> std::io::Result<Option<RawAttr>> {
    let head = caller.read(ptr, 8)?;
    let size = u32::from_ne_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let ours = std::mem::size_of::<RawAttr>();
    let want = if size == 0 {
        perfring::attr::size::VER0 as usize
    } else {
        size.min(MAX_ATTR)
    };
    let bytes = caller.read(ptr, want.min(ours))?;
    if want > ours
        && caller
            .read(ptr + ours as u64, want - ours)?
            .iter()
            .any(|b| *b != 0)
    {
        return Ok(None);
    }
    Ok(Some(attr_rules::attr_from_bytes(&bytes)))
}

fn describe(a: &RawAttr, pid: i32, cpu: i32, flags: u64) -> String {
    format!(
        "type={} config={} size={} flags={:#x} sample_type={:#x} pid={pid} cpu={cpu} open_flags={flags:#x}",
        a.type_, a.config, a.size, a.flags, a.sample_type
    )
}

/// Opens `o` in the supervisor on the caller's behalf (pid 0 meaning the caller).
fn open_event(o: &OpenFor, caller_tid: u32) -> Result<OwnedFd, Errno> {
    let pid = if o.pid == 0 { caller_tid as i32 } else { o.pid };
    let group = if o.group_fd >= 0 {
        Some(
            Remote { tid: caller_tid }
                .dup_fd(o.group_fd)
                .map_err(|_| Errno::EBADF)?,
        )
    } else {
        None
    };
    let mut attr = o.attr;
    // SAFETY: RawAttr has the kernel layout and outlives the call; the group fd (if any)
    // is open for the call.
    let fd = unsafe {
        perf_event_open_sys::perf_event_open(
            (&mut attr as *mut RawAttr).cast(),
            pid,
            o.cpu,
            group.as_ref().map_or(-1, |g| g.as_raw_fd()),
            (o.flags | open_flag::FD_CLOEXEC) as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

//! The supervised process as the supervisor sees it: its memory, its file descriptors, its
//! thread group. Everything read here is the target's and may change or vanish at any time:
//! failures are errors to report, never panics.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// What `readlink /proc/PID/fd/N` shows for a perf event fd.
const PERF_FD_LINK: &str = "anon_inode:[perf_event]";

/// One thread of the supervised tree, by its id in our pid namespace.
#[derive(Debug, Clone, Copy)]
pub struct Remote {
    pub tid: u32,
}

impl Remote {
    /// `len` bytes of the thread's memory at `addr` (through /proc/TID/mem, which needs the
    /// ptrace access a root supervisor has).
    pub fn read(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mem = File::open(format!("/proc/{}/mem", self.tid))?;
        let mut buf = vec![0u8; len];
        mem.read_exact_at(&mut buf, addr)?;
        Ok(buf)
    }

    /// Writes `bytes` into the thread's memory at `addr` (the kernel's own write-back of
    /// `attr.size` on E2BIG).
    pub fn write(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        let mem = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{}/mem", self.tid))?;
        mem.write_all_at(bytes, addr)
    }

    /// Whether the thread's fd `fd` is a perf event.
    pub fn is_perf_fd(&self, fd: i32) -> bool {
        fd >= 0
            && std::fs::read_link(format!("/proc/{}/fd/{fd}", self.tid))
                .is_ok_and(|l| l.as_os_str() == PERF_FD_LINK)
    }

    /// The thread group (process) id.
    pub fn tgid(&self) -> io::Result<u32> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.tid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("Tgid:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid in status"))
    }

    /// A duplicate of the thread's fd `fd`, open in the supervisor (pidfd_getfd, 5.6+).
    pub fn dup_fd(&self, fd: i32) -> io::Result<OwnedFd> {
        let tgid = self.tgid()?;
        // SAFETY: pidfd_open with a pid and no flags; the result is checked.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tgid as libc::pid_t, 0) };
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        // SAFETY: pidfd_getfd on the pidfd we own, for an fd number in that process.
        let got = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                fd,
                0,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
    }
}

/// Number of perf ring mappings in process `tgid` (None when it is gone).
pub fn perf_mappings(tgid: u32) -> Option<usize> {
    let maps = std::fs::read_to_string(format!("/proc/{tgid}/maps")).ok()?;
    Some(maps.lines().filter(|l| l.ends_with(PERF_FD_LINK)).count())
}

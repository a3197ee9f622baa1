//! The kernel behind a trait.
//!
//! Everything psample asks of the kernel for sampling goes through [`Kernel`]: opening perf
//! events, their ioctls, mapping their rings, and reading procfs/tracefs files. The real
//! implementation is [`LinuxKernel`]; compat-tests substitute emulated kernels of older
//! versions that validate attrs the way those kernels did.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

pub use nix::errno::Errno;

use crate::attr::RawAttr;
use crate::ring::RingMemory;

/// `perf_event_open` flags.
pub mod open_flag {
    /// PERF_FLAG_FD_NO_GROUP.
    pub const FD_NO_GROUP: u64 = 1 << 0;
    /// PERF_FLAG_FD_OUTPUT.
    pub const FD_OUTPUT: u64 = 1 << 1;
    /// PERF_FLAG_PID_CGROUP.
    pub const PID_CGROUP: u64 = 1 << 2;
    /// PERF_FLAG_FD_CLOEXEC (3.14).
    pub const FD_CLOEXEC: u64 = 1 << 3;
}

/// The perf ioctls psample uses.
#[derive(Debug)]
pub enum Ioctl<'a> {
    /// PERF_EVENT_IOC_ENABLE.
    Enable,
    /// PERF_EVENT_IOC_DISABLE.
    Disable,
    /// Redirect this event's records into `fd`'s ring (same CPU required).
    SetOutput(BorrowedFd<'a>),
    /// PERF_EVENT_IOC_SET_FILTER (tracepoint filter).
    SetFilter(&'a str),
    /// PERF_EVENT_IOC_ID (3.12+): the id that appears in samples.
    Id,
    /// PERF_EVENT_IOC_SET_BPF (4.1).
    SetBpf(BorrowedFd<'a>),
    /// PERF_EVENT_IOC_PAUSE_OUTPUT (4.7).
    PauseOutput(bool),
}

/// What psample needs from a kernel. Methods return the raw errno so the fallback ladder
/// can decide from it.
pub trait Kernel: Send + Sync {
    /// `perf_event_open(attr, pid, cpu, group_fd, flags)`. On E2BIG the kernel writes its
    /// own attr size into `attr.size`, as the real syscall does.
    fn perf_event_open(
        &self,
        attr: &mut RawAttr,
        pid: i32,
        cpu: i32,
        group_fd: Option<BorrowedFd<'_>>,
        flags: u64,
    ) -> Result<OwnedFd, Errno>;

    /// Returns the ioctl's non-negative result (the id for [`Ioctl::Id`]).
    fn ioctl(&self, fd: BorrowedFd<'_>, op: Ioctl<'_>) -> Result<u64, Errno>;

    /// Map a ring of one header page plus `data_pages` (a power of two) pages.
    fn mmap_ring(
        &self,
        fd: BorrowedFd<'_>,
        data_pages: usize,
    ) -> Result<Box<dyn RingMemory>, Errno>;

    /// Read a (small) file, e.g. in procfs or tracefs.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;

    /// Whether a path exists.
    fn file_exists(&self, path: &Path) -> bool;

    /// `mount -t tracefs nodev TARGET` (falls back to debugfs when tracefs is unknown).
    fn mount_tracefs(&self, target: &Path) -> io::Result<()>;

    /// The page size.
    fn page_size(&self) -> usize;

    /// poll(2) on event fds. Emulated kernels override it to produce the records that the
    /// elapsed time would have produced.
    fn poll(&self, fds: &mut [libc::pollfd], timeout_ms: i32) -> Result<usize, Errno> {
        // SAFETY: fds is a valid, exclusively borrowed array of pollfd.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            Err(Errno::last())
        } else {
            Ok(rc as usize)
        }
    }

    /// Whether the kernel writes into rings while nobody polls them (a real kernel does; an
    /// emulated one writes only inside [`Kernel::poll`], so background draining is moot).
    fn rings_fill_unpolled(&self) -> bool {
        true
    }

    /// Online CPU numbers (from /sys/devices/system/cpu/online).
    fn online_cpus(&self) -> io::Result<Vec<u32>> {
        let text = self.read_file(Path::new("/sys/devices/system/cpu/online"))?;
        parse_cpu_list(&String::from_utf8_lossy(&text)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "unparseable /sys/devices/system/cpu/online",
            )
        })
    }

    /// The event's counter, read(2)'s first value: how often it fired, whether or not
    /// its sample reached the ring. Emulated kernels keep no counter (ENOSYS).
    fn read_counter(&self, _fd: BorrowedFd<'_>) -> Result<u64, Errno> {
        Err(Errno::ENOSYS)
    }

    /// Read a small integer sysctl such as `kernel/perf_event_paranoid`.
    fn sysctl_i64(&self, name: &str) -> Option<i64> {
        let path = format!("/proc/sys/{name}");
        let text = self.read_file(Path::new(&path)).ok()?;
        String::from_utf8_lossy(&text).trim().parse().ok()
    }
}

/// Parse a kernel cpu list such as `0-3,5,7-8`.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a || b - a > 65536 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// The running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxKernel;

struct MmapRing {
    ptr: *mut u8,
    len: usize,
    page_size: usize,
}

// SAFETY: the mapping is owned exclusively by this value; the kernel side synchronises
// through the header page's head/tail words, which the ring reader accesses atomically.
unsafe impl Send for MmapRing {}

// SAFETY: ptr/len describe a live shared mapping of the perf fd until drop.
unsafe impl RingMemory for MmapRing {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn page_size(&self) -> usize {
        self.page_size
    }
}

impl Drop for MmapRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what mmap returned.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

fn errno_result(rc: libc::c_int) -> Result<u64, Errno> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc as u64)
    }
}

impl Kernel for LinuxKernel {
    fn perf_event_open(
        &self,
        attr: &mut RawAttr,
        pid: i32,
        cpu: i32,
        group_fd: Option<BorrowedFd<'_>>,
        flags: u64,
    ) -> Result<OwnedFd, Errno> {
        let group = group_fd.map_or(-1, |fd| fd.as_raw_fd());
        // SAFETY: RawAttr has the kernel layout (checked in attr.rs) and outlives the call;
        // the kernel reads `attr.size` bytes and may write `size` back on E2BIG.
        let fd = unsafe {
            perf_event_open_sys::perf_event_open(
                (attr as *mut RawAttr).cast(),
                pid,
                cpu,
                group,
                flags as libc::c_ulong,
            )
        };
        if fd < 0 {
            return Err(Errno::last());
        }
        // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn ioctl(&self, fd: BorrowedFd<'_>, op: Ioctl<'_>) -> Result<u64, Errno> {
        use perf_event_open_sys::ioctls;
        let raw = fd.as_raw_fd();
        // SAFETY: each ioctl is given an argument of the type the kernel expects, and
        // pointers stay valid for the duration of the call.
        unsafe {
            match op {
                Ioctl::Enable => errno_result(ioctls::ENABLE(raw, 0)),
                Ioctl::Disable => errno_result(ioctls::DISABLE(raw, 0)),
                Ioctl::SetOutput(out) => errno_result(ioctls::SET_OUTPUT(raw, out.as_raw_fd())),
                Ioctl::SetFilter(filter) => {
                    let c = CString::new(filter).map_err(|_| Errno::EINVAL)?;
                    errno_result(ioctls::SET_FILTER(raw, c.as_ptr() as *mut libc::c_char))
                }
                Ioctl::Id => {
                    let mut id = 0u64;
                    errno_result(ioctls::ID(raw, &mut id))?;
                    Ok(id)
                }
                Ioctl::SetBpf(prog) => errno_result(ioctls::SET_BPF(raw, prog.as_raw_fd() as u32)),
                Ioctl::PauseOutput(pause) => errno_result(ioctls::PAUSE_OUTPUT(raw, pause as u32)),
            }
        }
    }

    fn mmap_ring(
        &self,
        fd: BorrowedFd<'_>,
        data_pages: usize,
    ) -> Result<Box<dyn RingMemory>, Errno> {
        if !data_pages.is_power_of_two() {
            return Err(Errno::EINVAL);
        }
        let page_size = self.page_size();
        let len = (data_pages + 1)
            .checked_mul(page_size)
            .ok_or(Errno::EINVAL)?;
        // SAFETY: a fresh shared mapping of a perf fd; PROT_WRITE keeps the ring in
        // tail-respecting (non-overwrite) mode.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        Ok(Box::new(MmapRing {
            ptr: ptr.cast(),
            len,
            page_size,
        }))
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn file_exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn mount_tracefs(&self, target: &Path) -> io::Result<()> {
        use nix::mount::{mount, MsFlags};
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(
            Some("tracefs"),
            target,
            Some("tracefs"),
            flags,
            None::<&str>,
        )
        .or_else(|_| {
            mount(
                Some("debugfs"),
                target,
                Some("debugfs"),
                flags,
                None::<&str>,
            )
        })
        .map_err(io::Error::from)
    }

    fn read_counter(&self, fd: BorrowedFd<'_>) -> Result<u64, Errno> {
        // {value, id} with the read_format sessions use; room for the time fields too.
        let mut buf = [0u8; 32];
        // SAFETY: reading into a local buffer of the given length from a borrowed fd.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 8 {
            return Err(if n < 0 { Errno::last() } else { Errno::EIO });
        }
        Ok(u64::from_ne_bytes(buf[..8].try_into().unwrap_or([0; 8])))
    }

    fn page_size(&self) -> usize {
        // SAFETY: sysconf has no preconditions.
        let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if v > 0 {
            v as usize
        } else {
            4096
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,5\n"), Some(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("0-4294967295"), None);
    }
}

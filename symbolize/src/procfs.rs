//! What we need to know about a target process from /proc, and opening files as it sees them.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// /proc/PID/status is a few KiB; a bound keeps a misbehaving procfs from costing memory.
const STATUS_LIMIT: u64 = 64 * 1024;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// Innermost PID-namespace pid (last NSpid field), the pid the process knows itself by.
    pub ns_pid: Option<u32>,
    /// Real and effective uid.
    pub uids: Vec<u32>,
}

pub fn read_status(pid: u32) -> Option<ProcStatus> {
    let mut text = String::new();
    File::open(format!("/proc/{pid}/status"))
        .ok()?
        .take(STATUS_LIMIT)
        .read_to_string(&mut text)
        .ok()?;
    Some(parse_status(&text))
}

pub fn parse_status(text: &str) -> ProcStatus {
    let mut st = ProcStatus::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("NSpid:") {
            st.ns_pid = rest.split_whitespace().last().and_then(|s| s.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Uid:") {
            st.uids = rest
                .split_whitespace()
                .take(2)
                .filter_map(|s| s.parse().ok())
                .collect();
        }
    }
    st
}

pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

pub fn root_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root"))
}

/// Opens `path` (absolute, as the target names it) inside the target's root directory.
///
/// Walking `/proc/PID/root/...` with a plain open lets absolute symlinks inside the container
/// escape to the host's root; `openat2(RESOLVE_IN_ROOT)` (Linux 5.6+) keeps every component
/// inside the target's root. Older kernels fall back to the plain walk; callers verify the
/// file's identity afterwards in any case.
pub fn open_in_root(pid: u32, path: &str, extra_flags: i32) -> std::io::Result<File> {
    let root = root_dir(pid);
    let relative = path.trim_start_matches('/');
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | extra_flags;
    match openat2_in_root(&root, relative, flags) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        other => return other,
    }
    open_flags(&root.join(relative), flags)
}

fn openat2_in_root(root: &Path, relative: &str, flags: i32) -> std::io::Result<File> {
    let root_fd = open_flags(root, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
    let c_rel =
        CString::new(relative).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; zeroed is a valid initial value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    use std::os::fd::AsRawFd;
    // SAFETY: valid fd, NUL-terminated path and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_fd.as_raw_fd(),
            c_rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

pub fn open_flags(path: &Path, flags: i32) -> std::io::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: NUL-terminated path; the returned fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor from open(2).
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let st = parse_status("Name:\tx\nUid:\t1000\t1001\t1000\t1000\nNSpid:\t4242\t7\n");
        assert_eq!(st.ns_pid, Some(7));
        assert_eq!(st.uids, vec![1000, 1001]);
        assert_eq!(parse_status("garbage").ns_pid, None);
    }

    #[test]
    fn own_status_is_readable() {
        let st = read_status(std::process::id()).expect("own status");
        assert_eq!(st.ns_pid, Some(std::process::id()));
        // SAFETY: getuid has no preconditions.
        assert!(st.uids.contains(&unsafe { libc::getuid() }));
    }
}

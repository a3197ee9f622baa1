//! The seccomp user-notification listener: receive a stopped system call, answer it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use perfring::sys::Errno;

/// A system call stopped in the supervised process, waiting for our answer.
#[derive(Debug, Clone, Copy)]
pub struct Notification {
    pub id: u64,
    /// The calling thread, in our pid namespace.
    pub tid: u32,
    pub nr: i64,
    pub args: [u64; 6],
}

pub struct Listener {
    fd: OwnedFd,
}

/// What poll says about the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Call,
    Nothing,
    /// Every process the filter was installed in has exited.
    AllGone,
}

impl Listener {
    pub fn new(fd: OwnedFd) -> Listener {
        Listener { fd }
    }

    pub fn wait(&self, timeout_ms: i32) -> io::Result<Ready> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Ready::Nothing)
            } else {
                Err(e)
            };
        }
        Ok(if pfd.revents & libc::POLLIN != 0 {
            Ready::Call
        } else if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            Ready::AllGone
        } else {
            Ready::Nothing
        })
    }

    /// The next stopped call; None when it went away before we took it (the caller was
    /// killed or interrupted).
    pub fn receive(&self) -> io::Result<Option<Notification>> {
        // SAFETY: seccomp_notif is plain data; zeroed is what NOTIF_RECV requires.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: NOTIF_RECV fills the struct we pass, which outlives the call.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV as _,
                &mut req,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(Notification {
            id: req.id,
            tid: req.pid,
            nr: i64::from(req.data.nr),
            args: req.data.args,
        }))
    }

    /// Whether the call is still waiting (after reading its memory, so that what was read
    /// belongs to this call and not to a recycled thread id).
    pub fn still_valid(&self, id: u64) -> bool {
        let mut id = id;
        // SAFETY: ID_VALID reads the u64 we pass.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
                &mut id,
            )
        };
        rc == 0
    }

    /// Let the call run in the kernel as made.
    pub fn allow(&self, id: u64) -> io::Result<()> {
        self.respond(id, 0, 0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32)
    }

    /// Fail the call with `errno`, without running it.
    pub fn fail(&self, id: u64, errno: Errno) -> io::Result<()> {
        self.respond(id, 0, -(errno as i32), 0)
    }

    fn respond(&self, id: u64, val: i64, error: i32, flags: u32) -> io::Result<()> {
        let mut resp = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags,
        };
        // SAFETY: NOTIF_SEND reads a seccomp_notif_resp, which outlives the call.
        unsafe {
            self.answer(
                libc::SECCOMP_IOCTL_NOTIF_SEND as _,
                (&mut resp as *mut libc::seccomp_notif_resp).cast(),
            )
        }
    }

    /// Install `fd` in the caller and return its number as the call's result
    /// (SECCOMP_ADDFD_FLAG_SEND, 5.14+).
    pub fn return_fd(&self, id: u64, fd: &OwnedFd, cloexec: bool) -> io::Result<()> {
        let mut add = libc::seccomp_notif_addfd {
            id,
            flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
            srcfd: fd.as_raw_fd() as u32,
            newfd: 0,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: NOTIF_ADDFD reads a seccomp_notif_addfd, which outlives the call; srcfd is
        // open for the call.
        unsafe {
            self.answer(
                libc::SECCOMP_IOCTL_NOTIF_ADDFD as _,
                (&mut add as *mut libc::seccomp_notif_addfd).cast(),
            )
        }
    }

    /// An answering ioctl; a caller that is gone (killed, or interrupted by a signal) is not
    /// an error: there is nothing left to answer.
    ///
    /// # Safety
    /// `arg` must point to the struct `request` reads, valid for the call.
    unsafe fn answer(&self, request: libc::Ioctl, arg: *mut libc::c_void) -> io::Result<()> {
        // SAFETY: guaranteed by the caller.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), request, arg) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
}

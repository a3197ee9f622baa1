//! A command psample launches (`-- CMD`): forked and held before exec until its events are
//! attached, then started, watched and reaped. Its exit status becomes psample's, as perf
//! and shells report it: the command's code, 128+N when signal N killed it, 127 when it
//! could not be found and 126 when it was found but could not be executed.
//!
//! Whether the exec worked is learned from a close-on-exec pipe (the classic self-pipe
//! trick): a successful exec closes the child's end, a failed one writes its stage and errno
//! into it first. So `psample record -- /nonexistent` fails with the path and the reason
//! before any profile is written, instead of profiling a process that never ran.

use std::cell::Cell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Credentials to drop to in the child (from sudo's SUDO_UID/SUDO_GID).
#[derive(Clone, Copy, Debug)]
pub struct DropTo {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The invoking user when running as root under sudo, unless `keep_root`.
pub fn sudo_user(keep_root: bool) -> Option<DropTo> {
    // SAFETY: getuid has no preconditions.
    if keep_root || unsafe { libc::getuid() } != 0 {
        return None;
    }
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    if uid == 0 {
        return None;
    }
    Some(DropTo { uid, gid })
}

/// How a launched command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// This signal killed it.
    Signaled(i32),
    /// It could not be waited for (someone else reaped it).
    Unknown,
}

impl ExitStatus {
    fn from_wait(status: i32) -> ExitStatus {
        if libc::WIFEXITED(status) {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ExitStatus::Unknown
        }
    }

    /// The status a shell would report (`$?`): the code, or 128+N for signal N. `None`
    /// when unknown.
    pub fn shell_code(self) -> Option<i32> {
        match self {
            ExitStatus::Exited(c) => Some(c),
            ExitStatus::Signaled(s) => Some(128 + s),
            ExitStatus::Unknown => None,
        }
    }

    /// `exited with status 3`, `killed by signal 9 (SIGKILL)`.
    pub fn describe(self) -> String {
        match self {
            ExitStatus::Exited(c) => format!("exited with status {c}"),
            ExitStatus::Signaled(s) => match signal_name(s) {
                Some(n) => format!("killed by signal {s} ({n})"),
                None => format!("killed by signal {s}"),
            },
            ExitStatus::Unknown => "exit status unknown (reaped elsewhere)".into(),
        }
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return None,
    })
}

/// Why a launched command did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError {
    /// What failed, with the path and errno.
    pub message: String,
    /// The status a shell gives this failure: 127 not found, 126 found but not runnable.
    pub code: i32,
}

/// Stages of the child that report a failure through the exec pipe.
const STAGE_CREDENTIALS: u32 = 1;
const STAGE_EXEC: u32 = 2;

/// A command forked and held before exec until events are attached to it.
pub struct Launched {
    /// Its pid.
    pub pid: u32,
    /// The command as given (for messages).
    argv0: String,
    /// Written to let the child exec.
    go: Option<OwnedFd>,
    /// Closed by a successful exec; a failed one writes (stage, errno) first.
    exec_result: Option<OwnedFd>,
    /// Its status once reaped.
    status: Cell<Option<ExitStatus>>,
}

/// In the forked child: undo what psample changed that exec would pass on. Ignored signals
/// stay ignored across exec (the Rust runtime ignores SIGPIPE, so `yes | head -1` would
/// print "Broken pipe"), the signal mask is inherited, and so are raised rlimits.
///
/// # Safety
/// Only for the child between fork and exec: it calls async-signal-safe functions only.
unsafe fn restore_inherited_state(nofile: Option<libc::rlimit>, last_signal: i32) {
    // The kernel's struct sigaction (handler, flags, restorer, mask): all zero is SIG_DFL.
    // Through the raw syscall, because libc refuses to touch the signals it reserves (32,
    // 33), which can arrive ignored from psample's own parent.
    let dfl = [0u64; 4];
    // SAFETY: rt_sigaction and sigprocmask are async-signal-safe; the structs are valid.
    unsafe {
        for sig in 1..=last_signal {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
            }
        }
        let none = 0u64;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &none as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
        if let Some(lim) = nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Two fresh close-on-exec pipe ends: (read, write).
fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds from pipe2, owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// In the child: report `stage` and the current errno to the parent, then exit with the
/// status a shell would give the failure.
///
/// # Safety
/// Only for the forked child: write and _exit are async-signal-safe.
unsafe fn child_fail(report: &OwnedFd, stage: u32) -> ! {
    // SAFETY: __errno_location is async-signal-safe and valid for this thread.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.to_ne_bytes());
    msg[4..].copy_from_slice(&(errno as u32).to_ne_bytes());
    let code = if stage == STAGE_EXEC && errno == libc::ENOENT {
        127
    } else {
        126
    };
    // SAFETY: writing 8 bytes of a local to an fd we own, then leaving without unwinding.
    unsafe {
        libc::write(report.as_raw_fd(), msg.as_ptr().cast(), msg.len());
        libc::_exit(code)
    }
}

impl Launched {
    /// Fork; the child waits on a pipe, then (optionally) drops privileges and execs `argv`.
    pub fn spawn(argv: &[String], drop_to: Option<DropTo>) -> io::Result<Launched> {
        let cargs: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in command"))?;
        if cargs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
        }
        let mut ptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // What the command gets back before exec: psample's raised open-files limit is ours.
        let nofile = crate::limits::original_nofile();
        let last_signal = libc::SIGRTMAX();
        let (rd, wr) = cloexec_pipe()?;
        let (result_rd, result_wr) = cloexec_pipe()?;
        // SAFETY: the child only calls async-signal-safe functions (read, sigaction,
        // sigprocmask, setrlimit, setgroups, setgid, setuid, execvp, write, _exit) on memory
        // prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: in the forked child: only async-signal-safe calls (see above) on
            // memory prepared before the fork, ending in exec or _exit.
            unsafe {
                drop(wr);
                drop(result_rd);
                let mut b = 0u8;
                let n = libc::read(rd.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
                if n != 1 {
                    // The profiler went away before starting us: do not run unprofiled.
                    libc::_exit(126);
                }
                restore_inherited_state(nofile, last_signal);
                if let Some(d) = drop_to {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(d.gid) != 0
                        || libc::setuid(d.uid) != 0
                    {
                        child_fail(&result_wr, STAGE_CREDENTIALS);
                    }
                }
                libc::execvp(ptrs[0], ptrs.as_ptr());
                child_fail(&result_wr, STAGE_EXEC);
            }
        }
        drop(rd);
        drop(result_wr);
        Ok(Launched {
            pid: pid as u32,
            argv0: argv[0].clone(),
            go: Some(wr),
            exec_result: Some(result_rd),
            status: Cell::new(None),
        })
    }

    /// Let the child exec, and wait until it did (or failed to: then it is reaped and the
    /// error says why, with the status a shell would give it).
    pub fn start(&mut self) -> Result<(), StartError> {
        if let Some(fd) = self.go.take() {
            let b = 1u8;
            // SAFETY: writing one byte from a local to an fd we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), (&b as *const u8).cast(), 1) };
            if n != 1 {
                return Err(StartError {
                    message: format!(
                        "cannot start {:?}: {}",
                        self.argv0,
                        io::Error::last_os_error()
                    ),
                    code: 126,
                });
            }
        }
        let Some(fd) = self.exec_result.take() else {
            return Ok(());
        };
        let Some((stage, errno)) = read_failure(&fd) else {
            return Ok(());
        };
        let _ = self.wait();
        let err = io::Error::from_raw_os_error(errno);
        Err(match stage {
            STAGE_CREDENTIALS => StartError {
                message: format!("cannot drop privileges for {:?}: {err}", self.argv0),
                code: 126,
            },
            _ => StartError {
                message: format!("cannot execute {:?}: {err}", self.argv0),
                code: if errno == libc::ENOENT { 127 } else { 126 },
            },
        })
    }

    /// Non-blocking: has the child exited? Its status if so (remembered once reaped).
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.reap(libc::WNOHANG)
    }

    /// Wait for the child to exit.
    pub fn wait(&self) -> ExitStatus {
        self.reap(0).unwrap_or(ExitStatus::Unknown)
    }

    /// Wait up to `limit` for the child to exit (after a stop the terminal's Ctrl-C also
    /// reached it); its status if it did.
    pub fn wait_briefly(&self, limit: std::time::Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn reap(&self, flags: i32) -> Option<ExitStatus> {
        if let Some(s) = self.status.get() {
            return Some(s);
        }
        let mut status = 0;
        let rc = loop {
            // SAFETY: waitpid on our own child with a valid status pointer.
            let rc = unsafe { libc::waitpid(self.pid as i32, &mut status, flags) };
            if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break rc;
        };
        let s = if rc == self.pid as i32 {
            ExitStatus::from_wait(status)
        } else if rc < 0 {
            ExitStatus::Unknown
        } else {
            return None;
        };
        self.status.set(Some(s));
        Some(s)
    }
}

/// Read the exec pipe to its end: `None` when the exec closed it without a word.
fn read_failure(fd: &OwnedFd) -> Option<(u32, i32)> {
    let mut msg = [0u8; 8];
    let mut got = 0;
    while got < msg.len() {
        // SAFETY: reading into the unfilled part of a local buffer from an fd we own.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                msg[got..].as_mut_ptr().cast(),
                msg.len() - got,
            )
        };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    if got < msg.len() {
        return None;
    }
    let stage = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let errno = u32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]) as i32;
    Some((stage, errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str]) -> (Result<(), StartError>, Launched) {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut l = Launched::spawn(&argv, None).unwrap();
        (l.start(), l)
    }

    #[test]
    fn launched_command_waits_for_start() {
        let mut l = Launched::spawn(&["true".to_string()], None).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(l.try_wait(), None, "child must wait for start()");
        l.start().unwrap();
        assert_eq!(l.wait(), ExitStatus::Exited(0));
        assert_eq!(l.try_wait(), Some(ExitStatus::Exited(0)), "remembered");
    }

    #[test]
    fn exit_codes_and_signals_as_a_shell_reports_them() {
        let (r, l) = run(&["sh", "-c", "exit 3"]);
        r.unwrap();
        assert_eq!(l.wait().shell_code(), Some(3));
        let (r, l) = run(&["sh", "-c", "kill -KILL $$"]);
        r.unwrap();
        let s = l.wait();
        assert_eq!(s, ExitStatus::Signaled(9));
        assert_eq!(s.shell_code(), Some(137));
        assert_eq!(s.describe(), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn a_command_that_cannot_start_says_why_with_the_shell_status() {
        let (r, l) = run(&["/nonexistent/psample-test-cmd"]);
        let e = r.unwrap_err();
        assert_eq!(e.code, 127);
        assert!(e.message.contains("/nonexistent/psample-test-cmd"), "{e:?}");
        assert!(e.message.contains("No such file or directory"), "{e:?}");
        assert_eq!(l.try_wait(), Some(ExitStatus::Exited(127)), "reaped");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-executable");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let (r, _l) = run(&[file.to_str().unwrap()]);
        let e = r.unwrap_err();
        assert_eq!(e.code, 126);
        assert!(e.message.contains("Permission denied"), "{e:?}");
    }
}

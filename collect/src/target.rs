//! Resolving what to profile: processes and their threads, or a command we launch.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What one session profiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every thread of these processes, including new ones (`-p`).
    Pids(Vec<u32>),
    /// Only these threads (`-t`).
    Tids(Vec<u32>),
    /// Every CPU (`-a`).
    AllCpus,
    /// A command psample launches (`-- CMD ARGS`).
    Command(Vec<String>),
}

impl Target {
    /// Per-task events follow new threads and children (inherit): not for `-t`, and not
    /// CPU-wide.
    pub fn inherits(&self) -> bool {
        !matches!(self, Target::Tids(_) | Target::AllCpus)
    }

    /// A command psample launches: per-task events start at its exec (enable_on_exec).
    pub fn is_command(&self) -> bool {
        matches!(self, Target::Command(_))
    }
}

/// What a command profiles: fixed targets, or processes looked up by name or pid file and
/// attached to again whenever they come back (continuous mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// These targets, for one session.
    Fixed(Target),
    /// Whatever this names right now; re-attach after the targets exit and come back.
    Lookup(Lookup),
}

/// How restartable targets are found again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The process whose PID is in this file (`--pid-file`).
    PidFile(std::path::PathBuf),
    /// Processes with this name in /proc/PID/comm (`--comm`), of one user.
    Comm {
        /// The name.
        name: String,
        /// The user (name or uid) whose processes are followed (`--user`); `None`: the
        /// owner of the first match.
        user: Option<String>,
    },
}

/// Threads of a process from /proc/PID/task.
pub fn threads_of(pid: u32) -> io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The process (thread group) a thread belongs to, from /proc/TID/status.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A thread's name from /proc/TID/comm.
pub fn comm_of(tid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    // kill(pid, 0) would miss zombies' state; /proc/PID/stat state 'Z' means gone for us.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        // Could not look (EMFILE, EACCES under hidepid, ...): that says nothing about the
        // process, so ask the kernel directly instead of declaring it gone.
        Err(_) => {
            // SAFETY: signal 0 only checks for existence and permission.
            let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
            rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        }
    }
}

/// Whether a thread exists and is not a zombie.
pub fn thread_alive(tid: u32) -> bool {
    process_alive(tid)
}

/// All process ids on the system.
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A command forked and held before exec until events are attached to it.
pub struct Launched {
    /// Its pid.
    pub pid: u32,
    go: Option<OwnedFd>,
}

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
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fds from pipe2, owned here.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
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
                        libc::_exit(126);
                    }
                }
                libc::execvp(ptrs[0], ptrs.as_ptr());
                let msg = b"psample: cannot execute the command\n";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(127);
            }
        }
        drop(rd);
        Ok(Launched {
            pid: pid as u32,
            go: Some(wr),
        })
    }

    /// Let the child exec.
    pub fn start(&mut self) -> io::Result<()> {
        if let Some(fd) = self.go.take() {
            let b = 1u8;
            // SAFETY: writing one byte from a local to an fd we own.
            let n = unsafe { libc::write(fd.as_raw_fd(), (&b as *const u8).cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Non-blocking: has the child exited? Returns its exit status if so.
    pub fn try_wait(&self) -> Option<i32> {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let rc = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
        if rc == self.pid as i32 {
            if libc::WIFEXITED(status) {
                Some(libc::WEXITSTATUS(status))
            } else {
                Some(128 + libc::WTERMSIG(status))
            }
        } else if rc < 0 {
            Some(-1)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_threads_and_liveness() {
        let me = std::process::id();
        assert!(threads_of(me).unwrap().contains(&me));
        assert_eq!(tgid_of(me), Some(me));
        assert!(process_alive(me));
        assert!(!process_alive(u32::MAX - 1));
    }

    #[test]
    fn launched_command_waits_for_start() {
        let mut l = Launched::spawn(&["true".to_string()], None).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(l.try_wait(), None, "child must wait for start()");
        l.start().unwrap();
        // Until it exits, however long a loaded machine takes (a hang guard, not a timing check).
        let mut status = None;
        for _ in 0..30_000 {
            status = l.try_wait();
            if status.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(status, Some(0));
    }
}

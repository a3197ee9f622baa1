//! Resolving what to profile: processes and their threads, or a command we launch
//! ([`crate::launch`]).

pub use crate::launch::{sudo_user, DropTo, Launched};

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

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
    /// The tasks of a cgroup, on every CPU (`--cgroup`): perf_event's cgroup mode.
    Cgroup(PathBuf),
}

impl Target {
    /// Per-task events follow new threads and children (inherit): not for `-t`, and not
    /// CPU-wide.
    pub fn inherits(&self) -> bool {
        !matches!(self, Target::Tids(_) | Target::AllCpus | Target::Cgroup(_))
    }

    /// Sampled per CPU until stopped (`-a`, `--cgroup`): not ended by its processes exiting.
    pub fn cpu_wide(&self) -> bool {
        matches!(self, Target::AllCpus | Target::Cgroup(_))
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

/// Most descendants [`descendants_of`] lists.
const MAX_DESCENDANTS: usize = 4096;

/// The live descendants of `pid` (children, theirs, ...), from every thread's
/// `/proc/PID/task/TID/children`; at most [`MAX_DESCENDANTS`]. Empty where the kernel lacks
/// that file (before 3.5, or without CONFIG_PROC_CHILDREN).
pub fn descendants_of(pid: u32) -> Vec<u32> {
    let mut found: Vec<u32> = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        for tid in threads_of(p).unwrap_or_default() {
            let path = format!("/proc/{p}/task/{tid}/children");
            let mut text = String::new();
            let read =
                fs::File::open(&path).and_then(|f| f.take(1 << 20).read_to_string(&mut text));
            if read.is_err() {
                continue;
            }
            for child in text.split_whitespace().filter_map(|c| c.parse().ok()) {
                if found.len() >= MAX_DESCENDANTS {
                    return found;
                }
                if !found.contains(&child) {
                    found.push(child);
                    next.push(child);
                }
            }
        }
    }
    found
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hosts that
/// mount v1 controllers beside it.
const CGROUP2_MOUNTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
/// A `cgroup.procs` longer than this (about a million pids) is not read whole.
const MAX_CGROUP_PROCS: u64 = 8 << 20;

/// The directory of cgroup `path`: an absolute path to a cgroup directory (v1 or v2), or a
/// path relative to the cgroup v2 mount (`system.slice/nginx.service`).
pub fn cgroup_dir(path: &Path) -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = if path.is_absolute() {
        vec![path.to_path_buf()]
    } else {
        CGROUP2_MOUNTS
            .iter()
            .map(|m| Path::new(m).join(path))
            .collect()
    };
    candidates
        .into_iter()
        .find(|d| d.join("cgroup.procs").is_file())
        .ok_or_else(|| {
            format!(
                "--cgroup {}: not a cgroup directory (give its path under /sys/fs/cgroup, \
                 e.g. /sys/fs/cgroup/system.slice/nginx.service, or the part after the mount)",
                path.display()
            )
        })
}

/// The processes in a cgroup now (its `cgroup.procs`, not its descendants').
pub fn cgroup_procs(dir: &Path) -> io::Result<Vec<u32>> {
    let mut text = String::new();
    fs::File::open(dir.join("cgroup.procs"))?
        .take(MAX_CGROUP_PROCS)
        .read_to_string(&mut text)?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
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
    fn descendants_include_grandchildren() {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & (sleep 30 & wait) & wait"])
            .spawn()
            .unwrap();
        let pid = sh.id();
        let sleeps = |d: &[u32]| {
            d.iter()
                .filter(|p| comm_of(**p).as_deref() == Some("sleep"))
                .count()
        };
        let mut found = Vec::new();
        for _ in 0..3000 {
            found = descendants_of(pid);
            if sleeps(&found) == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(sleeps(&found), 2, "{found:?}");
        // The subshell between sh and its sleep is one of them too.
        assert!(found.len() >= 3, "{found:?}");
        for p in found.iter().rev() {
            // SAFETY: kill(2) of processes this test started.
            unsafe { libc::kill(*p as i32, libc::SIGKILL) };
        }
        let _ = sh.kill();
        let _ = sh.wait();
    }
}

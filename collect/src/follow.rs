//! Which processes `--pid-file` and `--comm` name, without letting anyone else choose what
//! root profiles.
//!
//! A pid file is read only when it is a small regular file (opened without following a
//! symlink at its name, never a FIFO or device, never in /proc or /sys), owned by root or the
//! user running psample and not writable by group or others; at most a few bytes are read.
//! `--comm` follows processes of one user only: `--user`, or the owner of the first match
//! (said on stderr), so a process another user names like the service is never mixed in.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use symbolize::identity;

use crate::target::{self, Lookup};
use crate::Error;

/// A pid file larger than this is not one.
pub const PID_FILE_MAX: u64 = 4096;
/// Bytes of a pid file read: one number and its newline.
const PID_FILE_READ: u64 = 32;

const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;

/// What to look up at each (re)attach.
pub enum Follow {
    /// The process in this pid file.
    PidFile(PathBuf),
    /// Processes with this name.
    Comm {
        /// The name (/proc/PID/comm).
        name: String,
        /// The user whose processes are followed; chosen at the first match when not given.
        user: Option<u32>,
    },
}

impl Follow {
    /// Follow what `lookup` names (`--user` resolved now: a typo fails at once).
    pub fn new(lookup: &Lookup) -> Result<Follow, Error> {
        Ok(match lookup {
            Lookup::PidFile(f) => Follow::PidFile(f.clone()),
            Lookup::Comm { name, user } => Follow::Comm {
                name: name.clone(),
                user: user.as_deref().map(resolve_user).transpose()?,
            },
        })
    }

    /// For messages: "the process in FILE", "processes named X of user U".
    pub fn describe(&self) -> String {
        match self {
            Follow::PidFile(f) => format!("the process in {}", f.display()),
            Follow::Comm { name, user: None } => format!("processes named {name:?}"),
            Follow::Comm {
                name,
                user: Some(u),
            } => format!("processes named {name:?} of {}", user_name(*u)),
        }
    }

    /// The processes to attach to now; empty when none runs. An unusable pid file is an
    /// error: it will not become trustworthy by waiting.
    pub fn lookup(&mut self) -> Result<Vec<u32>, Error> {
        match self {
            Follow::PidFile(f) => Ok(read_pid_file(f).map_err(Error::new)?.into_iter().collect()),
            Follow::Comm { name, user } => Ok(lookup_comm(name, user)),
        }
    }
}

/// The PID in `path` if it names a running process; `Ok(None)` while the file is missing,
/// empty or does not hold a number yet (a service being restarted); `Err` when the file is not
/// one psample may trust.
pub fn read_pid_file(path: &Path) -> Result<Option<u32>, String> {
    let shown = path.display();
    let mut file = match symbolize::target_file::open_host(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!(
                "--pid-file {shown} is a symbolic link; give the file it points to"
            ))
        }
        Err(e) => {
            return Err(format!(
                "--pid-file {shown}: {e} (it must be a regular file)"
            ))
        }
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("--pid-file {shown}: {e}"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "--pid-file {shown} is owned by uid {}, not by root or you (uid {me}): that user \
             could make psample profile any process; use a pid file root writes, or \
             --comm NAME --user USER",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "--pid-file {shown} is writable by group or others (mode {:o}); make it 644",
            meta.mode() & 0o7777
        ));
    }
    if pseudo_fs(&file) {
        return Err(format!(
            "--pid-file {shown} is in /proc or /sys, not a pid file"
        ));
    }
    if meta.len() > PID_FILE_MAX {
        return Err(format!(
            "--pid-file {shown} is {} bytes; a pid file holds one number",
            meta.len()
        ));
    }
    let mut text = String::new();
    let _ = (&mut file).take(PID_FILE_READ).read_to_string(&mut text);
    let Some(pid) = text
        .split_whitespace()
        .next()
        .and_then(|t| t.parse::<u32>().ok())
        .filter(|&p| p > 0 && p <= i32::MAX as u32)
    else {
        return Ok(None);
    };
    if pid == std::process::id() {
        return Err(format!(
            "--pid-file {shown} names psample itself (pid {pid})"
        ));
    }
    Ok(target::process_alive(pid).then_some(pid))
}

/// Whether `file` lives on procfs or sysfs (whose files look regular and root-owned).
fn pseudo_fs(file: &std::fs::File) -> bool {
    // SAFETY: zeroed statfs is a valid out-buffer; the fd is open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    let t = st.f_type as i64;
    t == PROC_SUPER_MAGIC || t == SYSFS_MAGIC
}

/// Processes named `name` of `user` (chosen now, as the owner of the lowest-numbered match,
/// when not given), never psample itself.
fn lookup_comm(name: &str, user: &mut Option<u32>) -> Vec<u32> {
    let me = std::process::id();
    let mut found: Vec<(u32, u32)> = target::all_pids()
        .into_iter()
        .filter(|&p| p != me && target::comm_of(p).as_deref() == Some(name))
        .filter(|&p| target::process_alive(p))
        .filter_map(|p| Some((p, identity::owner_uid(p)?)))
        .collect();
    found.sort_unstable();
    let Some(&(first, owner)) = found.first() else {
        return Vec::new();
    };
    let chosen = *user.get_or_insert_with(|| {
        crate::errln!(
            "psample: --comm {name}: following processes of {} (the owner of pid {first}, the \
             first match); choose another with --user",
            user_name(owner)
        );
        owner
    });
    let others = found.iter().filter(|(_, u)| *u != chosen).count();
    if others > 0 {
        crate::errln!(
            "psample: --comm {name}: ignoring {others} matching processes of other users"
        );
    }
    found
        .into_iter()
        .filter(|(_, u)| *u == chosen)
        .map(|(p, _)| p)
        .collect()
}

/// `--user NAME|UID`.
fn resolve_user(s: &str) -> Result<u32, Error> {
    if let Ok(uid) = s.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(Error::new(format!(
            "--user {s}: no such user (give a user name or a numeric uid)"
        ))),
    }
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("user {} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pid_files_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.pid");
        let set = |text: &str, mode: u32| {
            std::fs::write(&f, text).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let _reap = KillOnDrop(child);
        let pid = _reap.0.id();
        set(&format!("{pid}\n"), 0o644);
        assert_eq!(read_pid_file(&f), Ok(Some(pid)));
        // Not (yet) a number, or not a pid: wait for it.
        set("not a pid", 0o644);
        assert_eq!(read_pid_file(&f), Ok(None));
        set("4294967000", 0o644);
        assert_eq!(read_pid_file(&f), Ok(None));
        // Psample itself is never a target.
        set(&format!("{}", std::process::id()), 0o644);
        assert!(read_pid_file(&f).unwrap_err().contains("itself"));
        // Writable by others: anyone could choose the target.
        set(&format!("{pid}\n"), 0o666);
        assert!(read_pid_file(&f).unwrap_err().contains("writable"));
        assert_eq!(read_pid_file(&dir.path().join("missing")), Ok(None));
    }

    #[test]
    fn pseudo_files_and_symlinks_are_refused() {
        let err = read_pid_file(Path::new("/proc/self/stat")).unwrap_err();
        assert!(err.contains("/proc"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link.pid");
        std::os::unix::fs::symlink("/proc/self/stat", &link).unwrap();
        assert!(read_pid_file(&link).unwrap_err().contains("symbolic link"));
    }

    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

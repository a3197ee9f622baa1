//! Opening the files a profiled process names, as it sees them, without letting it choose
//! what psample (root) opens. Shared by unwinding and symbolization.
//!
//! - Paths resolve inside the target's root (`/proc/PID/root`): `openat2(RESOLVE_IN_ROOT)`
//!   where the kernel has it (5.6+), else a component walk that follows symlinks itself and
//!   never leaves the root (absolute links restart at the root, `..` stops there).
//! - Nothing but a regular file is ever opened for reading: the path is resolved to an
//!   `O_PATH` descriptor (no open side effects, no blocking on FIFOs, no device opens), its
//!   type checked, and only then reopened read-only with `O_NONBLOCK`.
//! - A mapped file is checked against what the kernel says is mapped (device and inode from
//!   `/proc/PID/map_files`, or the inode of the MMAP record), and a deleted or replaced file
//!   is read through `map_files`, which is the mapped file itself.
//! - A PID is trusted only while it still means the process the mapping was seen in
//!   ([`crate::identity`]).

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::FileError;
use crate::identity::ProcessIdentity;

const DELETED_SUFFIX: &str = " (deleted)";
/// Symlinks followed while resolving one path (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// A mapping of a file, as the kernel reported it.
#[derive(Debug, Clone, Copy)]
pub struct MappedFile<'a> {
    /// A process that maps it.
    pub pid: u32,
    /// That process's start time when the mapping was seen; `None` if unknown. When the PID
    /// means another process now, nothing of that process is used.
    pub pid_start: Option<u64>,
    /// As in /proc/PID/maps (may end in " (deleted)").
    pub path: &'a str,
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// (major, minor, inode) from the MMAP2 record or maps line.
    pub inode: Option<(u32, u32, u64)>,
}

/// A verified, regular, open file and the path it was reached by.
#[derive(Debug)]
pub struct Opened {
    /// The open file.
    pub file: File,
    /// The path it was reached by.
    pub path: PathBuf,
}

pub(crate) fn clean_path(path: &str) -> &str {
    path.strip_suffix(DELETED_SUFFIX).unwrap_or(path)
}

/// Whether `pid` is alive and still the process identified by `pid_start` (when known), with
/// its root and map_files readable (a zombie has neither).
pub fn process_usable(pid: u32, pid_start: Option<u64>) -> bool {
    let same = match pid_start {
        Some(start_time) => ProcessIdentity { pid, start_time }.is_running(),
        None => crate::identity::stat(pid).is_some_and(|s| !s.exited),
    };
    same && std::fs::metadata(format!("/proc/{pid}/root")).is_ok()
}

/// The file behind a mapping, verified to be the mapped one. Notes about surprising findings
/// (replaced files, unverifiable host fallbacks) are appended to `notes`.
pub fn open_mapped(m: &MappedFile<'_>, notes: &mut Vec<String>) -> Result<Opened, FileError> {
    let clean = clean_path(m.path);
    if !clean.starts_with('/') {
        return Err(FileError::NotAbsolute(m.path.to_string()));
    }
    let deleted = m.path.ends_with(DELETED_SUFFIX);
    let alive = process_usable(m.pid, m.pid_start);
    let map_files = PathBuf::from(format!(
        "/proc/{}/map_files/{:x}-{:x}",
        m.pid, m.start, m.end
    ));
    // What the kernel says is mapped: the file behind map_files is authoritative (stat only
    // follows the link; nothing is opened).
    let mapped = alive
        .then(|| std::fs::metadata(&map_files).ok())
        .flatten()
        .map(|meta| (Some(meta.dev()), meta.ino()));
    let expected = mapped.or(m.inode.map(|(_, _, ino)| (None, ino)));

    if alive && !deleted {
        match open_in_root(m.pid, clean, true) {
            Ok(file) => match check_identity(&file, expected) {
                Ok(()) => {
                    return Ok(Opened {
                        file,
                        path: root_dir(m.pid).join(clean.trim_start_matches('/')),
                    })
                }
                Err(why) => notes.push(format!(
                    "{clean} in pid {} is not the mapped file ({why}); using map_files",
                    m.pid
                )),
            },
            Err(source) if mapped.is_none() => {
                return Err(FileError::InTargetRoot {
                    path: clean.to_string(),
                    pid: m.pid,
                    source,
                })
            }
            Err(_) => {}
        }
    }
    if alive {
        let file = open_host(&map_files, true).map_err(|source| FileError::Open {
            path: map_files.clone(),
            source,
        })?;
        check_identity(&file, mapped)?;
        return Ok(Opened {
            file,
            path: map_files,
        });
    }
    if deleted {
        return Err(FileError::DeletedAndExited {
            path: clean.to_string(),
            pid: m.pid,
        });
    }
    // The process is gone (or its PID means another process now), so its root is unknown:
    // only a verifiable host file will do.
    let file = open_host(Path::new(clean), true).map_err(|source| FileError::Open {
        path: PathBuf::from(clean),
        source,
    })?;
    if m.inode.is_none() {
        notes.push(format!(
            "pid {} exited before its files were read and its mapping carried no inode; \
             {clean} was taken from the host without verification",
            m.pid
        ));
    }
    check_identity(&file, expected)?;
    Ok(Opened {
        file,
        path: PathBuf::from(clean),
    })
}

/// The device (when known) and inode of `file` must be the expected ones.
fn check_identity(file: &File, expected: Option<(Option<u64>, u64)>) -> Result<(), FileError> {
    let Some((dev, ino)) = expected else {
        return Ok(());
    };
    let meta = file.metadata()?;
    if meta.ino() != ino || dev.is_some_and(|d| d != meta.dev()) {
        return Err(FileError::InodeDiffers);
    }
    Ok(())
}

/// `/proc/PID/root`: the process's view of the filesystem.
pub fn root_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root"))
}

/// Opens `path` (absolute, as the target names it) inside the target's root, as a regular
/// file, read-only and non-blocking. With `follow_last` false a symlink as the last
/// component is refused (ELOOP).
pub fn open_in_root(pid: u32, path: &str, follow_last: bool) -> io::Result<File> {
    let root = open_path(&root_dir(pid), libc::O_DIRECTORY)?;
    let relative = path.trim_start_matches('/');
    let last = if follow_last { 0 } else { libc::O_NOFOLLOW };
    let fd = match openat2_in_root(&root, relative, libc::O_PATH | last) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
            walk_in_root(&root, relative, follow_last)?
        }
        other => other?,
    };
    reopen_regular(fd)
}

/// Opens a host path as a regular file, read-only and non-blocking; symlinks are followed
/// only when `follow` (the host's own directories such as /usr/lib/debug use them).
pub fn open_host(path: &Path, follow: bool) -> io::Result<File> {
    let flags = if follow { 0 } else { libc::O_NOFOLLOW };
    reopen_regular(open_path(path, flags)?)
}

/// `O_PATH` descriptor for `path`: resolves it without opening the file itself.
fn open_path(path: &Path, extra: i32) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: NUL-terminated path; the returned fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | extra) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor from open(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The regular file behind an `O_PATH` descriptor, opened for reading. Anything else (FIFO,
/// device, socket, directory) is refused before it is opened.
fn reopen_regular(fd: OwnedFd) -> io::Result<File> {
    let before = fstat(&fd)?;
    if before.st_mode & libc::S_IFMT == libc::S_IFLNK {
        // An O_PATH | O_NOFOLLOW open of a symlink yields the link itself.
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    if before.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::other("not a regular file"));
    }
    let proc_path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: NUL-terminated path; the returned fd is owned below.
    let raw = unsafe { libc::open(proc_path.as_ptr(), flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor from open(2).
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let after = file.metadata()?;
    if after.ino() != before.st_ino as u64 || after.dev() != before.st_dev as u64 {
        return Err(io::Error::other("file changed while it was opened"));
    }
    Ok(file)
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-buffer; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn openat2_in_root(root: &OwnedFd, relative: &str, flags: i32) -> io::Result<OwnedFd> {
    let c_rel = CString::new(relative).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; zeroed is a valid initial value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, NUL-terminated path and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c_rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `RESOLVE_IN_ROOT` by hand, for kernels without openat2: every component is opened with
/// `O_PATH | O_NOFOLLOW` relative to the directory before it; symlinks are read and their
/// targets resolved by this loop (absolute ones from the root), and `..` never climbs above
/// the root. Returns an `O_PATH` descriptor.
fn walk_in_root(root: &OwnedFd, relative: &str, follow_last: bool) -> io::Result<OwnedFd> {
    let mut dirs: Vec<OwnedFd> = vec![root.try_clone()?];
    let mut pending: VecDeque<String> = components(relative).collect();
    let mut links = 0;
    let mut last: Option<OwnedFd> = None;
    while let Some(name) = pending.pop_front() {
        if let Some(fd) = last.take() {
            // The previous component had more after it: it must be a directory.
            dirs.push(fd);
        }
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            continue;
        }
        let dir = dirs.last().ok_or_else(|| io::Error::other("empty walk"))?;
        let fd = openat_path(dir, &name)?;
        let st = fstat(&fd)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                if pending.is_empty() && !follow_last {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = readlink_fd(&fd)?;
                if target.starts_with('/') {
                    dirs.truncate(1);
                }
                for c in components(&target).rev() {
                    pending.push_front(c);
                }
            }
            libc::S_IFDIR => last = Some(fd),
            _ if pending.is_empty() => last = Some(fd),
            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
    }
    match last {
        Some(fd) => Ok(fd),
        None => dirs.pop().ok_or_else(|| io::Error::other("empty walk")),
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
}

fn openat_path(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid directory fd and NUL-terminated name; the fd is owned below.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor from openat(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The target of the symlink an `O_PATH | O_NOFOLLOW` descriptor refers to.
fn readlink_fd(fd: &OwnedFd) -> io::Result<String> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: readlinkat with an empty path reads the link the fd refers to (2.6.39+); the
    // buffer is valid for its length.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake root: walks are tested against a directory fd, as they run on /proc/PID/root.
    fn root_fd(dir: &Path) -> OwnedFd {
        open_path(dir, libc::O_DIRECTORY).unwrap()
    }

    fn walk_to(root: &Path, path: &str, follow_last: bool) -> io::Result<File> {
        reopen_regular(walk_in_root(&root_fd(root), path, follow_last)?)
    }

    fn both_ways(root: &Path, path: &str) -> (io::Result<File>, io::Result<File>) {
        let by_walk = walk_to(root, path, true);
        let rfd = root_fd(root);
        let by_openat2 = openat2_in_root(&rfd, path.trim_start_matches('/'), libc::O_PATH)
            .and_then(reopen_regular);
        (by_walk, by_openat2)
    }

    fn contents(f: io::Result<File>) -> String {
        use std::io::Read;
        let mut s = String::new();
        f.expect("opened").read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn symlinks_resolve_inside_the_root_like_openat2() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "host").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::write(r.join("usr/lib/libx.so"), "in root").unwrap();
        // Absolute link: must mean the root's /usr/lib, not the host's.
        symlink("/usr/lib/libx.so", r.join("usr/lib/abs")).unwrap();
        symlink(
            "../../../../../../../../usr/lib/libx.so",
            r.join("usr/lib/dotdot"),
        )
        .unwrap();
        let escape = host.path().join("secret");
        symlink(&escape, r.join("usr/lib/escape")).unwrap();
        for p in [
            "/usr/lib/libx.so",
            "/usr/lib/abs",
            "usr/lib/dotdot",
            "/usr/../usr/./lib/abs",
        ] {
            let (walk, o2) = both_ways(r, p);
            assert_eq!(contents(walk), "in root", "{p}");
            if !matches!(&o2, Err(e) if e.raw_os_error() == Some(libc::ENOSYS)) {
                assert_eq!(contents(o2), "in root", "{p} (openat2)");
            }
        }
        // The host file's absolute path resolves inside the root, where it does not exist.
        let (walk, _) = both_ways(r, "/usr/lib/escape");
        assert_eq!(walk.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn only_regular_files_are_opened() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let fifo = CString::new(r.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::create_dir(r.join("dir")).unwrap();
        symlink("/dev/null", r.join("null")).unwrap();
        // A FIFO nobody writes to would block a plain open forever.
        for p in ["fifo", "dir", "null"] {
            assert!(walk_to(r, p, true).is_err(), "{p}");
        }
        assert!(open_host(Path::new("/dev/null"), true).is_err());
        assert!(open_host(&r.join("fifo"), true).is_err());
        // A symlink as the last component is refused when asked to.
        std::fs::write(r.join("file"), "x").unwrap();
        symlink("file", r.join("link")).unwrap();
        assert!(walk_to(r, "link", true).is_ok());
        let e = walk_to(r, "link", false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(open_host(&r.join("link"), false).is_err());
    }

    #[test]
    fn symlink_loops_end() {
        let root = tempfile::tempdir().unwrap();
        symlink("b", root.path().join("a")).unwrap();
        symlink("a", root.path().join("b")).unwrap();
        let e = walk_to(root.path(), "a", true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn own_mapped_executable_opens_and_verifies() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let line = maps
            .lines()
            .find(|l| l.ends_with(exe.to_str().unwrap()))
            .expect("own exe mapped");
        let f: Vec<&str> = line.split_whitespace().collect();
        let (s, e) = f[0].split_once('-').unwrap();
        let ino: u64 = f[4].parse().unwrap();
        let path = exe.to_str().unwrap();
        let mut m = MappedFile {
            pid: std::process::id(),
            pid_start: ProcessIdentity::of(std::process::id()).map(|i| i.start_time),
            path,
            start: u64::from_str_radix(s, 16).unwrap(),
            end: u64::from_str_radix(e, 16).unwrap(),
            inode: Some((0, 0, ino)),
        };
        let mut notes = Vec::new();
        let opened = open_mapped(&m, &mut notes).expect("opens");
        assert_eq!(opened.file.metadata().unwrap().ino(), ino);
        // A stale identity: the PID is not trusted, the host file is verified by inode.
        m.pid_start = m.pid_start.map(|t| t + 1);
        let opened = open_mapped(&m, &mut notes).expect("host fallback");
        assert_eq!(opened.path, Path::new(path));
        m.inode = Some((0, 0, ino + 1));
        assert!(open_mapped(&m, &mut notes).is_err());
    }
}

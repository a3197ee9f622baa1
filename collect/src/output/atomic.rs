//! Temporary files given their final name only once complete, under names another user can
//! neither predict nor take first.
//!
//! The bytes go to an unnamed file in the destination's directory (O_TMPFILE, Linux 3.11+),
//! or where that is not available to a file created O_EXCL under a random hidden name. A
//! crash therefore leaves nothing (or one hidden `.psample-*.tmp`), and nothing anyone
//! planted in a shared directory is ever opened: the name only appears when it is linked.
//! The final step is a link that fails rather than replace ([`TempFile::link_new`]), a
//! rename over a regular file ([`TempFile::rename_over`]), or, when the destination cannot
//! be taken, a link under a fresh visible name beside it ([`TempFile::rescue`]) so the
//! profile is never thrown away.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest file name Linux accepts (NAME_MAX).
const NAME_MAX: usize = 255;
/// Attempts at a fresh random name before giving up (each collision is either chance, at
/// 2^-64, or someone creating names in our directory).
const NAME_ATTEMPTS: u32 = 32;

/// The directory a path's file lives in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// 16 hex digits nobody else can predict: std seeds every `RandomState` from the OS random
/// source, so hashing nothing with a fresh one yields an unguessable value without a
/// dependency.
pub fn random_token() -> String {
    let h = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{h:016x}")
}

/// An unfinished output file in the destination's directory.
pub struct TempFile {
    file: File,
    /// The name the bytes currently have, if any (named fallback, or after a failed rename).
    named: Option<PathBuf>,
    /// Set once the bytes have their final (or rescue) name: Drop then removes nothing.
    linked: bool,
}

fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

impl TempFile {
    /// A new temporary file in `dir`, created with `mode` (the umask applies).
    pub fn new_in(dir: &Path, mode: u32) -> io::Result<TempFile> {
        // Linking an O_TMPFILE file goes through /proc/self/fd; without /proc it could never
        // get a name, so use a named file from the start.
        if Path::new("/proc/self/fd").is_dir() {
            match OpenOptions::new()
                .write(true)
                .mode(mode)
                .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
                .open(dir)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        file,
                        named: None,
                        linked: false,
                    })
                }
                // Kernel before 3.11 (EISDIR), or a filesystem without O_TMPFILE.
                Err(e)
                    if is_errno(&e, libc::EOPNOTSUPP)
                        || is_errno(&e, libc::EISDIR)
                        || is_errno(&e, libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        for _ in 0..NAME_ATTEMPTS {
            let tmp = dir.join(format!(".psample-{}.tmp", random_token()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        file,
                        named: Some(tmp),
                        linked: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free temporary file name in {}", dir.display()),
        ))
    }

    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Device and inode of the file: what it will be under its final name.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.file.metadata()?;
        Ok((m.dev(), m.ino()))
    }

    /// Give the file the owner and mode of the one it replaces. Owner first: chown clears
    /// set-id bits. An owner we may not set (not root) keeps ours, without set-id bits.
    pub fn set_owner_and_mode(&self, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fd is an open descriptor owned by self.file; fchown/fchmod only read it.
        let owned = unsafe { libc::fchown(fd, uid, gid) } == 0;
        let mode = if owned { mode } else { mode & 0o777 };
        // SAFETY: as above.
        if unsafe { libc::fchmod(fd, mode & 0o7777) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Name the complete file `dest`, failing with AlreadyExists rather than replace
    /// anything that is there.
    pub fn link_new(&mut self, dest: &Path) -> io::Result<()> {
        match self.named.clone() {
            None => self.link_unnamed(dest)?,
            Some(tmp) => {
                match std::fs::hard_link(&tmp, dest) {
                    Ok(()) => {}
                    // A filesystem without hard links: check, then rename (a narrow race,
                    // only on such filesystems).
                    Err(e) if is_errno(&e, libc::EPERM) || is_errno(&e, libc::EOPNOTSUPP) => {
                        if std::fs::symlink_metadata(dest).is_ok() {
                            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                        }
                        std::fs::rename(&tmp, dest)?;
                        self.named = None;
                        self.linked = true;
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
                let _ = std::fs::remove_file(&tmp);
                self.named = None;
            }
        }
        self.linked = true;
        Ok(())
    }

    /// Replace the regular file at `dest` (rename over it). On failure the bytes keep a
    /// hidden name in the same directory, ready for [`Self::rescue`].
    pub fn rename_over(&mut self, dest: &Path) -> io::Result<()> {
        let tmp = match self.named.clone() {
            Some(t) => t,
            None => {
                // link(2) cannot replace: give the unnamed file a random hidden name first.
                let dir = parent_of(dest);
                let hidden = self.link_fresh(dir, |t| format!(".psample-{t}.tmp").into())?;
                self.named = Some(hidden.clone());
                hidden
            }
        };
        std::fs::rename(&tmp, dest)?;
        self.named = None;
        self.linked = true;
        Ok(())
    }

    /// Save the bytes beside `dest` under a new visible name (never replacing anything);
    /// returns that name.
    pub fn rescue(&mut self, dest: &Path) -> io::Result<PathBuf> {
        let dir = parent_of(dest);
        let base = dest
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_else(|| b"profile".to_vec());
        let saved = self.link_fresh(dir, |t| rescue_name(&base, t))?;
        if let Some(tmp) = self.named.take() {
            let _ = std::fs::remove_file(tmp);
        }
        self.linked = true;
        Ok(saved)
    }

    /// Link the file under `dir/name(token)` for a fresh random token; retries collisions.
    fn link_fresh(&mut self, dir: &Path, name: impl Fn(&str) -> OsString) -> io::Result<PathBuf> {
        for _ in 0..NAME_ATTEMPTS {
            let candidate = dir.join(name(&random_token()));
            let r = match &self.named {
                Some(tmp) => std::fs::hard_link(tmp, &candidate),
                None => self.link_unnamed(&candidate),
            };
            match r {
                Ok(()) => return Ok(candidate),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free file name in {}", dir.display()),
        ))
    }

    /// linkat(2) of the O_TMPFILE file: through /proc/self/fd (no capability needed), else
    /// by descriptor (AT_EMPTY_PATH, which needs CAP_DAC_READ_SEARCH).
    fn link_unnamed(&self, dest: &Path) -> io::Result<()> {
        use nix::fcntl::{AtFlags, AT_FDCWD};
        let proc_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let by_proc = nix::unistd::linkat(
            AT_FDCWD,
            proc_path.as_str(),
            AT_FDCWD,
            dest,
            AtFlags::AT_SYMLINK_FOLLOW,
        );
        match by_proc {
            Ok(()) => Ok(()),
            Err(e) if e == nix::errno::Errno::EEXIST => Err(io::Error::from(e)),
            Err(e) => nix::unistd::linkat(&self.file, "", AT_FDCWD, dest, AtFlags::AT_EMPTY_PATH)
                .map_err(|_| io::Error::from(e)),
        }
    }
}

/// Prove, before sampling, that a finished file can be given a name in `dir`: create one,
/// link it under a random hidden name and remove it again.
pub fn probe(dir: &Path) -> io::Result<()> {
    let mut t = TempFile::new_in(dir, 0o600)?;
    let name = t.link_fresh(dir, |tok| format!(".psample-{tok}.tmp").into())?;
    // Still "not linked" for Drop, which removes the named fallback's own name.
    std::fs::remove_file(name)
}

/// `psample-saved-TOKEN-NAME`, cut at the front of NAME to fit NAME_MAX (the end of a name
/// carries its extension, which viewers go by).
fn rescue_name(base: &[u8], token: &str) -> OsString {
    let prefix = format!("psample-saved-{}-", &token[..8]);
    let room = NAME_MAX - prefix.len();
    let tail = &base[base.len().saturating_sub(room)..];
    let mut name = prefix.into_bytes();
    name.extend_from_slice(tail);
    OsString::from_vec(name)
}

impl Drop for TempFile {
    /// Never linked (an error while writing): a named temporary file is removed; an
    /// unnamed one disappears with its descriptor.
    fn drop(&mut self) {
        if !self.linked {
            if let Some(tmp) = self.named.take() {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::dir_names as names;
    use std::io::Write;

    #[test]
    fn unnamed_until_linked_and_nothing_left_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TempFile::new_in(dir.path(), 0o600).unwrap();
        t.file_mut().write_all(b"a 1\n").unwrap();
        assert!(t.named.is_none(), "this kernel and tmpfs support O_TMPFILE");
        assert!(names(dir.path()).is_empty());
        let dest = dir.path().join("p.folded");
        t.link_new(&dest).unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "a 1\n");
        // A second link onto the taken name fails instead of replacing it.
        let mut u = TempFile::new_in(dir.path(), 0o600).unwrap();
        let e = u.link_new(&dest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        drop(u);
        assert_eq!(names(dir.path()), ["p.folded"]);
    }

    #[test]
    fn failed_rename_leaves_the_bytes_for_rescue() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("taken");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("x"), b"x").unwrap();
        let mut t = TempFile::new_in(dir.path(), 0o644).unwrap();
        t.file_mut().write_all(b"a 1\n").unwrap();
        assert!(t.rename_over(&dest).is_err());
        let saved = t.rescue(&dest).unwrap();
        assert_eq!(std::fs::read_to_string(&saved).unwrap(), "a 1\n");
        let name = saved.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("psample-saved-") && name.ends_with("-taken"));
        drop(t);
        // Only the blocked directory and the saved file: the hidden name is gone.
        assert_eq!(names(dir.path()).len(), 2, "{:?}", names(dir.path()));
    }

    #[test]
    fn rescue_names_fit_name_max_and_keep_the_extension() {
        let base = format!("{}.svg", "x".repeat(251));
        let n = rescue_name(base.as_bytes(), &random_token());
        assert_eq!(n.len(), NAME_MAX);
        assert!(n.to_string_lossy().ends_with("xx.svg"));
        assert_eq!(
            rescue_name(b"a.folded", "0123456789abcdef"),
            "psample-saved-01234567-a.folded"
        );
    }

    #[test]
    fn random_tokens_differ() {
        let a: std::collections::HashSet<String> = (0..1000).map(|_| random_token()).collect();
        assert_eq!(a.len(), 1000);
    }
}

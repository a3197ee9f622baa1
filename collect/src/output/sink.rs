//! Where a profile goes, decided from what is at the output path, and the writer for it.
//!
//! - nothing there, or a regular file: a temporary file renamed into place (atomic: a crash
//!   never leaves half a profile under the real name); a replaced file keeps its owner and
//!   mode; if the name cannot be taken the profile is saved beside it under a printed name;
//! - a character or block device, FIFO or socket (`/dev/null`, a terminal, someone
//!   streaming the output): opened and written in place, never unlinked or replaced;
//! - `-`, or a path that is our stdout (`/dev/stdout`): standard output;
//! - a symlink the caller named: followed (to a regular file: that file is replaced
//!   atomically); a symlink to nothing is refused rather than create a file through it.
//!
//! Special files and symlinks that another user owns in a directory others can write are
//! refused: someone may have planted them there to collect or block the profile.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::atomic::{self, parent_of, TempFile};
use super::trust;

/// What the output path names, resolved.
#[derive(Debug)]
enum Dest {
    Stdout,
    /// An existing special file: written where it is.
    InPlace(PathBuf),
    /// A regular file (or none yet) at this path (symlinks resolved).
    File(PathBuf),
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Same file as our standard output or error: `/dev/stdout` and friends, whatever fd 1 is
/// (a pipe, a socket that cannot be opened by name, a file opened for appending).
fn is_our_stdout(target: &Metadata) -> bool {
    let fd1 = nix::sys::stat::fstat(std::io::stdout());
    fd1.is_ok_and(|s| s.st_dev == target.dev() && s.st_ino == target.ino())
}

fn kind_of(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "special file"
    }
}

/// Refuse a symlink or special file another user put in a directory others can write.
fn refuse_planted(path: &Path, entry: &Metadata) -> io::Result<()> {
    if trust::trusted_owner(entry.uid()) {
        return Ok(());
    }
    let dir = parent_of(path);
    let shared = std::fs::metadata(dir).is_ok_and(|d| trust::others_can_write(&d));
    if !shared {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} is a {} owned by uid {} in {}, a directory other users can write: \
             psample does not write through files another user may have planted there; \
             remove it or choose another name",
            path.display(),
            kind_of(entry),
            entry.uid(),
            dir.display()
        ),
    ))
}

fn is_a_directory(path: &Path) -> io::Error {
    invalid(format!(
        "output path {} is a directory; give a file name such as {}/profile.svg",
        path.display(),
        path.display()
    ))
}

fn classify(path: &Path) -> io::Result<Dest> {
    if path.as_os_str() == "-" {
        return Ok(Dest::Stdout);
    }
    let entry = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Dest::File(path.into())),
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("output path {} is not usable: {e}", path.display()),
            ))
        }
    };
    if entry.is_file() {
        return Ok(Dest::File(path.into()));
    }
    if entry.is_dir() {
        return Err(is_a_directory(path));
    }
    refuse_planted(path, &entry)?;
    let target = if entry.file_type().is_symlink() {
        match std::fs::metadata(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(invalid(format!(
                    "{} is a symlink to a file that does not exist; psample does not create \
                     files through symlinks: give the real path",
                    path.display()
                )))
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    } else {
        entry
    };
    if is_our_stdout(&target) {
        Ok(Dest::Stdout)
    } else if target.is_dir() {
        Err(is_a_directory(path))
    } else if target.is_file() {
        Ok(Dest::File(std::fs::canonicalize(path)?))
    } else {
        Ok(Dest::InPlace(path.into()))
    }
}

/// Fail early (before sampling starts) if `path` cannot be written, with the fix.
pub fn check_writable(path: &Path) -> Result<(), String> {
    match classify(path).map_err(|e| e.to_string())? {
        Dest::Stdout => Ok(()),
        Dest::InPlace(p) => nix::unistd::access(&p, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| format!("{} is not writable: {}", p.display(), e.desc())),
        Dest::File(p) => {
            let dir = parent_of(&p);
            let meta = std::fs::metadata(dir).map_err(|e| {
                format!(
                    "output directory {} is not usable: {e}; create it first (mkdir -p {})",
                    dir.display(),
                    dir.display()
                )
            })?;
            if !meta.is_dir() {
                return Err(format!("{} is not a directory", dir.display()));
            }
            // Create and name a real file the way the final write will: access(2) says yes
            // to root for read-only mounts, /proc and /sys, and the profile would be lost.
            atomic::probe(dir)
                .map_err(|e| format!("output directory {} is not writable: {e}", dir.display()))
        }
    }
}

/// The file a profile is being written to; [`OutputFile::commit`] finishes it.
pub struct OutputFile {
    inner: Inner,
}

enum Inner {
    Stdout(io::Stdout),
    InPlace(Box<dyn Write + Send>),
    Replace {
        tmp: TempFile,
        path: PathBuf,
        /// Never replace what is at `path` (generated names in continuous mode).
        new_only: bool,
    },
    /// `path` cannot be written (`why`): the profile is saved beside it.
    Rescue {
        tmp: TempFile,
        path: PathBuf,
        why: io::Error,
    },
}

impl OutputFile {
    /// Start writing to `path` (`None` or `-`: stdout), as the module docs describe.
    pub fn create(path: Option<&Path>) -> io::Result<OutputFile> {
        let Some(path) = path else {
            return Ok(Self::stdout());
        };
        let opened = classify(path).and_then(|dest| match dest {
            Dest::Stdout => Ok(Self::stdout()),
            Dest::InPlace(p) => Ok(OutputFile {
                inner: Inner::InPlace(open_in_place(&p)?),
            }),
            Dest::File(p) => Self::replacing(p, false),
        });
        // What was fine before sampling is not any more (a directory took the name, the
        // FIFO's reader is gone): the profile still goes to a file beside it.
        opened.or_else(|why| Self::rescuing(path, why))
    }

    fn rescuing(path: &Path, why: io::Error) -> io::Result<OutputFile> {
        match TempFile::new_in(parent_of(path), 0o666) {
            Ok(tmp) => Ok(OutputFile {
                inner: Inner::Rescue {
                    tmp,
                    path: path.to_path_buf(),
                    why,
                },
            }),
            Err(_) => Err(why),
        }
    }

    /// Start writing a file that must get the new name `path`: if something is there by
    /// the time it is complete, it is saved under a rescue name instead.
    pub fn create_new(path: &Path) -> io::Result<OutputFile> {
        Self::replacing(path.to_path_buf(), true)
    }

    fn stdout() -> OutputFile {
        OutputFile {
            inner: Inner::Stdout(io::stdout()),
        }
    }

    fn replacing(path: PathBuf, new_only: bool) -> io::Result<OutputFile> {
        // A file we will replace gets its mode at the end; until then nobody else may open
        // it (an open descriptor would outlive a later chmod).
        let mode = if path.exists() { 0o600 } else { 0o666 };
        let tmp = TempFile::new_in(parent_of(&path), mode).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create a file in {}: {e}",
                    parent_of(&path).display()
                ),
            )
        })?;
        Ok(OutputFile {
            inner: Inner::Replace {
                tmp,
                path,
                new_only,
            },
        })
    }

    /// Device and inode the file will have under its name (regular files only).
    pub fn file_id(&self) -> Option<(u64, u64)> {
        match &self.inner {
            Inner::Replace { tmp, .. } | Inner::Rescue { tmp, .. } => tmp.id().ok(),
            _ => None,
        }
    }

    /// Flush, and for a regular file fsync and give it its name. If the name cannot be
    /// taken, the error says where the profile was saved instead.
    pub fn commit(self) -> io::Result<()> {
        match self.inner {
            Inner::Stdout(mut s) => s.flush(),
            Inner::InPlace(mut w) => w.flush(),
            Inner::Replace {
                mut tmp,
                path,
                new_only,
            } => {
                tmp.file_mut().sync_all()?;
                match name_it(&mut tmp, &path, new_only) {
                    Ok(()) => Ok(()),
                    Err(why) => Err(rescue(&mut tmp, &path, why)),
                }
            }
            Inner::Rescue {
                mut tmp, path, why, ..
            } => {
                tmp.file_mut().sync_all()?;
                Err(rescue(&mut tmp, &path, why))
            }
        }
    }
}

/// Open an existing special file for writing where it is: no create, no truncate, no
/// controlling terminal. A socket is connected to instead (open(2) refuses sockets).
fn open_in_place(path: &Path) -> io::Result<Box<dyn Write + Send>> {
    let opened = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path);
    let file: File = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            let s = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot connect to socket {}: {e}", path.display()),
                )
            })?;
            return Ok(Box::new(s));
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    };
    // Replaced by a regular file since it was looked at: writing from offset 0 without
    // truncating would leave a mix of old and new.
    if file.metadata()?.is_file() {
        return Err(invalid(format!(
            "{} changed into a regular file while psample opened it; run again",
            path.display()
        )));
    }
    Ok(Box::new(file))
}

/// Give the finished file its name: link it if the name is free, else rename it over the
/// regular file there, keeping that file's owner and mode.
fn name_it(tmp: &mut TempFile, path: &Path, new_only: bool) -> io::Result<()> {
    // Twice at most: the name may be taken between the check and the link.
    for _ in 0..2 {
        let entry = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match tmp.link_new(path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                r => return r,
            },
            Err(e) => return Err(e),
            Ok(m) => m,
        };
        if new_only {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "another file took that name",
            ));
        }
        if !entry.is_file() {
            return Err(invalid(format!(
                "it is now a {}, which psample does not replace",
                if entry.is_dir() {
                    "directory"
                } else {
                    kind_of(&entry)
                }
            )));
        }
        tmp.set_owner_and_mode(entry.uid(), entry.gid(), entry.mode())?;
        return tmp.rename_over(path);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "the name keeps being taken",
    ))
}

/// Save the profile beside `path` after `why` kept it from its name.
fn rescue(tmp: &mut TempFile, path: &Path, why: io::Error) -> io::Error {
    let msg = match tmp.rescue(path) {
        Ok(saved) => format!(
            "cannot write {}: {why}; the profile was saved as {} instead",
            path.display(),
            saved.display()
        ),
        Err(e) => format!(
            "cannot write {}: {why} (saving it beside failed too: {e})",
            path.display()
        ),
    };
    io::Error::new(why.kind(), msg)
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Stdout(s) => s.write(buf),
            Inner::InPlace(w) => w.write(buf),
            Inner::Replace { tmp, .. } | Inner::Rescue { tmp, .. } => tmp.file_mut().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Stdout(s) => s.flush(),
            Inner::InPlace(w) => w.flush(),
            Inner::Replace { tmp, .. } | Inner::Rescue { tmp, .. } => tmp.file_mut().flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::dir_names as names;
    use std::os::unix::fs::{chown, symlink, PermissionsExt};

    fn write(path: &Path, text: &str) -> io::Result<()> {
        let mut f = OutputFile::create(Some(path))?;
        f.write_all(text.as_bytes())?;
        f.commit()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn mkfifo(p: &Path) {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    /// A directory anyone may add to, like /tmp.
    fn shared_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        d
    }

    #[test]
    fn dev_null_is_written_in_place() {
        let before = std::fs::metadata("/dev/null").unwrap();
        assert!(
            before.file_type().is_char_device() && before.rdev() == libc::makedev(1, 3),
            "the host's /dev/null was replaced before this test ran (restore it: \
             mknod -m 666 /dev/null.new c 1 3 && mv /dev/null.new /dev/null)"
        );
        check_writable(Path::new("/dev/null")).unwrap();
        write(Path::new("/dev/null"), "a;b 1\n").unwrap();
        let after = std::fs::metadata("/dev/null").unwrap();
        assert!(after.file_type().is_char_device());
        assert_eq!(
            (after.ino(), after.rdev(), after.mode()),
            (before.ino(), before.rdev(), before.mode())
        );
    }

    #[test]
    fn a_fifo_is_streamed_to_and_stays_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stream");
        mkfifo(&fifo);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        check_writable(&fifo).unwrap();
        write(&fifo, "a;b 1\n").unwrap();
        assert_eq!(reader.join().unwrap(), "a;b 1\n");
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(names(dir.path()), ["stream"]);
    }

    #[test]
    fn a_socket_is_connected_to_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            io::read_to_string(s).unwrap()
        });
        write(&sock, "a;b 1\n").unwrap();
        assert_eq!(server.join().unwrap(), "a;b 1\n");
        assert!(std::fs::symlink_metadata(&sock)
            .unwrap()
            .file_type()
            .is_socket());
    }

    #[test]
    fn dash_and_our_stdout_mean_stdout() {
        assert!(matches!(classify(Path::new("-")).unwrap(), Dest::Stdout));
        // /dev/stdout is whatever fd 1 is; under the test harness, not a file of ours.
        assert!(matches!(
            classify(Path::new("/dev/stdout")).unwrap(),
            Dest::Stdout
        ));
        assert!(matches!(
            classify(Path::new("/proc/self/fd/1")).unwrap(),
            Dest::Stdout
        ));
    }

    #[test]
    fn a_replaced_file_keeps_its_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.folded");
        std::fs::write(&p, "old 1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        chown(&p, Some(65534), Some(65534)).unwrap();
        write(&p, "new 1\n").unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid(), mode(&p)), (65534, 65534, 0o600));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new 1\n");
        // A new file gets the usual 0666 less the umask.
        let q = dir.path().join("new.folded");
        write(&q, "x 1\n").unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        assert_eq!(mode(&q), 0o666 & !umask);
        assert_eq!(names(dir.path()), ["new.folded", "secret.folded"]);
    }

    #[test]
    fn a_252_character_name_works() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(format!("{}.folded", "p".repeat(245)));
        assert_eq!(p.file_name().unwrap().len(), 252);
        check_writable(&p).unwrap();
        write(&p, "a 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 1\n");
    }

    #[test]
    fn a_directory_planted_at_the_name_gets_the_profile_saved_beside_it() {
        let dir = shared_dir();
        let p = dir.path().join("out.svg");
        let mut f = OutputFile::create(Some(&p)).unwrap();
        f.write_all(b"<svg/>").unwrap();
        // Another user takes the name while we sample.
        std::fs::create_dir(&p).unwrap();
        chown(&p, Some(65534), Some(65534)).unwrap();
        let e = f.commit().unwrap_err().to_string();
        let saved = e
            .split("saved as ")
            .nth(1)
            .unwrap()
            .split(" instead")
            .next()
            .unwrap();
        assert_eq!(std::fs::read_to_string(saved).unwrap(), "<svg/>", "{e}");
        assert!(saved.ends_with("-out.svg"), "{saved}");
        assert!(std::fs::metadata(&p).unwrap().is_dir());
    }

    #[test]
    fn symlinks_the_caller_names_are_followed_dangling_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.folded");
        std::fs::write(&real, "old 1\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.folded");
        symlink(&real, &link).unwrap();
        write(&link, "new 1\n").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new 1\n");
        assert_eq!(mode(&real), 0o640);

        let dangling = dir.path().join("dangling.folded");
        symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let e = check_writable(&dangling).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        assert!(write(&dangling, "x 1\n").is_err());
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn special_files_and_links_another_user_planted_in_a_shared_dir_are_refused() {
        let dir = shared_dir();
        let fifo = dir.path().join("p.folded");
        mkfifo(&fifo);
        let victim = tempfile::tempdir().unwrap();
        let link = dir.path().join("l.folded");
        symlink(victim.path().join("x"), &link).unwrap();
        for p in [&fifo, &link] {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                p.as_path(),
                Some(65534.into()),
                Some(65534.into()),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .unwrap();
            let e = check_writable(p).unwrap_err();
            assert!(
                e.contains("owned by uid 65534") && e.contains("planted"),
                "{e}"
            );
            // Planted after the check: not opened (a FIFO would block), saved beside.
            let e = write(p, "a 1\n").unwrap_err().to_string();
            assert!(e.contains("planted") && e.contains("saved as"), "{e}");
        }
        assert!(names(victim.path()).is_empty());
        let saved = names(dir.path());
        assert_eq!(saved.len(), 4, "{saved:?}");
        assert!(saved.iter().any(|n| n.ends_with("-p.folded")));
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.folded");
        let mut f = OutputFile::create(Some(&p)).unwrap();
        f.write_all(b"partial").unwrap();
        drop(f);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn unwritable_destinations_are_reported_before_sampling() {
        assert!(check_writable(Path::new("/nonexistent-dir/x.svg"))
            .unwrap_err()
            .contains("mkdir -p"));
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(dir.path())
            .unwrap_err()
            .contains("directory"));
        assert!(check_writable(&dir.path().join("ok.folded")).is_ok());
        assert!(check_writable(Path::new("/proc/psample.folded"))
            .unwrap_err()
            .contains("not writable"));
        assert!(names(dir.path()).is_empty(), "the probe leaves nothing");
    }
}

//! Continuous mode's `--out-dir`: a directory nobody else can tamper with, the names of its
//! interval files, and `--keep` retention that deletes only files psample wrote.
//!
//! The directory is resolved one component at a time: a directory another user can write
//! (and that is not sticky) or a symlink another user owns is refused, since they could
//! swap what the path leads to after the check. Missing components are created only below
//! directories that passed.
//!
//! Interval files are named `psample-CMD-KEY-RUN-SEQ-STAMP.EXT`: KEY identifies the target
//! (so runs for other targets sharing the directory never touch each other's files), RUN
//! and SEQ order them (one more than the highest earlier run; one per interval), and STAMP
//! is the UTC start for people — never used for ordering, so a wall clock stepping back
//! changes nothing. Retention deletes the oldest by (RUN, SEQ): files this run wrote
//! (remembered by inode), and files found at start whose name has our form AND that are
//! regular files owned by us with one link and a profile's header — another user cannot
//! create a file owned by us, so nothing can be planted for us to delete.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::{atomic, trust};

/// Symlinks followed while resolving the directory before giving up (as the kernel does).
const MAX_LINKS: u32 = 40;

/// Check `path` component by component, creating missing directories, and return it with
/// every symlink resolved. See the module docs for what is refused.
pub fn secure_dir(path: &Path) -> Result<PathBuf, String> {
    let abs = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut todo: VecDeque<PathBuf> = components(&abs);
    let mut cur = PathBuf::from("/");
    check_dir(&cur, &lstat(&cur)?)?;
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name.as_os_str() == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        let meta = match std::fs::symlink_metadata(&next) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The parent passed: nobody else can have a say in what we create in it.
                match std::fs::create_dir(&next) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("cannot create {}: {e}", next.display())),
                }
                lstat(&next)?
            }
            Err(e) => return Err(format!("{}: {e}", next.display())),
            Ok(m) => m,
        };
        if meta.file_type().is_symlink() {
            if !trust::trusted_owner(meta.uid()) {
                return Err(format!(
                    "{} is a symlink owned by uid {}: psample does not follow a link another \
                     user controls; give the real directory",
                    next.display(),
                    meta.uid()
                ));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(format!("{}: too many levels of symlinks", path.display()));
            }
            let target =
                std::fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            for c in components(&target).into_iter().rev() {
                todo.push_front(c);
            }
            continue;
        }
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", next.display()));
        }
        check_dir(&next, &meta)?;
        cur = next;
    }
    Ok(cur)
}

/// Normal and `..` components of `p` (the root and `.` are implied).
fn components(p: &Path) -> VecDeque<PathBuf> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect()
}

fn lstat(p: &Path) -> Result<std::fs::Metadata, String> {
    std::fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn check_dir(p: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if !trust::trusted_owner(meta.uid()) {
        return Err(format!(
            "{} belongs to uid {}, who could swap what is under it: use a directory owned by \
             root or by you",
            p.display(),
            meta.uid()
        ));
    }
    if trust::others_can_write(meta) && !trust::sticky(meta) {
        return Err(format!(
            "{} can be written by other users (mode {:o}) and is not sticky, so they could \
             replace what psample writes or prunes there: use a private directory (chmod go-w)",
            p.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

/// One interval file: its name, what orders it, and its inode (to delete only that file).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kept {
    name: String,
    order: (u64, u64),
    id: (u64, u64),
}

/// The interval files of one continuous run in its checked directory.
#[derive(Debug)]
pub struct OutDir {
    dir: PathBuf,
    /// `psample-CMD-KEY-`.
    prefix: String,
    /// `.folded`, `.svg`, `.pb.gz`.
    suffix: String,
    run: u64,
    seq: u64,
    /// Oldest first: earlier runs' files found at start, then this run's.
    kept: VecDeque<Kept>,
}

impl OutDir {
    /// Check (and create) `dir` and find earlier runs' files for the same target
    /// (`target_key`, see [`target_key`]) and extension.
    pub fn open(dir: &Path, command: &str, target_key: &str, ext: &str) -> Result<OutDir, String> {
        let dir = secure_dir(dir)?;
        atomic::probe(&dir).map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
        let mut out = OutDir {
            dir,
            prefix: format!("psample-{command}-{target_key}-"),
            suffix: format!(".{ext}"),
            run: 1,
            seq: 0,
            kept: VecDeque::new(),
        };
        let mut earlier = out.earlier_files();
        earlier.sort_by_key(|k| k.order);
        out.run = earlier.last().map_or(1, |k| k.order.0 + 1);
        out.kept = earlier.into();
        Ok(out)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file name for the next interval (`stamp`: its start, for people).
    pub fn next_path(&mut self, stamp: &str) -> PathBuf {
        self.seq += 1;
        let name = format!(
            "{}{:04}-{:06}-{stamp}{}",
            self.prefix, self.run, self.seq, self.suffix
        );
        self.dir.join(name)
    }

    /// Remember a file this run wrote (`path` from [`Self::next_path`], `id` its device and
    /// inode) for retention.
    pub fn wrote(&mut self, path: &Path, id: (u64, u64)) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        self.kept.push_back(Kept {
            name: name.to_string(),
            order: (self.run, self.seq),
            id,
        });
    }

    /// Delete the oldest remembered files beyond `keep`: each only if the name still refers
    /// to a file of ours alone, with the inode written (in a sticky directory someone may
    /// have replaced a file we wrote; a freed inode number can come back, an owner cannot).
    pub fn prune(&mut self, keep: usize) {
        while self.kept.len() > keep {
            let Some(old) = self.kept.pop_front() else {
                break;
            };
            let path = self.dir.join(&old.name);
            let same = std::fs::symlink_metadata(&path)
                .is_ok_and(|m| ours_alone(&m) && (m.dev(), m.ino()) == old.id);
            if same {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Names of the files retention currently tracks, oldest first.
    pub fn tracked(&self) -> Vec<&str> {
        self.kept.iter().map(|k| k.name.as_str()).collect()
    }

    /// (RUN, SEQ) of a name this run's form would have, else None.
    fn parse(&self, name: &str) -> Option<(u64, u64)> {
        let rest = name
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        let mut parts = rest.splitn(3, '-');
        let run = parts.next()?;
        let seq = parts.next()?;
        let stamp = parts.next()?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(run) || !digits(seq) || !is_stamp(stamp) {
            return None;
        }
        Some((run.parse().ok()?, seq.parse().ok()?))
    }

    /// Files of earlier runs for the same target: name, ownership and header all agree.
    fn earlier_files(&self) -> Vec<Kept> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some(order) = self.parse(&name) else {
                continue;
            };
            // DirEntry::metadata does not follow symlinks.
            let Ok(m) = e.metadata() else { continue };
            if !ours_alone(&m) {
                continue;
            }
            if !has_profile_header(&self.dir.join(&name), &self.suffix) {
                continue;
            }
            found.push(Kept {
                name,
                order,
                id: (m.dev(), m.ino()),
            });
        }
        found
    }
}

/// A regular file owned by the user psample runs as, with no other name: only we (or root)
/// can have made it, and deleting it deletes nothing reachable elsewhere.
fn ours_alone(m: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    m.is_file() && m.uid() == me && m.nlink() == 1
}

/// `20261127T032100.123Z`, as [`crate::continuous::utc_stamp`] writes it.
fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 => c == b'T',
            15 => c == b'.',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Whether the file starts the way psample writes that format: gzip for pprof, an XML
/// declaration for SVG, a `stack count` line (or nothing) for folded text.
fn has_profile_header(path: &Path, suffix: &str) -> bool {
    let mut head = [0u8; 512];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let head = &head[..n];
    match suffix {
        ".pb.gz" => head.starts_with(&[0x1f, 0x8b]),
        ".svg" => head.starts_with(b"<?xml"),
        _ => {
            if n == 0 {
                return true;
            }
            let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            let text = String::from_utf8_lossy(line);
            text.rsplit_once(' ')
                .is_some_and(|(stack, count)| !stack.is_empty() && count.parse::<u64>().is_ok())
        }
    }
}

/// A short stable name for what is profiled (FNV-1a of `description`, 8 hex digits).
pub fn target_key(description: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in description.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", (h >> 32) ^ (h & 0xffff_ffff))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{chown, symlink};

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn lchown_nobody(p: &Path) {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            p,
            Some(65534.into()),
            Some(65534.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    #[test]
    fn private_dirs_are_created_and_resolved() {
        let base = tempfile::tempdir().unwrap();
        let got = secure_dir(&base.path().join("a/b/../c")).unwrap();
        assert_eq!(got, std::fs::canonicalize(base.path()).unwrap().join("a/c"));
        assert!(got.is_dir() && base.path().join("a/b").is_dir());
        // Our own symlink is followed; a sticky shared dir on the way is fine.
        let link = base.path().join("mine");
        symlink(&got, &link).unwrap();
        assert_eq!(secure_dir(&link).unwrap(), got);
        let shared = base.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o1777);
        assert!(secure_dir(&shared.join("prof")).is_ok());
    }

    #[test]
    fn a_symlink_another_user_owns_is_not_followed() {
        let base = tempfile::tempdir().unwrap();
        let shared = base.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        chmod(&shared, 0o1777);
        let private = base.path().join("private");
        std::fs::create_dir(&private).unwrap();
        chmod(&private, 0o700);
        let link = shared.join("out");
        symlink(&private, &link).unwrap();
        lchown_nobody(&link);
        let e = secure_dir(&link).unwrap_err();
        assert!(e.contains("symlink owned by uid 65534"), "{e}");
        // Not even a missing directory below it is created.
        assert!(secure_dir(&link.join("sub")).is_err());
        assert!(!private.join("sub").exists());
    }

    #[test]
    fn dirs_others_can_write_or_own_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let e = secure_dir(&open.join("prof")).unwrap_err();
        assert!(e.contains("not sticky") && e.contains("777"), "{e}");
        assert!(!open.join("prof").exists(), "nothing created under it");
        let theirs = base.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        chown(&theirs, Some(65534), Some(65534)).unwrap();
        let e = secure_dir(&theirs).unwrap_err();
        assert!(e.contains("belongs to uid 65534"), "{e}");
        let file = base.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(secure_dir(&file).unwrap_err().contains("not a directory"));
    }

    #[test]
    fn names_parse_back_and_foreign_forms_do_not() {
        let base = tempfile::tempdir().unwrap();
        let mut d = OutDir::open(base.path(), "record", "abcd0123", "pb.gz").unwrap();
        let p = d.next_path("20261231T235959.999Z");
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            name,
            "psample-record-abcd0123-0001-000001-20261231T235959.999Z.pb.gz"
        );
        assert_eq!(d.parse(name), Some((1, 1)));
        for bad in [
            "psample-record-abcd0123-0001-000001-20261231T235959.999Z.folded",
            "psample-offcpu-abcd0123-0001-000001-20261231T235959.999Z.pb.gz",
            "psample-record-abcd0124-0001-000001-20261231T235959.999Z.pb.gz",
            "psample-record-abcd0123-0001-x-20261231T235959.999Z.pb.gz",
            "psample-record-abcd0123-0001-000001-2026.pb.gz",
            "psample-record-20261231T235959.999Z.pb.gz",
        ] {
            assert_eq!(d.parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn target_keys_are_stable_and_distinct() {
        assert_eq!(target_key("pid 1"), target_key("pid 1"));
        assert_ne!(target_key("pid 1"), target_key("pid 2"));
        assert_eq!(target_key("comm nginx").len(), 8);
    }
}

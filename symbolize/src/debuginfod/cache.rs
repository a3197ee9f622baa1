//! The debuginfod client cache, laid out as elfutils lays it out so gdb, perf and psample
//! share one: `$DEBUGINFOD_CACHE_PATH/BUILDID/debuginfo` and `.../executable`, with an empty
//! file of mode 000 as a negative entry ("the servers did not have it") that is trusted for
//! `cache_miss_s` seconds (600 unless the cache says otherwise).
//!
//! Files enter the cache only verified (their build-id matches), by rename from a temporary
//! file created with `O_EXCL | O_NOFOLLOW`, so a reader never sees half a file and nothing
//! is written through a link planted in the cache.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use super::Kind;

/// elfutils' default for how long a negative entry stands.
const DEFAULT_CACHE_MISS: Duration = Duration::from_secs(600);

pub(crate) struct Cache {
    root: PathBuf,
    cache_miss: Duration,
}

/// What the cache says about one file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A file is there (not yet verified).
    Present(PathBuf),
    /// A recent negative entry: the servers did not have it.
    Missing,
    Unknown,
}

impl Cache {
    pub fn new(root: PathBuf) -> Cache {
        let cache_miss = read_setting(&root.join("cache_miss_s"))
            .and_then(|s| s.trim().parse().ok())
            .map_or(DEFAULT_CACHE_MISS, Duration::from_secs);
        Cache { root, cache_miss }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, build_id: &str, kind: Kind) -> PathBuf {
        self.root.join(build_id).join(kind.as_str())
    }

    pub fn lookup(&self, build_id: &str, kind: Kind) -> Entry {
        let path = self.path(build_id, kind);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            return Entry::Unknown;
        };
        if !meta.is_file() {
            return Entry::Unknown;
        }
        if meta.len() == 0 && meta.mode() & 0o777 == 0 {
            let age = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .unwrap_or(Duration::MAX);
            return if age < self.cache_miss {
                Entry::Missing
            } else {
                Entry::Unknown
            };
        }
        Entry::Present(path)
    }

    /// A new temporary file in the entry's directory (created 0700 if missing).
    pub fn temp(&self, build_id: &str, kind: Kind) -> std::io::Result<(PathBuf, File)> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = self.root.join(build_id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        // A link planted in the cache would send our files elsewhere.
        let meta = fs::symlink_metadata(&dir)?;
        // SAFETY: geteuid has no preconditions.
        if !meta.is_dir() || meta.uid() != unsafe { libc::geteuid() } {
            return Err(std::io::Error::other(format!(
                "{} is not a directory of ours",
                dir.display()
            )));
        }
        let name = format!(
            ".{}.psample.{}.{}",
            kind.as_str(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        Ok((path, file))
    }

    /// Moves a verified temporary file into place (readable like elfutils' entries).
    pub fn commit(&self, temp: &Path, build_id: &str, kind: Kind) -> std::io::Result<PathBuf> {
        let path = self.path(build_id, kind);
        fs::set_permissions(temp, fs::Permissions::from_mode(0o644))?;
        fs::rename(temp, &path)?;
        Ok(path)
    }

    /// Records that no server has the file (elfutils' negative entry), replacing nothing
    /// that is already there.
    pub fn mark_missing(&self, build_id: &str, kind: Kind) {
        if let Ok((temp, mut f)) = self.temp(build_id, kind) {
            let _ = f.flush();
            drop(f);
            let path = self.path(build_id, kind);
            let placed =
                fs::set_permissions(&temp, fs::Permissions::from_mode(0o000)).and_then(|()| {
                    if fs::symlink_metadata(&path).is_ok() {
                        Err(std::io::ErrorKind::AlreadyExists.into())
                    } else {
                        fs::rename(&temp, &path)
                    }
                });
            if placed.is_err() {
                let _ = fs::remove_file(&temp);
            }
        }
    }
}

/// A setting file of the cache (a number of seconds): a regular file, not a link, read up to
/// a few bytes, so a FIFO or a huge file planted in the cache costs nothing.
fn read_setting(path: &Path) -> Option<String> {
    use std::io::Read;
    const SETTING_MAX: u64 = 64;
    let file = crate::target_file::open_host(path, false).ok()?;
    let mut text = String::new();
    file.take(SETTING_MAX).read_to_string(&mut text).ok()?;
    Some(text)
}

/// `$DEBUGINFOD_CACHE_PATH`, else `$XDG_CACHE_HOME/debuginfod_client`, else
/// `~/.cache/debuginfod_client` (elfutils' order; its older `~/.debuginfod_client_cache` is
/// used when that directory already exists).
pub(crate) fn default_root() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DEBUGINFOD_CACHE_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    if let Some(legacy) = home.as_ref().map(|h| h.join(".debuginfod_client_cache")) {
        if legacy.is_dir() {
            return Some(legacy);
        }
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(xdg).join("debuginfod_client"));
    }
    home.map(|h| h.join(".cache").join("debuginfod_client"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_in_the_cache_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("ab12")).unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        assert!(cache.temp("ab12", Kind::Debuginfo).is_err());
        cache.mark_missing("ab12", Kind::Debuginfo);
        assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        // A linked entry is no entry.
        fs::create_dir(dir.path().join("cd34")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("cd34/debuginfo")).unwrap();
        assert_eq!(cache.lookup("cd34", Kind::Debuginfo), Entry::Unknown);
    }

    #[test]
    fn entries_commit_and_negative_entries_expire() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        assert_eq!(cache.lookup("ab12", Kind::Debuginfo), Entry::Unknown);
        let (temp, mut f) = cache.temp("ab12", Kind::Debuginfo).unwrap();
        f.write_all(b"x").unwrap();
        let path = cache.commit(&temp, "ab12", Kind::Debuginfo).unwrap();
        assert_eq!(cache.lookup("ab12", Kind::Debuginfo), Entry::Present(path));

        cache.mark_missing("cd34", Kind::Executable);
        assert_eq!(cache.lookup("cd34", Kind::Executable), Entry::Missing);
        // A negative entry never replaces a file.
        cache.mark_missing("ab12", Kind::Debuginfo);
        assert!(matches!(
            cache.lookup("ab12", Kind::Debuginfo),
            Entry::Present(_)
        ));

        // A FIFO as the setting would block a plain read forever: it is not read.
        let fifo = std::ffi::CString::new(
            dir.path()
                .join("cache_miss_s")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let cache = Cache::new(dir.path().to_path_buf());
        assert_eq!(cache.lookup("cd34", Kind::Executable), Entry::Missing);
        fs::remove_file(dir.path().join("cache_miss_s")).unwrap();

        fs::write(dir.path().join("cache_miss_s"), "0\n").unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        assert_eq!(cache.lookup("cd34", Kind::Executable), Entry::Unknown);
        // No temporary file is left behind.
        let left: Vec<_> = fs::read_dir(dir.path().join("cd34")).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}

//! Write-to-temp-then-rename files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file being written under a temporary name next to its destination.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fail early (before sampling starts) if `path` cannot be written.
pub fn check_writable(path: &Path) -> Result<(), String> {
    let dir = parent_of(path);
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
    if path.is_dir() {
        return Err(format!(
            "output path {} is a directory; give a file name such as {}/profile.svg",
            path.display(),
            path.display()
        ));
    }
    // Create (and remove) a real file the way the final write will: access(2) says yes to
    // root for read-only mounts, /proc and /sys, and the profile would be lost at the end.
    let probe = AtomicFile::create(path)
        .map_err(|e| format!("output directory {} is not writable: {e}", dir.display()))?;
    drop(probe);
    Ok(())
}

impl AtomicFile {
    /// A temporary file next to `dest` (never following or replacing anything there).
    pub fn create(dest: &Path) -> io::Result<AtomicFile> {
        let dir = parent_of(dest);
        let base = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "profile".into());
        // O_EXCL + O_NOFOLLOW: never write through a link someone planted in a shared dir.
        for attempt in 0..100u32 {
            let tmp = dir.join(format!(".{base}.{}.{attempt}.tmp", std::process::id()));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(AtomicFile {
                        file: Some(file),
                        tmp,
                        dest: dest.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {e}", tmp.display()),
                    ))
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not find a free temporary file name",
        ))
    }

    /// The temporary file, to write to.
    pub fn as_file_mut(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// fsync and rename into place.
    pub fn commit(mut self) -> io::Result<()> {
        if let Some(f) = self.file.as_ref() {
            f.sync_all()?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot rename into {}: {e}", self.dest.display()),
            )
        })?;
        // Renamed: nothing is left under the temporary name for Drop to remove.
        self.file = None;
        Ok(())
    }
}

impl Drop for AtomicFile {
    /// Not committed (an error while writing, fsync or rename failed): remove the partial
    /// temporary file so failed runs leave nothing behind.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commit_renames_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.folded");
        let mut f = AtomicFile::create(&dest).unwrap();
        f.as_file_mut().write_all(b"a;b 1\n").unwrap();
        assert!(!dest.exists());
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "a;b 1\n");

        let dest2 = dir.path().join("other.folded");
        drop(AtomicFile::create(&dest2).unwrap());
        assert!(!dest2.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_rename_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file onto a non-empty directory fails (EISDIR/ENOTEMPTY).
        let dest = dir.path().join("taken");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("x"), b"x").unwrap();
        let mut f = AtomicFile::create(&dest).unwrap();
        f.as_file_mut().write_all(b"a 1\n").unwrap();
        assert!(f.commit().is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("taken")]);
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
    }
}

//! Finding the bytes behind a mapping as the target process sees them, and its separate debug
//! file.
//!
//! A path in /proc/PID/maps is relative to the target's root (containers, chroots) and may
//! have been deleted or replaced since the process mapped it. We therefore open it through
//! `/proc/PID/root`, check that what we opened is the mapped file (build-id, else inode), and
//! otherwise use `/proc/PID/map_files/START-END`, which is the mapped file itself. Only when the
//! process is gone do we fall back to the host path, and then only if its identity checks out.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use object::Object;

use crate::bytes::FileBytes;
pub use crate::error::FileError;
use crate::procfs;
use crate::{ModuleKind, ModuleSpec};

/// The kernel's vDSO is one or two pages; anything bigger is not a vDSO.
const MAX_VDSO: u64 = 1024 * 1024;
const DELETED_SUFFIX: &str = " (deleted)";
const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";

/// The verified file backing `spec`, as the target sees it: the path we actually opened and
/// its contents. `None` for anonymous mappings or when no trustworthy file can be found.
/// For a `[vdso]` mapping this is the image copied out of the target's memory.
pub fn open_target_file(spec: &ModuleSpec) -> Option<(PathBuf, FileBytes)> {
    try_open_target_file(spec).ok()
}

/// [`open_target_file`], saying why there is no trustworthy file.
pub fn try_open_target_file(spec: &ModuleSpec) -> Result<(PathBuf, FileBytes), FileError> {
    let mut notes = Vec::new();
    resolve(spec, &mut notes).map(|r| (r.path, r.data))
}

/// The separate debug file for the ELF image `binary` backing `spec`: by build-id under
/// `DIR/.build-id/xx/rest.debug`, then by `.gnu_debuglink` (same directory, `.debug/`, and
/// `DIR/<binary's dir>/`, with the CRC checked). `debug_dirs` are searched before
/// /usr/lib/debug (inside the target's root, then on the host).
pub fn find_debug_file(
    spec: &ModuleSpec,
    binary: &[u8],
    debug_dirs: &[PathBuf],
) -> Option<PathBuf> {
    let obj = object::File::parse(binary).ok()?;
    find_debug(spec, &obj, debug_dirs).map(|(p, _)| p)
}

/// Identity of an opened file, used to share one parsed object between every process and
/// mapping that uses the same file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    /// Distinguishes byte images with no file behind them (vDSO copies).
    content_crc: u32,
}

pub(crate) struct Resolved {
    pub path: PathBuf,
    pub data: FileBytes,
    pub key: FileKey,
}

pub(crate) fn clean_path(path: &str) -> &str {
    path.strip_suffix(DELETED_SUFFIX).unwrap_or(path)
}

pub(crate) fn basename(path: &str) -> &str {
    let clean = clean_path(path);
    clean.rsplit('/').next().unwrap_or(clean)
}

/// Locates and verifies the file for `spec`; human-readable notes about surprising findings
/// (replaced files, unverifiable fallbacks) are appended to `notes`.
pub(crate) fn resolve(spec: &ModuleSpec, notes: &mut Vec<String>) -> Result<Resolved, FileError> {
    match spec.kind {
        ModuleKind::Anon => Err(FileError::Anonymous),
        ModuleKind::Vdso => resolve_vdso(spec, notes),
        ModuleKind::File => resolve_file(spec, notes),
    }
}

fn resolve_file(spec: &ModuleSpec, notes: &mut Vec<String>) -> Result<Resolved, FileError> {
    let clean = clean_path(&spec.path);
    if !clean.starts_with('/') {
        return Err(FileError::NotAbsolute(spec.path.clone()));
    }
    let deleted = spec.path.ends_with(DELETED_SUFFIX);
    // A zombie still has /proc/PID but no root or map_files any more: treat it as exited,
    // so the verified host fallback applies (the usual case for `-- CMD` and for targets
    // that exit before symbolization).
    let alive =
        procfs::process_exists(spec.pid) && std::fs::metadata(procfs::root_dir(spec.pid)).is_ok();
    let map_files = PathBuf::from(format!(
        "/proc/{}/map_files/{:x}-{:x}",
        spec.pid, spec.start, spec.end
    ));
    // What the kernel says is mapped: the file behind map_files is authoritative.
    let mapped_identity = if alive {
        std::fs::metadata(&map_files)
            .ok()
            .map(|m| (Some(m.dev()), m.ino()))
    } else {
        None
    };
    let expected = mapped_identity.or(spec.inode.map(|(_, _, ino)| (None, ino)));

    if alive && !deleted {
        match procfs::open_in_root(spec.pid, clean, 0) {
            Ok(file) => {
                let path = procfs::root_dir(spec.pid).join(clean.trim_start_matches('/'));
                match verify(spec, file, path, expected) {
                    Ok(r) => return Ok(r),
                    Err(why) => notes.push(format!(
                        "{} in pid {} is not the mapped file ({why}); using map_files",
                        clean, spec.pid
                    )),
                }
            }
            Err(e) if mapped_identity.is_none() => {
                return Err(FileError::InTargetRoot {
                    path: clean.to_string(),
                    pid: spec.pid,
                    source: e,
                });
            }
            Err(_) => {}
        }
    }
    if alive {
        let file = File::open(&map_files).map_err(|source| FileError::Open {
            path: map_files.clone(),
            source,
        })?;
        return verify(spec, file, map_files, None);
    }
    if deleted {
        return Err(FileError::DeletedAndExited {
            path: clean.to_string(),
            pid: spec.pid,
        });
    }
    // The process is gone, so its root is unknown: only a verifiable host file will do.
    let file = File::open(clean).map_err(|source| FileError::Open {
        path: PathBuf::from(clean),
        source,
    })?;
    if spec.build_id.is_none() && spec.inode.is_none() {
        notes.push(format!(
            "pid {} exited before symbolization and its mapping carried no build-id or inode; \
             {clean} was taken from the host without verification",
            spec.pid
        ));
    }
    verify(spec, file, PathBuf::from(clean), expected)
}

/// Maps `file` and checks it is the mapped file: the kernel-reported build-id if we have one,
/// else the inode (and device when known).
fn verify(
    spec: &ModuleSpec,
    file: File,
    path: PathBuf,
    expected: Option<(Option<u64>, u64)>,
) -> Result<Resolved, FileError> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileError::NotRegular);
    }
    if let Some(want) = &spec.build_id {
        let data = FileBytes::map(&file)?;
        let have = object::File::parse(&*data)
            .ok()
            .and_then(|o| o.build_id().ok().flatten().map(<[u8]>::to_vec));
        return match have {
            Some(have) if build_ids_match(want, &have) => Ok(Resolved {
                path,
                data,
                key: key_of(&meta, 0),
            }),
            Some(_) => Err(FileError::BuildIdDiffers),
            None => Err(FileError::NoBuildId),
        };
    }
    if let Some((dev, ino)) = expected {
        if meta.ino() != ino || dev.is_some_and(|d| d != meta.dev()) {
            return Err(FileError::InodeDiffers);
        }
    }
    let data = FileBytes::map(&file)?;
    Ok(Resolved {
        path,
        data,
        key: key_of(&meta, 0),
    })
}

/// Kernel build-ids may arrive zero-padded to 20 bytes.
pub(crate) fn build_ids_match(kernel: &[u8], elf: &[u8]) -> bool {
    !elf.is_empty()
        && kernel.len() >= elf.len()
        && kernel[..elf.len()] == *elf
        && kernel[elf.len()..].iter().all(|&b| b == 0)
}

fn key_of(meta: &std::fs::Metadata, content_crc: u32) -> FileKey {
    FileKey {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        content_crc,
    }
}

fn resolve_vdso(spec: &ModuleSpec, notes: &mut Vec<String>) -> Result<Resolved, FileError> {
    let image = match read_memory(spec.pid, spec.start, spec.end) {
        Ok(image) => image,
        Err(e) => {
            // Every process of this kernel (and ABI) maps the same vDSO: ours will do. That
            // the process has exited since is normal (system-wide, frames of all processes
            // are expressed in the first vDSO seen); anything else is worth a note.
            if Path::new(&format!("/proc/{}", spec.pid)).exists() {
                notes.push(format!(
                    "cannot read the vDSO of pid {} ({e}); using this process's vDSO",
                    spec.pid
                ));
            }
            own_vdso()?
        }
    };
    object::File::parse(&*image).map_err(FileError::VdsoNotElf)?;
    let crc = crc32fast::hash(&image);
    Ok(Resolved {
        path: PathBuf::from("[vdso]"),
        key: FileKey {
            dev: 0,
            ino: 0,
            size: image.len() as u64,
            mtime: 0,
            mtime_nsec: 0,
            content_crc: crc,
        },
        data: FileBytes::owned(image),
    })
}

fn read_memory(pid: u32, start: u64, end: u64) -> Result<Vec<u8>, FileError> {
    let len = end.saturating_sub(start);
    if len == 0 || len > MAX_VDSO {
        return Err(FileError::VdsoSize(len));
    }
    let mut f = File::open(format!("/proc/{pid}/mem"))?;
    f.seek(SeekFrom::Start(start))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn own_vdso() -> Result<Vec<u8>, FileError> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let line = maps
        .lines()
        .find(|l| l.ends_with("[vdso]"))
        .ok_or(FileError::OwnVdso("no vDSO in this process"))?;
    let bad = || FileError::OwnVdso("bad [vdso] line in /proc/self/maps");
    let range = line.split_whitespace().next().ok_or_else(bad)?;
    let (s, e) = range.split_once('-').ok_or_else(bad)?;
    let hex = |v| u64::from_str_radix(v, 16).map_err(|_| bad());
    read_memory(std::process::id(), hex(s)?, hex(e)?)
}

/// Directories that may hold debug files, most specific first.
fn debug_roots(spec: &ModuleSpec, debug_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = debug_dirs.to_vec();
    if procfs::process_exists(spec.pid) {
        dirs.push(procfs::root_dir(spec.pid).join(SYSTEM_DEBUG_DIR.trim_start_matches('/')));
    }
    dirs.push(PathBuf::from(SYSTEM_DEBUG_DIR));
    dirs
}

pub(crate) fn find_debug(
    spec: &ModuleSpec,
    obj: &object::File<'_>,
    debug_dirs: &[PathBuf],
) -> Option<(PathBuf, FileBytes)> {
    let roots = debug_roots(spec, debug_dirs);
    if let Some(id) = obj.build_id().ok().flatten().filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let rel = format!(".build-id/{}/{}.debug", &hex[..2], &hex[2..]);
        for root in &roots {
            let candidate = root.join(&rel);
            if let Some(data) = open_regular(&candidate) {
                let matches = object::File::parse(&*data)
                    .ok()
                    .and_then(|d| d.build_id().ok().flatten().map(|b| b == id))
                    .unwrap_or(false);
                if matches {
                    return Some((candidate, data));
                }
            }
        }
    }
    let (name, crc) = obj.gnu_debuglink().ok().flatten()?;
    let name = std::str::from_utf8(name).ok()?;
    // A link is a bare file name; anything with a separator could point anywhere.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    let clean = clean_path(&spec.path);
    let bin_dir = Path::new(clean).parent()?;
    let bin_dir_rel = bin_dir.strip_prefix("/").unwrap_or(bin_dir);
    let target_bin_dir = if procfs::process_exists(spec.pid) {
        procfs::root_dir(spec.pid).join(bin_dir_rel)
    } else {
        bin_dir.to_path_buf()
    };
    let mut candidates = vec![
        target_bin_dir.join(name),
        target_bin_dir.join(".debug").join(name),
    ];
    for root in &roots {
        candidates.push(root.join(bin_dir_rel).join(name));
        candidates.push(root.join(name));
    }
    for candidate in candidates {
        if let Some(data) = open_regular(&candidate) {
            if crc32fast::hash(&data) == crc {
                return Some((candidate, data));
            }
        }
    }
    None
}

fn open_regular(path: &Path) -> Option<FileBytes> {
    let f = procfs::open_flags(path, libc::O_RDONLY | libc::O_NONBLOCK).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    FileBytes::map(&f).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_kernel_build_ids_match() {
        assert!(build_ids_match(&[1, 2, 3, 0, 0], &[1, 2, 3]));
        assert!(!build_ids_match(&[1, 2, 4, 0], &[1, 2, 3]));
        assert!(!build_ids_match(&[1, 2], &[1, 2, 3]));
        assert!(!build_ids_match(&[0, 0], &[]));
    }

    #[test]
    fn names() {
        assert_eq!(basename("/usr/lib/libc.so.6 (deleted)"), "libc.so.6");
        assert_eq!(basename("[vdso]"), "[vdso]");
    }

    #[test]
    fn own_vdso_is_elf() {
        let image = own_vdso().expect("vDSO readable");
        assert!(object::File::parse(&*image).is_ok());
    }
}

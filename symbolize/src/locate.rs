//! Finding the bytes behind a mapping as the target process sees them, and its separate debug
//! file.
//!
//! A path in /proc/PID/maps is relative to the target's root (containers, chroots) and may
//! have been deleted or replaced since the process mapped it. [`crate::target_file`] opens it
//! the way the target sees it and checks it is the mapped file (inode, or map_files); here the
//! kernel-reported build-id is checked as well, and separate debug files are searched for in
//! the target's root and on the host.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use object::Object;

pub use crate::bytes::FileBytes;
pub use crate::error::FileError;
use crate::target_file::{self, MappedFile};
use crate::{ModuleKind, ModuleSpec};

/// The kernel's vDSO is one or two pages; anything bigger is not a vDSO.
const MAX_VDSO: u64 = 1024 * 1024;
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

pub(crate) use target_file::clean_path;

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
    let opened = target_file::open_mapped(&mapped_file(spec), notes)?;
    verify(spec, &opened.file, opened.path)
}

/// The mapping behind `spec`, as [`target_file::open_mapped`] takes it.
pub fn mapped_file(spec: &ModuleSpec) -> MappedFile<'_> {
    MappedFile {
        pid: spec.pid,
        pid_start: spec.pid_start,
        path: &spec.path,
        start: spec.start,
        end: spec.end,
        inode: spec.inode,
    }
}

/// Maps `file` (already checked to be the mapped file by inode) and, when the kernel reported
/// a build-id, checks the file carries it.
fn verify(spec: &ModuleSpec, file: &File, path: PathBuf) -> Result<Resolved, FileError> {
    let meta = file.metadata()?;
    let data = FileBytes::map(file)?;
    if let Some(want) = &spec.build_id {
        let have = object::File::parse(&*data)
            .ok()
            .and_then(|o| o.build_id().ok().flatten().map(<[u8]>::to_vec));
        match have {
            Some(have) if build_ids_match(want, &have) => {}
            Some(_) => return Err(FileError::BuildIdDiffers),
            None => return Err(FileError::NoBuildId),
        }
    }
    Ok(Resolved {
        path,
        data,
        key: key_of(&meta, 0),
    })
}

/// A file found elsewhere than through the target (debuginfod's cache), keyed by its own
/// identity on disk.
pub(crate) fn resolved_at(path: PathBuf, data: FileBytes) -> Option<Resolved> {
    let meta = std::fs::symlink_metadata(&path).ok()?;
    Some(Resolved {
        key: key_of(&meta, 0),
        path,
        data,
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

/// Where a debug file may be: a host path (the host's /usr/lib/debug, `--debug-dir`), or a
/// path inside the target's root, resolved without leaving it.
enum Place {
    Host(PathBuf),
    InRoot(u32, String),
}

impl Place {
    fn join(&self, rel: &str) -> Place {
        let rel = rel.trim_start_matches('/');
        match self {
            Place::Host(p) => Place::Host(p.join(rel)),
            Place::InRoot(pid, p) => {
                Place::InRoot(*pid, format!("{}/{rel}", p.trim_end_matches('/')))
            }
        }
    }

    fn open(&self) -> Option<(PathBuf, FileBytes)> {
        let (path, file) = match self {
            Place::Host(p) => (p.clone(), target_file::open_host(p, true).ok()?),
            Place::InRoot(pid, p) => (
                target_file::root_dir(*pid).join(p.trim_start_matches('/')),
                target_file::open_in_root(*pid, p, true).ok()?,
            ),
        };
        Some((path, FileBytes::map(&file).ok()?))
    }
}

/// Directories that may hold debug files, most specific first.
fn debug_roots(spec: &ModuleSpec, debug_dirs: &[PathBuf], in_root: bool) -> Vec<Place> {
    let mut dirs: Vec<Place> = debug_dirs.iter().cloned().map(Place::Host).collect();
    if in_root {
        dirs.push(Place::InRoot(spec.pid, SYSTEM_DEBUG_DIR.into()));
    }
    dirs.push(Place::Host(PathBuf::from(SYSTEM_DEBUG_DIR)));
    dirs
}

pub(crate) fn find_debug(
    spec: &ModuleSpec,
    obj: &object::File<'_>,
    debug_dirs: &[PathBuf],
) -> Option<(PathBuf, FileBytes)> {
    let link = obj
        .gnu_debuglink()
        .ok()
        .flatten()
        .and_then(|(name, crc)| Some((std::str::from_utf8(name).ok()?, crc)));
    find_debug_by(spec, obj.build_id().ok().flatten(), link, debug_dirs)
}

/// The separate debug file by build-id (`.build-id/xx/rest.debug` under each debug root),
/// then by `.gnu_debuglink` name (next to the binary, in its `.debug/`, and under each debug
/// root), the CRC checked. Candidates in the target's root are opened inside it.
pub fn find_debug_by(
    spec: &ModuleSpec,
    build_id: Option<&[u8]>,
    debuglink: Option<(&str, u32)>,
    debug_dirs: &[PathBuf],
) -> Option<(PathBuf, FileBytes)> {
    let in_root = target_file::process_usable(spec.pid, spec.pid_start);
    let roots = debug_roots(spec, debug_dirs, in_root);
    if let Some(id) = build_id.filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let rel = format!(".build-id/{}/{}.debug", &hex[..2], &hex[2..]);
        for root in &roots {
            if let Some((path, data)) = root.join(&rel).open() {
                let matches = object::File::parse(&*data)
                    .ok()
                    .and_then(|d| d.build_id().ok().flatten().map(|b| b == id))
                    .unwrap_or(false);
                if matches {
                    return Some((path, data));
                }
            }
        }
    }
    let (name, crc) = debuglink?;
    // A link is a bare file name; anything with a separator could point anywhere.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    let clean = clean_path(&spec.path);
    // Kernel paths are canonical; one with `..` was not made by the kernel and could climb
    // out of the debug directories joined to it.
    if clean.split('/').any(|c| c == "..") {
        return None;
    }
    let bin_dir = Path::new(clean).parent()?.to_str()?;
    let target_bin_dir = if in_root {
        Place::InRoot(spec.pid, bin_dir.to_string())
    } else {
        Place::Host(PathBuf::from(bin_dir))
    };
    let mut candidates = vec![
        target_bin_dir.join(name),
        target_bin_dir.join(".debug").join(name),
    ];
    for root in &roots {
        candidates.push(root.join(bin_dir).join(name));
        candidates.push(root.join(name));
    }
    candidates.into_iter().find_map(|c| {
        let (path, data) = c.open()?;
        // The binary itself never is its own debug file.
        (path != Path::new(clean) && crc32fast::hash(&data) == crc).then_some((path, data))
    })
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

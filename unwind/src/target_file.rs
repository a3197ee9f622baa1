//! Opening a mapped module the way the profiled process sees it.
//!
//! TODO: switch to `symbolize::locate::open_target_file` / `find_debug_file` once the
//! symbolize crate exposes them; this private helper mirrors their intended behaviour.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::processes::Mapping;

const DELETED_SUFFIX: &str = " (deleted)";

/// Open the file behind `mapping` as process `pid` sees it: through `/proc/PID/root` so
/// containers and chroots resolve correctly, through `/proc/PID/map_files` when the file
/// was deleted or replaced after mapping, and finally by plain path if the process is gone
/// but the inode still matches.
pub(crate) fn open_target_file(pid: u32, mapping: &Mapping) -> Option<File> {
    let path = mapping.path.as_str();
    if !path.starts_with('/') {
        return None;
    }
    if path.ends_with(DELETED_SUFFIX) {
        let by_range = format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            mapping.start, mapping.end
        );
        return File::open(by_range).ok();
    }
    let via_root = format!("/proc/{pid}/root{path}");
    if let Ok(file) = File::open(&via_root) {
        return Some(file);
    }
    let file = File::open(path).ok()?;
    inode_matches(&file, mapping).then_some(file)
}

/// A host path may have been replaced since the process mapped it (package upgrade);
/// using the new file would silently produce wrong stacks, so require the same inode.
fn inode_matches(file: &File, mapping: &Mapping) -> bool {
    match (mapping.inode, file.metadata()) {
        (Some((_, _, ino)), Ok(meta)) => meta.ino() == ino,
        (None, Ok(_)) => true,
        (_, Err(_)) => false,
    }
}

/// Separate debug file for a module: by build-id under `/usr/lib/debug/.build-id`, then by
/// `.gnu_debuglink` next to the file, in its `.debug/` directory, and under `/usr/lib/debug`.
pub(crate) fn find_debug_file(
    pid: u32,
    module_path: &str,
    build_id: Option<&[u8]>,
    debuglink: Option<&str>,
) -> Option<File> {
    let roots = [format!("/proc/{pid}/root"), String::new()];
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let (head, tail) = hex.split_at(2);
        for root in &roots {
            candidates.push(PathBuf::from(format!(
                "{root}/usr/lib/debug/.build-id/{head}/{tail}.debug"
            )));
        }
    }
    if let Some(link) = debuglink.filter(|l| !l.is_empty() && !l.contains('/')) {
        let dir = Path::new(module_path)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("");
        for root in &roots {
            candidates.push(PathBuf::from(format!("{root}{dir}/{link}")));
            candidates.push(PathBuf::from(format!("{root}{dir}/.debug/{link}")));
            candidates.push(PathBuf::from(format!("{root}/usr/lib/debug{dir}/{link}")));
        }
    }
    candidates
        .into_iter()
        .filter(|candidate| candidate.as_os_str() != module_path)
        .find_map(|candidate| File::open(candidate).ok())
}

//! Why symbolization could not use something: typed, so callers can tell a missing file from
//! a replaced one; shown to the user as warnings.

use std::io;
use std::path::PathBuf;

/// Why the file behind a mapping cannot be used to name its addresses.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// An anonymous mapping has no file.
    #[error("anonymous mapping has no file")]
    Anonymous,
    /// The mapping's path is not absolute (the kernel gave something else).
    #[error("{0}: not an absolute path")]
    NotAbsolute(String),
    /// The file could not be opened inside the target's root.
    #[error("{path} in pid {pid}: {source}")]
    InTargetRoot {
        /// The mapped path.
        path: String,
        /// The target.
        pid: u32,
        /// Why.
        source: io::Error,
    },
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Open {
        /// What was opened.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file was deleted and its process exited: nothing to read it from.
    #[error("{path} was deleted and pid {pid} has exited")]
    DeletedAndExited {
        /// The mapped path.
        path: String,
        /// The target.
        pid: u32,
    },
    /// Not a regular file (a device, a FIFO, a directory).
    #[error("not a regular file")]
    NotRegular,
    /// The file has another build-id than the one the kernel reported: it was replaced.
    #[error("build-id differs")]
    BuildIdDiffers,
    /// The kernel reported a build-id, the file has none.
    #[error("file has no build-id")]
    NoBuildId,
    /// The file is another inode than the one mapped: it was replaced.
    #[error("inode differs")]
    InodeDiffers,
    /// Reading the file's metadata or mapping it failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A vDSO range that cannot be one.
    #[error("implausible vDSO size {0}")]
    VdsoSize(u64),
    /// The vDSO image does not parse.
    #[error("vDSO is not ELF: {0}")]
    VdsoNotElf(object::Error),
    /// psample's own vDSO could not be found in /proc/self/maps.
    #[error("{0}")]
    OwnVdso(&'static str),
}

/// Why kernel symbols cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    /// /proc/kallsyms could not be opened or read.
    #[error("/proc/kallsyms: {0}")]
    Read(#[from] io::Error),
}

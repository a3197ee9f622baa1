//! Why symbolization could not use something: typed, so callers can tell a missing file from
//! a replaced one or an over-budget section; shown to the user as warnings.

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
    /// The executable debuginfod served (by build-id) could not be read from its cache.
    #[error("unreadable debuginfod cache entry")]
    UnreadableCacheEntry,
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

/// Why a compressed section was not inflated.
#[derive(Debug, thiserror::Error)]
pub enum SectionError {
    /// The section's compression header does not parse.
    #[error("{0}")]
    Header(object::Error),
    /// Inflating it would exceed a budget.
    #[error("{0}")]
    Budget(#[from] BudgetError),
    /// The declared size does not fit in memory on this machine.
    #[error("size too large")]
    TooLarge,
    /// The declared size could not be allocated.
    #[error("cannot allocate the inflated section")]
    Allocation,
    /// A compression psample does not decode.
    #[error("unsupported compression {0}")]
    Unsupported(String),
    /// The compressed stream is corrupt.
    #[error("invalid {format} data: {detail}")]
    Corrupt {
        /// `zlib` or `zstd`.
        format: &'static str,
        /// What the decoder said.
        detail: String,
    },
    /// The stream and its header disagree about the size.
    #[error("{0}")]
    SizeMismatch(String),
}

/// A section psample refused to inflate to keep its memory bounded.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// Larger than the per-section budget.
    #[error("inflates to {mib} MiB, over the {max_mib} MiB per-section budget")]
    Section {
        /// Its inflated size, MiB.
        mib: u64,
        /// The budget, MiB.
        max_mib: u64,
    },
    /// Would exceed what all inflated sections may hold at once.
    #[error(
        "inflating {mib} MiB more would exceed the {max_mib} MiB held for compressed sections"
    )]
    Held {
        /// Its inflated size, MiB (rounded up).
        mib: u64,
        /// The budget, MiB.
        max_mib: u64,
    },
}

//! Locating tracefs for tracepoint events, through the kernel trait.

use perfring::sys::Kernel;
use perfring::tracepoint::{FileAccess, Tracing};

use crate::Error;

/// Adapter giving perfring's tracepoint code file access through a [`Kernel`].
pub struct Fs<'a>(pub &'a dyn Kernel);

impl FileAccess for Fs<'_> {
    fn read_file(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        self.0.read_file(path)
    }
    fn file_exists(&self, path: &std::path::Path) -> bool {
        self.0.file_exists(path)
    }
    fn mount_tracefs(&self, target: &std::path::Path) -> std::io::Result<()> {
        self.0.mount_tracefs(target)
    }
}

/// Find (or, as root, mount) the tracing directory.
pub fn locate(kernel: &dyn Kernel) -> Result<Tracing, Error> {
    Tracing::locate(&Fs(kernel), crate::perms::is_root()).map_err(|e| Error::new(e.to_string()))
}

//! Shared, immutable file contents: either a read-only mapping of a file or bytes we produced
//! ourselves (inflated sections, decompressed MiniDebugInfo, a vDSO image copied out of a
//! process).
//!
//! DWARF readers keep sub-slices of these alive for as long as the parsed context lives, so
//! the backing storage is reference counted and never moves.

use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::sync::Arc;

use memmap2::Mmap;

use crate::budget::InflateCharge;
use crate::sigbus::Registration;

enum Backing {
    /// Fields drop in order: the SIGBUS registration goes before the range is unmapped.
    Mapped(Registration, Mmap),
    /// Bytes we made; an inflated section holds its budget charge until dropped.
    Owned {
        bytes: Box<[u8]>,
        _charge: Option<InflateCharge>,
    },
}

/// The bytes of one file as the target process sees it. Cheap to clone.
#[derive(Clone)]
pub struct FileBytes(Arc<Backing>);

impl FileBytes {
    /// Maps `file` read-only.
    ///
    /// The file belongs to a profiled process, which may truncate it while we read: the
    /// mapping is registered with [`crate::sigbus`], so such a read yields zeros and sets
    /// [`Self::faulted`] instead of killing psample.
    pub fn map(file: &File) -> std::io::Result<FileBytes> {
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(FileBytes::owned(Vec::new()));
        }
        // SAFETY: the mapping is read-only and private; we never hand out mutable access, and
        // a shrinking file is handled by the SIGBUS guard registered below before any read.
        let map = unsafe { Mmap::map(file)? };
        let reg = Registration::new(map.as_ptr(), map.len()).ok_or_else(|| {
            std::io::Error::other("too many mapped files to guard against truncation")
        })?;
        Ok(FileBytes(Arc::new(Backing::Mapped(reg, map))))
    }

    /// Drops the resident pages of `part` (a sub-slice of these bytes) from this process's
    /// memory once it has been read through; a later read of them faults them back in from
    /// the page cache. Only whole pages inside `part` are dropped; owned bytes are kept.
    pub(crate) fn release(&self, part: &[u8]) {
        let Backing::Mapped(_, map) = &*self.0 else {
            return;
        };
        let base = map.as_ptr() as usize;
        let Some(start) = (part.as_ptr() as usize).checked_sub(base) else {
            return;
        };
        let end = start.saturating_add(part.len()).min(map.len());
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let (lo, hi) = (start.div_ceil(page) * page, end / page * page);
        if hi > lo {
            // SAFETY: the mapping is a read-only file mapping that is never written, so
            // MADV_DONTNEED only drops resident pages: a later access reads the same file
            // contents again, and slices borrowed from it see unchanged bytes.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
            };
        }
    }

    /// Bytes read into memory (a vDSO image, decompressed debug data).
    pub fn owned(data: Vec<u8>) -> FileBytes {
        FileBytes(Arc::new(Backing::Owned {
            bytes: data.into_boxed_slice(),
            _charge: None,
        }))
    }

    /// Inflated bytes that hold `charge` against the inflate budget while any clone lives.
    pub fn charged(data: Vec<u8>, charge: InflateCharge) -> FileBytes {
        FileBytes(Arc::new(Backing::Owned {
            bytes: data.into_boxed_slice(),
            _charge: Some(charge),
        }))
    }

    /// Whether the file shrank under a read of this mapping: what was read may be zeros, so
    /// anything derived from it must be dropped.
    pub fn faulted(&self) -> bool {
        match &*self.0 {
            Backing::Mapped(reg, _) => reg.faulted(),
            Backing::Owned { .. } => false,
        }
    }

    /// A stable sub-range usable as a gimli reader; `None` if `part` does not lie inside `self`.
    pub(crate) fn section_of(&self, part: &[u8]) -> Option<SectionBytes> {
        let base = self.as_ptr() as usize;
        let start = (part.as_ptr() as usize).checked_sub(base)?;
        let end = start.checked_add(part.len())?;
        if end > self.len() {
            return None;
        }
        Some(SectionBytes {
            file: self.clone(),
            start,
            end,
        })
    }

    pub(crate) fn whole(&self) -> SectionBytes {
        SectionBytes {
            file: self.clone(),
            start: 0,
            end: self.len(),
        }
    }
}

impl Default for FileBytes {
    fn default() -> Self {
        FileBytes::owned(Vec::new())
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &*self.0 {
            Backing::Mapped(_, m) => m,
            Backing::Owned { bytes, .. } => bytes,
        }
    }
}

impl AsRef<[u8]> for FileBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileBytes({} bytes)", self.len())
    }
}

/// A range of a [`FileBytes`], the storage type behind our gimli readers.
#[derive(Clone)]
pub(crate) struct SectionBytes {
    file: FileBytes,
    start: usize,
    end: usize,
}

impl SectionBytes {
    /// [`FileBytes::release`] of this range.
    pub(crate) fn release(&self) {
        self.file.release(self);
    }

    /// [`FileBytes::faulted`] of the file this range is in.
    pub(crate) fn faulted(&self) -> bool {
        self.file.faulted()
    }

    /// Whether this range is a mapped file's (read in place), not bytes of our own.
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(&*self.file.0, Backing::Mapped(..))
    }
}

impl Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.file.get(self.start..self.end).unwrap_or(&[])
    }
}

impl fmt::Debug for SectionBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SectionBytes({}..{})", self.start, self.end)
    }
}

// SAFETY: the bytes live in an `Arc`-owned mapping or boxed slice that is never mutated or
// moved while any clone is alive, so the dereferenced address is stable across moves and
// clones of `SectionBytes`.
unsafe impl gimli::StableDeref for SectionBytes {}
// SAFETY: clones share the same `Arc` backing, hence the same address (see above).
unsafe impl gimli::CloneStableDeref for SectionBytes {}

pub(crate) type Reader = gimli::EndianReader<gimli::RunTimeEndian, SectionBytes>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_of_rejects_foreign_slices() {
        let a = FileBytes::owned(vec![1, 2, 3, 4]);
        let b = vec![9u8; 4];
        assert!(a.section_of(&b).is_none());
        let s = a.section_of(&a[1..3]).expect("inside");
        assert_eq!(&*s, &[2, 3]);
    }
}

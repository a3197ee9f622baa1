//! Hiding `data_offset`/`data_size` of perf ring headers, as kernels before 4.1 leave them
//! (zero: the reader must assume data at one page, spanning the rest of the mapping).
//!
//! The header page is written by the kernel once, when the event's ring buffer is created by
//! its first mapping, and every later mapping of the same event shares that buffer. psample
//! reads the two words right after its `mmap` returns, with no system call in between, so
//! they cannot be cleared after the fact. Instead, when psample asks to map a perf fd, the
//! supervisor maps the same fd first (a duplicate taken with pidfd_getfd), clears the words
//! in its own mapping, and only then lets psample's `mmap` run: psample's mapping attaches to
//! the buffer already created, header already cleared. The supervisor's mapping is dropped
//! as soon as psample's exists (its process shows one more perf mapping), so the buffer's
//! life is psample's again.
//!
//! Side effect, stated: the buffer's locked-memory charge falls on the supervisor (root), so
//! an unprivileged psample under the interposer is not limited by perf_event_mlock_kb.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::remote::{self, Remote};

/// Offsets in `struct perf_event_mmap_page` (as in perfring's ring reader).
const DATA_OFFSET: usize = 1040;
const DATA_SIZE: usize = 1048;

/// Longest we keep our mapping if psample's never shows up (its mmap failed).
const KEEP_AT_MOST: Duration = Duration::from_secs(2);

struct Held {
    tgid: u32,
    ptr: *mut libc::c_void,
    len: usize,
    /// Perf mappings the process had before its mmap ran.
    before: usize,
    since: Instant,
    _fd: OwnedFd,
}

// SAFETY: the mapping is owned exclusively by this value and only written once, in `hide`.
unsafe impl Send for Held {}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `hide`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[derive(Default)]
pub struct HiddenHeaders {
    held: Vec<Held>,
}

impl HiddenHeaders {
    /// Before `caller`'s `mmap(NULL, len, …, fd, 0)` of a perf fd runs: create the ring with
    /// its header's data_offset/data_size cleared.
    pub fn hide(&mut self, caller: Remote, fd: i32, len: usize) -> io::Result<()> {
        if len <= DATA_SIZE + 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mapping too small for a ring header",
            ));
        }
        let tgid = caller.tgid()?;
        let dup = caller.dup_fd(fd)?;
        let before = remote::perf_mappings(tgid).unwrap_or(0);
        // SAFETY: a fresh shared mapping of a perf fd we own, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                dup.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both words lie inside the header page of the mapping just made (len was
        // checked), 8-aligned; volatile because the kernel shares the page.
        unsafe {
            ptr.cast::<u8>()
                .add(DATA_OFFSET)
                .cast::<u64>()
                .write_volatile(0);
            ptr.cast::<u8>()
                .add(DATA_SIZE)
                .cast::<u64>()
                .write_volatile(0);
        }
        self.held.push(Held {
            tgid,
            ptr,
            len,
            before,
            since: Instant::now(),
            _fd: dup,
        });
        Ok(())
    }

    /// Whether mappings are waiting for the target's to appear.
    pub fn pending(&self) -> bool {
        !self.held.is_empty()
    }

    /// Drop our mappings whose target mapping now exists (or whose process is gone).
    pub fn release_done(&mut self) {
        self.held.retain(|h| {
            let now = remote::perf_mappings(h.tgid);
            now.is_some_and(|n| n <= h.before) && h.since.elapsed() < KEEP_AT_MOST
        });
    }
}

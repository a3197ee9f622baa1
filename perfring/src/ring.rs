//! The consumer side of a perf ring buffer, and a heap-backed ring that writes like the
//! kernel (for tests and the emulated kernel).
//!
//! Protocol (kernel-compat.md, `include/uapi/linux/perf_event.h`): the kernel advances
//! `data_head` after writing records; we load it with Acquire so the record bytes it covers
//! are visible, consume, then store `data_tail` with Release so the kernel never reuses
//! space we are still reading. Positions grow forever and are masked by `data_size`.

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::record::{record_type, RecordHeader};

/// Offsets of the fields we use in `struct perf_event_mmap_page`.
mod page {
    pub const DATA_HEAD: usize = 1024;
    pub const DATA_TAIL: usize = 1032;
    /// Zero on kernels before 4.1: data then starts at one page and spans the rest.
    pub const DATA_OFFSET: usize = 1040;
    pub const DATA_SIZE: usize = 1048;
    /// Smallest header page holding every field above.
    pub const MIN_HEADER: usize = 1056;
}

/// Publish the tail at least this often so a producer blocked on a full ring can resume
/// while we are still working through a large batch.
const PUBLISH_EVERY: u64 = 64 * 1024;

/// Memory backing one perf ring: header page (struct perf_event_mmap_page) followed by
/// 2^n data pages.
///
/// # Safety
/// `as_ptr()` must point to `len()` bytes that stay mapped, readable and writable for the
/// life of the value, aligned to at least 8 bytes, and not accessed through Rust references
/// elsewhere (the producer writes through raw pointers/atomics only).
pub unsafe trait RingMemory: Send {
    /// Start of the header page.
    fn as_ptr(&self) -> *mut u8;
    /// Total mapped bytes (header page + data).
    fn len(&self) -> usize;
    /// The page size of the mapping.
    fn page_size(&self) -> usize;
    /// Whether nothing is mapped.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a mapping cannot be used as a ring.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Smaller than a header page plus data.
    #[error("ring mapping of {len} bytes is too small (page size {page_size})")]
    TooSmall {
        /// Bytes mapped.
        len: usize,
        /// The page size.
        page_size: usize,
    },
    /// Not 8-byte aligned.
    #[error("ring mapping is not 8-byte aligned")]
    Misaligned,
    /// The header's data area does not fit, or is not a power of two.
    #[error("ring data area (offset {offset}, size {size}) is not a power of two inside the {len}-byte mapping")]
    BadDataArea {
        /// `data_offset`.
        offset: u64,
        /// `data_size`.
        size: u64,
        /// Bytes mapped.
        len: usize,
    },
}

/// Loss and damage counters accumulated by a [`RingBuffer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Sum of `lost` over PERF_RECORD_LOST records: records the kernel dropped (ring full).
    pub lost_records: u64,
    /// Sum of PERF_RECORD_LOST_SAMPLES `lost`.
    pub lost_samples: u64,
    /// Number of PERF_RECORD_LOST records seen.
    pub lost_events: u64,
    /// Times the ring held an impossible header or head/tail pair; each time the unread
    /// rest up to head was discarded.
    pub corrupt: u64,
}

/// Reader of one perf ring.
pub struct RingBuffer {
    mem: Box<dyn RingMemory>,
    data: *const u8,
    /// `data_size - 1`; data_size is a power of two.
    mask: u64,
    size: u64,
    /// data_offset/data_size read zero (kernel < 4.1) and the one-page layout was assumed.
    legacy_header: bool,
    /// Our consumer position; the kernel never writes data_tail, so caching it is exact.
    tail: u64,
    /// Where wrapped records are reassembled; reused to avoid allocation per record.
    scratch: Vec<u8>,
    stats: RingStats,
}

// SAFETY: the raw pointers point into `mem`, which is Send and owned by this value.
unsafe impl Send for RingBuffer {}

impl std::fmt::Debug for RingBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBuffer")
            .field("size", &self.size)
            .field("tail", &self.tail)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// # Safety
/// `base` must be 8-aligned with `offset + 8` bytes mapped for at least `'m`.
unsafe fn atomic_at<'m>(base: *mut u8, offset: usize) -> &'m AtomicU64 {
    // SAFETY: guaranteed by the caller; AtomicU64 has the size and alignment of u64.
    unsafe { &*(base.add(offset) as *const AtomicU64) }
}

impl RingBuffer {
    /// A reader of `mem`, checking the header describes a usable data area.
    pub fn new(mem: Box<dyn RingMemory>) -> Result<RingBuffer, RingError> {
        let (base, len, page_size) = (mem.as_ptr(), mem.len(), mem.page_size());
        if base.is_null() || base as usize % 8 != 0 {
            return Err(RingError::Misaligned);
        }
        if len < page::MIN_HEADER || page_size < page::MIN_HEADER || len <= page_size {
            return Err(RingError::TooSmall { len, page_size });
        }
        // SAFETY: base is 8-aligned and len >= MIN_HEADER, checked above.
        let mut offset = unsafe { atomic_at(base, page::DATA_OFFSET) }.load(Ordering::Relaxed);
        // SAFETY: as above.
        let mut size = unsafe { atomic_at(base, page::DATA_SIZE) }.load(Ordering::Relaxed);
        let legacy_header = offset == 0 && size == 0;
        if legacy_header {
            offset = page_size as u64;
            size = (len - page_size) as u64;
        }
        let fits = offset >= page::MIN_HEADER as u64
            && offset % 8 == 0
            && offset
                .checked_add(size)
                .is_some_and(|end| end <= len as u64);
        if !fits || !size.is_power_of_two() || size < 8 {
            return Err(RingError::BadDataArea { offset, size, len });
        }
        // SAFETY: base is 8-aligned and len >= MIN_HEADER, checked above.
        let tail = unsafe { atomic_at(base, page::DATA_TAIL) }.load(Ordering::Relaxed);
        Ok(RingBuffer {
            // SAFETY: offset + size <= len was checked above.
            data: unsafe { base.add(offset as usize) },
            mem,
            mask: size - 1,
            legacy_header,
            size,
            tail,
            scratch: Vec::new(),
            stats: RingStats::default(),
        })
    }

    fn head_word(&self) -> &AtomicU64 {
        // SAFETY: validated in new(); the mapping lives as long as self.mem.
        unsafe { atomic_at(self.mem.as_ptr(), page::DATA_HEAD) }
    }

    fn tail_word(&self) -> &AtomicU64 {
        // SAFETY: as for head_word.
        unsafe { atomic_at(self.mem.as_ptr(), page::DATA_TAIL) }
    }

    fn publish_tail(&self) {
        self.tail_word().store(self.tail, Ordering::Release);
    }

    /// True when the header page lacked data_offset/data_size (kernels before 4.1), so the
    /// data area was assumed to start at one page and span the rest of the mapping.
    pub fn used_header_fallback(&self) -> bool {
        self.legacy_header
    }

    /// Size of the data area in bytes.
    pub fn data_size(&self) -> u64 {
        self.size
    }

    /// Whether the kernel has published records we have not consumed yet.
    pub fn has_data(&self) -> bool {
        self.head_word().load(Ordering::Acquire) != self.tail
    }

    /// Bytes the kernel has published that we have not consumed (at most the data size on
    /// a sane ring).
    pub fn pending(&self) -> u64 {
        self.head_word()
            .load(Ordering::Acquire)
            .wrapping_sub(self.tail)
    }

    /// Loss and damage counted so far.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// The 8 header bytes at ring position `pos`. The kernel never splits a header, but a
    /// damaged size field can leave `pos` anywhere, so wrap byte by byte.
    fn header_at(&self, pos: u64) -> [u8; RecordHeader::SIZE] {
        let start = (pos & self.mask) as usize;
        if start + RecordHeader::SIZE <= self.size as usize {
            // SAFETY: the 8 bytes lie inside the data area.
            return unsafe {
                self.data
                    .add(start)
                    .cast::<[u8; RecordHeader::SIZE]>()
                    .read()
            };
        }
        let mut out = [0u8; RecordHeader::SIZE];
        for (i, b) in out.iter_mut().enumerate() {
            let at = (pos.wrapping_add(i as u64) & self.mask) as usize;
            // SAFETY: at <= mask < size, inside the data area.
            *b = unsafe { self.data.add(at).read() };
        }
        out
    }

    /// Copies `len` bytes starting at ring position `pos` (wrapping) into `out`.
    fn copy_out(&self, pos: u64, len: usize, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(len);
        let start = (pos & self.mask) as usize;
        let first = len.min(self.size as usize - start);
        // SAFETY: start < size and first <= size - start; len <= size (callers check),
        // so the second part [0, len - first) is inside the data area too. The bytes lie
        // between tail and head, which the producer does not write until we publish.
        unsafe {
            out.extend_from_slice(std::slice::from_raw_parts(self.data.add(start), first));
            out.extend_from_slice(std::slice::from_raw_parts(self.data, len - first));
        }
    }

    /// Reads data_head (acquire), hands each complete record's bytes to `f` (contiguous:
    /// wrapped records are copied into a reusable scratch buffer), publishes data_tail
    /// (release). Returns the number of records seen.
    ///
    /// Work is bounded by the head observed on entry (at most one ring's worth), and the
    /// tail is published every 64 KiB so the kernel gets space back during long batches.
    /// A corrupt header discards everything up to that head and counts `stats().corrupt`.
    pub fn read_records(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let head = self.head_word().load(Ordering::Acquire);
        let mut count = 0;
        if head.wrapping_sub(self.tail) > self.size {
            // Either side is garbage (or the ring was mapped read-only and overwrote us):
            // nothing between tail and head can be trusted.
            self.stats.corrupt += 1;
            self.tail = head;
            self.publish_tail();
            return 0;
        }
        let mut unpublished = 0u64;
        let mut scratch = std::mem::take(&mut self.scratch);
        while self.tail != head {
            let remaining = head.wrapping_sub(self.tail);
            let header = if remaining >= RecordHeader::SIZE as u64 {
                RecordHeader::parse(&self.header_at(self.tail)).ok()
            } else {
                None
            };
            let size = header.map_or(0, |h| u64::from(h.size));
            let Some(header) = header.filter(|_| size >= 8 && size <= remaining) else {
                self.stats.corrupt += 1;
                self.tail = head;
                break;
            };
            let start = (self.tail & self.mask) as usize;
            let len = size as usize;
            if start + len <= self.size as usize {
                // SAFETY: the record lies within the data area, between tail and head.
                let bytes = unsafe { std::slice::from_raw_parts(self.data.add(start), len) };
                self.account(header.record_type, bytes);
                f(bytes);
            } else {
                self.copy_out(self.tail, len, &mut scratch);
                self.account(header.record_type, &scratch);
                f(&scratch);
            }
            count += 1;
            self.tail = self.tail.wrapping_add(size);
            unpublished += size;
            if unpublished >= PUBLISH_EVERY {
                self.publish_tail();
                unpublished = 0;
            }
        }
        self.scratch = scratch;
        self.publish_tail();
        count
    }

    fn account(&mut self, record_type: u32, bytes: &[u8]) {
        let field = |at: usize| {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
        };
        match record_type {
            record_type::LOST => {
                self.stats.lost_events += 1;
                self.stats.lost_records = self
                    .stats
                    .lost_records
                    .saturating_add(field(16).unwrap_or(0));
            }
            record_type::LOST_SAMPLES => {
                self.stats.lost_samples = self
                    .stats
                    .lost_samples
                    .saturating_add(field(8).unwrap_or(0));
            }
            _ => {}
        }
    }
}

/// A page-aligned, zeroed heap allocation shared by a [`HeapRing`] writer and the
/// [`RingMemory`] handles it gives out.
struct HeapAlloc {
    ptr: NonNull<u8>,
    layout: Layout,
    page_size: usize,
}

// SAFETY: the allocation is plain memory; concurrent access follows the ring protocol
// (raw-pointer writes to free space, atomics for head/tail).
unsafe impl Send for HeapAlloc {}
// SAFETY: as for Send: shared access goes through raw pointers and atomics only.
unsafe impl Sync for HeapAlloc {}

impl Drop for HeapAlloc {
    fn drop(&mut self) {
        // SAFETY: allocated in HeapRing::with_layout with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

struct SharedHeap(Arc<HeapAlloc>);

// SAFETY: the allocation lives as long as any handle; it is page-aligned and its length
// is the layout size.
unsafe impl RingMemory for SharedHeap {
    fn as_ptr(&self) -> *mut u8 {
        self.0.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.0.layout.size()
    }
    fn page_size(&self) -> usize {
        self.0.page_size
    }
}

/// What [`HeapRing::push_record`] did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum PushOutcome {
    /// Written.
    Written,
    /// No room: counted as lost, reported by a PERF_RECORD_LOST before the next record
    /// that fits (as the kernel does).
    Lost,
}

/// A ring in heap memory with a producer that behaves like the kernel's: it writes at
/// data_head (wrapping), publishes head with Release, never overwrites unconsumed data,
/// and turns overflow into PERF_RECORD_LOST.
pub struct HeapRing {
    mem: Arc<HeapAlloc>,
    data_offset: usize,
    data_size: u64,
    head: u64,
    lost: u64,
    lost_id: u64,
    lost_trailer: Vec<u8>,
}

impl std::fmt::Debug for HeapRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapRing")
            .field("data_size", &self.data_size)
            .field("head", &self.head)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl HeapRing {
    /// A ring of `data_pages` 4 KiB pages with a 4.1+ header (data_offset/data_size set).
    pub fn new(data_pages: usize) -> Result<HeapRing, RingError> {
        Self::with_layout(4096, data_pages, false)
    }

    /// `legacy_header`: leave data_offset/data_size zero, as kernels before 4.1 do.
    /// `data_pages` must be a power of two (else the reader rejects the ring, as it should).
    pub fn with_layout(
        page_size: usize,
        data_pages: usize,
        legacy_header: bool,
    ) -> Result<HeapRing, RingError> {
        let too_small = RingError::TooSmall {
            len: data_pages.saturating_mul(page_size),
            page_size,
        };
        if page_size < page::MIN_HEADER || !page_size.is_power_of_two() || data_pages == 0 {
            return Err(too_small);
        }
        let len = data_pages
            .checked_add(1)
            .and_then(|n| n.checked_mul(page_size))
            .ok_or(too_small.clone())?;
        let layout = Layout::from_size_align(len, page_size).map_err(|_| too_small)?;
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        let mem = Arc::new(HeapAlloc {
            ptr,
            layout,
            page_size,
        });
        let data_size = (data_pages * page_size) as u64;
        let ring = HeapRing {
            mem,
            data_offset: page_size,
            data_size,
            head: 0,
            lost: 0,
            lost_id: 0,
            lost_trailer: Vec::new(),
        };
        if !legacy_header {
            ring.word(page::DATA_OFFSET)
                .store(page_size as u64, Ordering::Relaxed);
            ring.word(page::DATA_SIZE)
                .store(data_size, Ordering::Relaxed);
        }
        Ok(ring)
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: the allocation is page-aligned and a page is at least MIN_HEADER bytes.
        unsafe { atomic_at(self.mem.ptr.as_ptr(), offset) }
    }

    /// A handle to the same memory, for [`RingBuffer::new`]; the ring stays writable here.
    pub fn memory(&self) -> Box<dyn RingMemory> {
        Box::new(SharedHeap(Arc::clone(&self.mem)))
    }

    /// Bytes of the data area.
    pub fn data_size(&self) -> u64 {
        self.data_size
    }

    /// The event id and sample_id trailer to put in generated PERF_RECORD_LOST records
    /// (the kernel appends the trailer when the event has sample_id_all).
    pub fn set_lost_record(&mut self, id: u64, sample_id_trailer: Vec<u8>) {
        self.lost_id = id;
        self.lost_trailer = sample_id_trailer;
    }

    /// Records dropped since the last LOST record was written.
    pub fn pending_lost(&self) -> u64 {
        self.lost
    }

    /// The producer position.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The consumer position.
    pub fn tail(&self) -> u64 {
        self.word(page::DATA_TAIL).load(Ordering::Acquire)
    }

    /// Writes one record (its bytes, header included) like the kernel: if unreported
    /// losses are pending, a LOST record must fit in front of it or both are dropped.
    pub fn push_record(&mut self, bytes: &[u8]) -> PushOutcome {
        let tail = self.tail();
        let free = self.data_size.saturating_sub(self.head.wrapping_sub(tail));
        let lost_record = if self.lost > 0 {
            let len = 24 + self.lost_trailer.len();
            let mut rec = Vec::with_capacity(len);
            rec.extend_from_slice(&(record_type::LOST).to_ne_bytes());
            rec.extend_from_slice(&0u16.to_ne_bytes());
            rec.extend_from_slice(&(len as u16).to_ne_bytes());
            rec.extend_from_slice(&self.lost_id.to_ne_bytes());
            rec.extend_from_slice(&self.lost.to_ne_bytes());
            rec.extend_from_slice(&self.lost_trailer);
            Some(rec)
        } else {
            None
        };
        let needed = bytes.len() as u64 + lost_record.as_ref().map_or(0, |r| r.len() as u64);
        if needed > free {
            self.lost += 1;
            return PushOutcome::Lost;
        }
        if let Some(rec) = lost_record {
            self.write_at_head(&rec);
            self.lost = 0;
        }
        self.write_at_head(bytes);
        self.publish_head();
        PushOutcome::Written
    }

    /// Writes bytes at head without any space or format check and without publishing —
    /// for building corrupt rings in tests. Wraps like normal writes.
    pub fn push_raw(&mut self, bytes: &[u8]) {
        self.write_at_head(bytes);
    }

    /// Publishes the current head (Release), making written bytes visible to the reader.
    pub fn publish_head(&self) {
        self.word(page::DATA_HEAD)
            .store(self.head, Ordering::Release);
    }

    /// Forces head and tail to arbitrary values (tests of damaged rings); head is published.
    pub fn set_positions(&mut self, head: u64, tail: u64) {
        self.head = head;
        self.word(page::DATA_TAIL).store(tail, Ordering::Release);
        self.publish_head();
    }

    /// Fills the whole data area with `bytes` repeated (for arbitrary-contents tests).
    pub fn fill_data(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        for (i, b) in (0..self.data_size as usize).zip(bytes.iter().cycle()) {
            // SAFETY: i < data_size, inside the data area.
            unsafe { self.data_ptr().add(i).write(*b) }
        }
    }

    fn data_ptr(&self) -> *mut u8 {
        // SAFETY: data_offset + data_size == allocation length.
        unsafe { self.mem.ptr.as_ptr().add(self.data_offset) }
    }

    fn write_at_head(&mut self, bytes: &[u8]) {
        let size = self.data_size as usize;
        // Bytes beyond one ring's worth would overwrite themselves; only the last
        // `size` bytes can survive, exactly as a real wrap would leave them.
        let skip = bytes.len().saturating_sub(size);
        let mut pos = self.head.wrapping_add(skip as u64);
        for chunk in bytes.get(skip..).unwrap_or(&[]).chunks(size) {
            let start = (pos & (self.data_size - 1)) as usize;
            let first = chunk.len().min(size - start);
            // SAFETY: start < size, first <= size - start, chunk.len() - first <= start.
            unsafe {
                std::ptr::copy_nonoverlapping(chunk.as_ptr(), self.data_ptr().add(start), first);
                std::ptr::copy_nonoverlapping(
                    chunk.as_ptr().add(first),
                    self.data_ptr(),
                    chunk.len() - first,
                );
            }
            pos = pos.wrapping_add(chunk.len() as u64);
        }
        self.head = self.head.wrapping_add(bytes.len() as u64);
    }
}

// SAFETY: the same allocation as the handles from `memory()`; page-aligned, `len` bytes.
unsafe impl RingMemory for HeapRing {
    fn as_ptr(&self) -> *mut u8 {
        self.mem.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.mem.layout.size()
    }
    fn page_size(&self) -> usize {
        self.mem.page_size
    }
}

//! A session's rings, and a background thread that empties them when the reader falls
//! behind.
//!
//! The reader consumes records on the thread that also unwinds and symbolizes them, and a
//! single record can take long there: the first DWARF unwind in a process loads the CFI of
//! its libraries (900 ms for rustc's 150 MB driver library, seen for a waker sample taken on
//! top of a compiler). The kernel keeps writing meanwhile and drops what does not fit. The
//! drainer looks at the rings every few milliseconds and copies out every record of a ring
//! that is past half full — a ring the reader, woken at that mark, has not emptied — into a
//! per-ring chunk of memory; [`RingSet::take`] hands each ring's chunk out first (whole, by
//! value: [`crate::order::OrderedReader`] keeps it as it is instead of copying it again),
//! then what is still in the ring. A reader that keeps up never meets the drainer.
//!
//! What is held outside the rings is bounded as a whole: the drainer's chunks plus what the
//! reader reports it still holds ([`RingSet::reader_held`]) stay under the limit, whoever
//! holds them. Past it the drainer stops copying and the kernel drops records and counts
//! them, as without a drainer: a target that makes psample fall behind for good (a flood of
//! mappings) costs lost records, not memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::record::RecordHeader;
use crate::ring::RingBuffer;

/// How often the drainer looks at the rings.
const LOOK_EVERY: Duration = Duration::from_millis(5);

/// One CPU's ring.
pub(crate) struct CpuRing {
    pub cpu: u32,
    pub ring: RingBuffer,
    /// Index into the session's events of the event whose fd owns the mapping.
    pub owner: usize,
    /// Whole records the drainer copied out of `ring`, in ring order, not handed out yet.
    spill: Vec<u8>,
}

impl CpuRing {
    pub fn new(cpu: u32, ring: RingBuffer, owner: usize) -> Self {
        CpuRing {
            cpu,
            ring,
            owner,
            spill: Vec::new(),
        }
    }
}

/// What [`RingSet::take`] hands out of one ring.
pub enum Taken<'a> {
    /// Whole records the drainer copied out earlier, back to back, in ring order (split them
    /// with [`records_in`]).
    Chunk(Vec<u8>),
    /// One record still in the ring (valid during the call only).
    Record(&'a [u8]),
}

/// Every ring of a session, and what the drainer took out of them.
#[derive(Default)]
pub(crate) struct RingSet {
    pub list: Vec<CpuRing>,
    /// Bytes in the rings' spill chunks.
    spilled: usize,
    /// Bytes of records the reader took out and still holds, as it last said.
    reader_held: usize,
    /// Most bytes the drainer held at once, for the session's notes.
    peak: usize,
}

impl RingSet {
    /// Hand every pending record to `f(cpu, taken)`, ring by ring: first the ring's spill
    /// chunk (if the drainer copied any), then each record still in it. Returns the number of
    /// records.
    pub fn take(&mut self, mut f: impl FnMut(u32, Taken<'_>)) -> usize {
        let mut n = 0;
        for r in &mut self.list {
            let cpu = r.cpu;
            if !r.spill.is_empty() {
                let chunk = std::mem::take(&mut r.spill);
                self.spilled -= chunk.len();
                n += records_in(&chunk).count();
                f(cpu, Taken::Chunk(chunk));
            }
            n += r.ring.read_records(|bytes| f(cpu, Taken::Record(bytes)));
        }
        n
    }

    /// Hand every pending record to `f(cpu, bytes)`, in each ring's order (the drainer's
    /// copies first). Returns the number of records.
    pub fn drain(&mut self, mut f: impl FnMut(u32, &[u8])) -> usize {
        self.take(|cpu, taken| match taken {
            Taken::Chunk(chunk) => records_in(&chunk).for_each(|r| f(cpu, r)),
            Taken::Record(bytes) => f(cpu, bytes),
        })
    }

    /// The reader still holds `bytes` of records it took out: they count against the
    /// drainer's limit.
    pub fn reader_held(&mut self, bytes: usize) {
        self.reader_held = bytes;
    }

    pub fn has_data(&self) -> bool {
        self.spilled > 0 || self.list.iter().any(|r| r.ring.has_data())
    }

    /// Most bytes the drainer held at once.
    pub fn spill_peak(&self) -> usize {
        self.peak
    }

    /// Copy out the rings past half full, while what is held outside the rings (the
    /// copies and what the reader holds) stays under `limit` bytes; past it, the kernel
    /// drops records and counts them, as without a drainer.
    fn spill_full_rings(&mut self, limit: usize) {
        for r in &mut self.list {
            let held = self.spilled + self.reader_held;
            let pending = r.ring.pending();
            // A chunk stays addressable with 32-bit offsets (the ordered reader's entries).
            let fits = r.spill.len() as u64 + pending <= u64::from(u32::MAX);
            if held >= limit || pending < r.ring.data_size() / 2 || !fits {
                continue;
            }
            let before = r.spill.len();
            let spill = &mut r.spill;
            r.ring.read_records(|bytes| spill.extend_from_slice(bytes));
            self.spilled += r.spill.len() - before;
            self.peak = self.peak.max(self.spilled);
        }
    }
}

/// The records of a chunk [`RingSet::take`] handed out, in order. Stops at a header that
/// does not fit (never the case for a chunk of whole records as the drainer copies them).
pub fn records_in(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        let size = RecordHeader::parse(rest).ok()?.size as usize;
        if size < RecordHeader::SIZE || size > rest.len() {
            return None;
        }
        let (record, tail) = rest.split_at(size);
        rest = tail;
        Some(record)
    })
}

pub(crate) type SharedRings = Arc<Mutex<RingSet>>;

pub(crate) fn lock(rings: &SharedRings) -> MutexGuard<'_, RingSet> {
    // The set holds no invariant a panicking reader could break halfway.
    rings.lock().unwrap_or_else(|e| e.into_inner())
}

/// The background thread; woken, stopped and joined on drop.
pub(crate) struct Drainer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drainer {
    pub fn start(rings: SharedRings, limit: usize) -> std::io::Result<Drainer> {
        Drainer::start_every(rings, limit, LOOK_EVERY)
    }

    fn start_every(rings: SharedRings, limit: usize, every: Duration) -> std::io::Result<Drainer> {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ring-drainer".into())
                .spawn(move || loop {
                    // Parked, not asleep: the stop unparks it at once (see Drop). A stop
                    // that comes before the park leaves a token that makes it return.
                    std::thread::park_timeout(every);
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    lock(&rings).spill_full_rings(limit);
                })?
        };
        Ok(Drainer {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Drainer {
    /// Wake the drainer rather than wait for its look interval to pass: the join must not
    /// depend on a timer firing. A QEMU guest (TCG, loaded host) was seen with a vCPU that
    /// lost its timer interrupt and idled until some other interrupt came: a drainer asleep
    /// there would never wake, and psample would hang after its last sample (the likely
    /// cause of a CI hang on Debian 6.1). An unpark is a wake-up, which needs no timer.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{HeapRing, PushOutcome};

    fn record(tag: u8) -> Vec<u8> {
        // PERF_RECORD_SAMPLE-typed 16-byte record tagged in its last byte.
        let mut r = vec![0u8; 16];
        r[0..4].copy_from_slice(&9u32.to_ne_bytes());
        r[6..8].copy_from_slice(&16u16.to_ne_bytes());
        r[15] = tag;
        r
    }

    /// A set of one ring of one data page (256 records of 16 bytes), and its producer side.
    fn one_ring(cpu: u32) -> (HeapRing, SharedRings) {
        let heap = HeapRing::with_layout(4096, 1, false).unwrap();
        let ring = RingBuffer::new(heap.memory()).unwrap();
        let set = Arc::new(Mutex::new(RingSet {
            list: vec![CpuRing::new(cpu, ring, 0)],
            ..RingSet::default()
        }));
        (heap, set)
    }

    #[test]
    fn a_stalled_reader_loses_nothing_and_keeps_ring_order() {
        let (mut heap, set) = one_ring(3);
        // The reader is away while 1000 records are written (four times what the ring
        // holds); the drainer looks every 100 records and empties it past half full.
        for i in 0..1000u32 {
            assert_eq!(heap.push_record(&record(i as u8)), PushOutcome::Written);
            if i % 100 == 99 {
                lock(&set).spill_full_rings(1 << 20);
            }
        }
        let mut got = Vec::new();
        let n = lock(&set).drain(|cpu, bytes| {
            assert_eq!(cpu, 3);
            got.push(bytes[15]);
        });
        assert_eq!(n, 1000);
        let want: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        assert_eq!(got, want);
        assert_eq!(lock(&set).list[0].ring.stats().lost_records, 0);
        assert!(lock(&set).spill_peak() > 0);
        assert!(!lock(&set).has_data());
    }

    #[test]
    fn the_copies_are_handed_out_whole_before_the_ring() {
        let (mut heap, set) = one_ring(1);
        for i in 0..200u32 {
            assert_eq!(heap.push_record(&record(i as u8)), PushOutcome::Written);
        }
        lock(&set).spill_full_rings(1 << 20);
        for i in 200..210u32 {
            assert_eq!(heap.push_record(&record(i as u8)), PushOutcome::Written);
        }
        let (mut chunks, mut records) = (Vec::new(), Vec::new());
        let n = lock(&set).take(|cpu, taken| match taken {
            Taken::Chunk(c) => chunks.push((cpu, c)),
            Taken::Record(r) => records.push(r[15]),
        });
        assert_eq!(n, 210);
        assert_eq!(chunks.len(), 1);
        let tags: Vec<u8> = records_in(&chunks[0].1).map(|r| r[15]).collect();
        assert_eq!(tags, (0..200u32).map(|i| i as u8).collect::<Vec<_>>());
        assert_eq!(records, (200..210u32).map(|i| i as u8).collect::<Vec<_>>());
    }

    #[test]
    fn the_copies_stop_at_the_limit() {
        let (mut heap, set) = one_ring(0);
        for i in 0..200u32 {
            assert_eq!(heap.push_record(&record(i as u8)), PushOutcome::Written);
        }
        lock(&set).spill_full_rings(1);
        for i in 0..200u32 {
            assert_eq!(heap.push_record(&record(i as u8)), PushOutcome::Written);
        }
        // Over the limit: the second batch stays in the ring (the kernel drops what follows).
        lock(&set).spill_full_rings(1);
        assert_eq!(lock(&set).spilled, 200 * 16);
        assert_eq!(lock(&set).list[0].ring.pending(), 200 * 16);
    }

    #[test]
    fn what_the_reader_holds_counts_against_the_limit() {
        let (mut heap, set) = one_ring(0);
        for i in 0..200u32 {
            assert_eq!(heap.push_record(&record(i as u8)), PushOutcome::Written);
        }
        lock(&set).reader_held(1 << 20);
        lock(&set).spill_full_rings(1 << 20);
        assert_eq!(lock(&set).spilled, 0);
        lock(&set).reader_held(0);
        lock(&set).spill_full_rings(1 << 20);
        assert_eq!(lock(&set).spilled, 200 * 16);
    }

    #[test]
    fn a_reader_that_keeps_up_never_meets_the_drainer() {
        let (mut heap, set) = one_ring(0);
        let drainer = Drainer::start(set.clone(), 1 << 20).unwrap();
        for round in 0..20u32 {
            for i in 0..100u32 {
                assert_eq!(heap.push_record(&record(i as u8)), PushOutcome::Written);
            }
            // Under half full: the drainer leaves it to the reader.
            assert_eq!(lock(&set).drain(|_, _| {}), 100, "round {round}");
        }
        drop(drainer);
        assert_eq!(lock(&set).spill_peak(), 0);
    }

    /// Stopping must not wait for the drainer's sleep to end: a sleep can last far longer
    /// than asked (forever on a CPU whose timer interrupt was lost, see `Drop`). Here the
    /// look interval is an hour; the stop has to wake the drainer instead.
    #[test]
    fn stopping_wakes_a_sleeping_drainer() {
        let (_heap, set) = one_ring(0);
        let drainer = Drainer::start_every(set, 1 << 20, Duration::from_secs(3600)).unwrap();
        // Let the drainer reach its sleep (the stop must work whenever it comes).
        std::thread::sleep(Duration::from_millis(50));
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(drainer);
            let _ = done.send(());
        });
        // A hang guard, not a timing check: without the wake-up the drop takes an hour.
        assert!(
            stopped.recv_timeout(Duration::from_secs(120)).is_ok(),
            "dropping the drainer waited for its sleep to end"
        );
    }

    #[test]
    fn a_chunk_splits_into_its_records_and_stops_at_garbage() {
        let mut chunk = [record(1), record(2)].concat();
        assert_eq!(records_in(&chunk).count(), 2);
        chunk.extend_from_slice(&[0u8; 5]);
        assert_eq!(records_in(&chunk).count(), 2);
        chunk.truncate(16);
        chunk[6..8].copy_from_slice(&64u16.to_ne_bytes());
        assert_eq!(records_in(&chunk).count(), 0);
    }
}

//! A session's rings, and a background thread that empties them when the reader falls
//! behind.
//!
//! The reader consumes records on the thread that also unwinds and symbolizes them, and a
//! single record can take long there: the first DWARF unwind in a process loads the CFI of
//! its libraries (900 ms for rustc's 150 MB driver library, seen for a waker sample taken on
//! top of a compiler). The kernel keeps writing meanwhile and drops what does not fit. The
//! drainer looks at the rings every few milliseconds and copies out every record of a ring
//! that is past half full — a ring the reader, woken at that mark, has not emptied — into
//! memory, bounded by a limit; [`RingSet::drain`] hands those records out first, in ring
//! order. A reader that keeps up never meets the drainer.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ring::RingBuffer;

/// How often the drainer looks at the rings.
const LOOK_EVERY: Duration = Duration::from_millis(5);

/// One CPU's ring.
pub(crate) struct CpuRing {
    pub cpu: u32,
    pub ring: RingBuffer,
    /// Index into the session's events of the event whose fd owns the mapping.
    pub owner: usize,
}

/// Records the drainer copied out, oldest first.
#[derive(Default)]
struct Spill {
    bytes: Vec<u8>,
    records: Vec<(u32, Range<usize>)>,
    /// Most bytes ever held at once, for the session's notes.
    peak: usize,
}

/// Every ring of a session, and what the drainer took out of them.
#[derive(Default)]
pub(crate) struct RingSet {
    pub list: Vec<CpuRing>,
    spill: Spill,
}

impl RingSet {
    /// Hand every pending record to `f(cpu, bytes)`: first the drained ones, then what is in
    /// the rings. Returns the number of records.
    pub fn drain(&mut self, mut f: impl FnMut(u32, &[u8])) -> usize {
        let mut n = self.spill.records.len();
        for (cpu, range) in self.spill.records.drain(..) {
            f(cpu, &self.spill.bytes[range]);
        }
        self.spill.bytes.clear();
        // A burst may have grown it far beyond what steady reading needs.
        if self.spill.bytes.capacity() > 16 << 20 {
            self.spill.bytes = Vec::new();
        }
        for r in &mut self.list {
            let cpu = r.cpu;
            n += r.ring.read_records(|bytes| f(cpu, bytes));
        }
        n
    }

    pub fn has_data(&self) -> bool {
        !self.spill.records.is_empty() || self.list.iter().any(|r| r.ring.has_data())
    }

    /// Most bytes the drainer held at once.
    pub fn spill_peak(&self) -> usize {
        self.spill.peak
    }

    /// Copy out the rings past half full, while the copies stay under `limit` bytes (past
    /// it, the kernel drops records and counts them, as without a drainer).
    fn spill_full_rings(&mut self, limit: usize) {
        let spill = &mut self.spill;
        for r in &mut self.list {
            if spill.bytes.len() >= limit || r.ring.pending() < r.ring.data_size() / 2 {
                continue;
            }
            let cpu = r.cpu;
            r.ring.read_records(|bytes| {
                let start = spill.bytes.len();
                spill.bytes.extend_from_slice(bytes);
                spill.records.push((cpu, start..spill.bytes.len()));
            });
            spill.peak = spill.peak.max(spill.bytes.len());
        }
    }
}

pub(crate) type SharedRings = Arc<Mutex<RingSet>>;

pub(crate) fn lock(rings: &SharedRings) -> MutexGuard<'_, RingSet> {
    // The set holds no invariant a panicking reader could break halfway.
    rings.lock().unwrap_or_else(|e| e.into_inner())
}

/// The background thread; stopped and joined on drop.
pub(crate) struct Drainer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drainer {
    pub fn start(rings: SharedRings, limit: usize) -> std::io::Result<Drainer> {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ring-drainer".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(LOOK_EVERY);
                        lock(&rings).spill_full_rings(limit);
                    }
                })?
        };
        Ok(Drainer {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Drainer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
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
            list: vec![CpuRing {
                cpu,
                ring,
                owner: 0,
            }],
            spill: Spill::default(),
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
        assert_eq!(lock(&set).spill.records.len(), 200);
        assert_eq!(lock(&set).list[0].ring.pending(), 200 * 16);
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
}

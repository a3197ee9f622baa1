//! Reading a session's per-CPU rings as one stream in time order.
//!
//! Each ring is written by one CPU, in time order (up to the odd nested record, e.g. a sample
//! taken while a tracepoint's record was being written). Records of different CPUs
//! interleave: a task maps a library on CPU 0 and is sampled in it on CPU 1 a moment later,
//! or switches out on one CPU and in on another. [`OrderedReader`] merges the rings: records
//! are read once per round (every ring up to its head), their time read at the position the
//! [`SampleFormat`] implies ([`SampleFormat::time_of`], no parse), and they are held in a
//! per-ring queue until no ring can still deliver an earlier one. Then they are parsed, once,
//! and handed out by a k-way merge of the queues' heads.
//!
//! # How far records are held back
//!
//! A record at time `t` is released when every ring is known to be past `t`:
//!
//! - a ring that has delivered a record at `t_r` will only deliver later ones (its order),
//!   so while every ring is busy the rings' minimum latest time is safe — nothing is held
//!   longer than it takes the slowest ring to be read again;
//! - an idle ring says nothing of its own; for it the round rule perf uses
//!   (FINISHED_ROUND) applies: once every ring has been read again after a round, nothing
//!   older than the newest time seen in that previous round can still appear, because such a
//!   record would already have been in its ring when that round read it. An idle CPU
//!   therefore holds the merge back by one round at most, never indefinitely.
//!
//! The release point is the larger of the two. What is held is therefore at most what one
//! round read, which the ring sizes bound.
//!
//! Records without a time (no sample_id_all, or a format without TIME) keep their place in
//! their ring: they are ordered at the time of the record before them in the same ring.
//! Nothing is dropped: a record that cannot be parsed is counted in [`ReaderStats`], and
//! PERF_RECORD_LOST is accounted by the ring as it is read and delivered like any other.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::event::Session;
use crate::record::{parse_record, Record, SampleFormat};

/// What the reader has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Records read from the rings.
    pub records: u64,
    /// Records that could not be parsed when their turn came (not delivered).
    pub parse_errors: u64,
    /// Records delivered with a time earlier than one delivered before (from a ring that
    /// broke its own order, or after [`OrderedReader::finish`] forced everything out).
    pub out_of_order: u64,
}

/// One record handed out in time order.
#[derive(Clone, Copy, Debug)]
pub struct Ordered<'a> {
    /// The CPU whose ring it came from.
    pub cpu: u32,
    /// Its time, or for a record without one the time of the record before it in its ring
    /// (`None` when no earlier record of that ring had one).
    pub time: Option<u64>,
    /// The parsed record.
    pub record: Record<'a>,
}

/// A record's place in its ring's queue.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Ordering time (its own, or inherited from the record before it in the ring).
    key: u64,
    /// Whether `key` is a time at all (not the 0 of a ring with no timed record yet).
    timed: bool,
    start: usize,
    len: usize,
}

/// Records read from one ring and not yet delivered, oldest first.
#[derive(Default)]
struct RingQueue {
    cpu: u32,
    /// A ring of the session (CPU numbers may have gaps; those have no ring).
    active: bool,
    bytes: Vec<u8>,
    entries: VecDeque<Entry>,
    /// Latest time read from this ring.
    latest: Option<u64>,
}

impl RingQueue {
    fn push(&mut self, time: Option<u64>, record: &[u8]) {
        if let Some(t) = time {
            self.latest = Some(self.latest.map_or(t, |l| l.max(t)));
        }
        // An untimed record stays after the ring's previous record.
        let inherited = self.entries.back().map(|e| (e.key, e.timed));
        let (key, timed) = match (time, inherited) {
            (Some(t), _) => (t, true),
            (None, Some(prev)) => prev,
            (None, None) => (self.latest.unwrap_or(0), self.latest.is_some()),
        };
        let start = self.bytes.len();
        self.bytes.extend_from_slice(record);
        self.entries.push_back(Entry {
            key,
            timed,
            start,
            len: record.len(),
        });
    }

    /// Give back the space of delivered records.
    fn compact(&mut self) {
        match self.entries.front() {
            None => {
                self.bytes.clear();
                // Keep the capacity bounded after a burst.
                if self.bytes.capacity() > 16 << 20 {
                    self.bytes = Vec::new();
                }
            }
            Some(first) if first.start > self.bytes.len() / 2 => {
                let shift = first.start;
                self.bytes.drain(..shift);
                for e in &mut self.entries {
                    e.start -= shift;
                }
            }
            Some(_) => {}
        }
    }
}

/// Merges per-CPU rings into one time-ordered stream (see the module docs).
pub struct OrderedReader {
    fmt: SampleFormat,
    /// Whether records carry times at all; without, every round releases everything in
    /// ring order.
    timed: bool,
    /// Indexed by CPU number.
    rings: Vec<RingQueue>,
    /// Latest time read so far, from any ring.
    max_seen: Option<u64>,
    /// `max_seen` as it was at the end of the previous round.
    previous_round_max: Option<u64>,
    /// Latest time delivered.
    delivered_up_to: Option<u64>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    stats: ReaderStats,
}

impl OrderedReader {
    /// A reader for records in `fmt`'s layout.
    pub fn new(fmt: SampleFormat) -> Self {
        OrderedReader {
            fmt,
            timed: fmt.sample_type & crate::attr::sample::TIME != 0,
            rings: Vec::new(),
            max_seen: None,
            previous_round_max: None,
            delivered_up_to: None,
            heap: BinaryHeap::new(),
            stats: ReaderStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// Records read and not delivered yet.
    pub fn held(&self) -> usize {
        self.rings.iter().map(|r| r.entries.len()).sum()
    }

    fn ring(&mut self, cpu: u32) -> &mut RingQueue {
        let i = cpu as usize;
        if self.rings.len() <= i {
            self.rings.resize_with(i + 1, RingQueue::default);
            for (n, r) in self.rings.iter_mut().enumerate() {
                r.cpu = n as u32;
            }
        }
        let ring = &mut self.rings[i];
        ring.active = true;
        ring
    }

    /// Declares `cpu`'s ring: until it has delivered a record, it may deliver anything, so
    /// only the round rule releases records. [`OrderedReader::pump`] declares a session's
    /// rings itself.
    pub fn add_ring(&mut self, cpu: u32) {
        self.ring(cpu);
    }

    /// Takes one record read from `cpu`'s ring (in ring order).
    pub fn push(&mut self, cpu: u32, record: &[u8]) {
        let time = self.fmt.time_of(record);
        if let Some(t) = time {
            self.max_seen = Some(self.max_seen.map_or(t, |m| m.max(t)));
        }
        self.stats.records += 1;
        self.ring(cpu).push(time, record);
    }

    /// One round: read every ring of `session` up to its head, then deliver in time order
    /// everything no ring can still precede. Returns the records read.
    pub fn pump(&mut self, session: &mut Session, consume: impl FnMut(&Ordered<'_>)) -> usize {
        for cpu in session.ring_cpus() {
            self.add_ring(cpu);
        }
        let n = session.drain(|cpu, bytes| self.push(cpu, bytes));
        self.end_round(consume);
        n
    }

    /// Call after every ring was read once more: delivers what is now safe.
    pub fn end_round(&mut self, consume: impl FnMut(&Ordered<'_>)) {
        let watermark = if self.timed {
            self.watermark()
        } else {
            Some(u64::MAX)
        };
        self.previous_round_max = self.max_seen;
        if let Some(w) = watermark {
            self.release(w, consume);
        }
    }

    /// The latest time no ring can still deliver an earlier record than (module docs).
    fn watermark(&self) -> Option<u64> {
        let mut active = self.rings.iter().filter(|r| r.active).peekable();
        let busy = active
            .peek()
            .is_some()
            .then_some(())
            .and_then(|()| active.try_fold(u64::MAX, |m, r| r.latest.map(|l| m.min(l))));
        match (self.previous_round_max, busy) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Delivers everything held, in time order (at the end of recording).
    pub fn finish(&mut self, consume: impl FnMut(&Ordered<'_>)) {
        self.release(u64::MAX, consume);
        self.previous_round_max = self.max_seen;
    }

    /// k-way merge of the ring queues' heads, up to `watermark` inclusive. Ties go to the
    /// lower CPU; a ring's own records never change places.
    fn release(&mut self, watermark: u64, mut consume: impl FnMut(&Ordered<'_>)) {
        self.heap.clear();
        for r in &self.rings {
            if let Some(e) = r.entries.front().filter(|e| e.key <= watermark) {
                self.heap.push(Reverse((e.key, r.cpu)));
            }
        }
        while let Some(Reverse((_, cpu))) = self.heap.pop() {
            let ring = &mut self.rings[cpu as usize];
            let Some(e) = ring.entries.pop_front() else {
                continue;
            };
            if let Some(next) = ring.entries.front().filter(|n| n.key <= watermark) {
                self.heap.push(Reverse((next.key, cpu)));
            }
            if e.timed {
                if self.delivered_up_to.is_some_and(|d| e.key < d) {
                    self.stats.out_of_order += 1;
                }
                self.delivered_up_to = Some(self.delivered_up_to.map_or(e.key, |d| d.max(e.key)));
            }
            let bytes = ring.bytes.get(e.start..e.start + e.len).unwrap_or(&[]);
            match parse_record(bytes, &self.fmt) {
                Ok(record) => consume(&Ordered {
                    cpu,
                    time: e.timed.then_some(e.key),
                    record,
                }),
                Err(_) => self.stats.parse_errors += 1,
            }
        }
        for r in &mut self.rings {
            r.compact();
        }
    }
}

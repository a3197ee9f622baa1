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
//! round read, which the ring sizes bound — plus, when the session's background drainer
//! copied rings out while this reader was busy, those copies: they come as one chunk per
//! ring ahead of what is still in it, so a ring and its copies read as one bigger ring and
//! the rules above hold unchanged. The chunk is kept as it is (not copied again), and the
//! reader tells the session how much it holds, which the drainer's limit counts.
//!
//! Records without a time (no sample_id_all, or a format without TIME) keep their place in
//! their ring: they are ordered at the time of the record before them in the same ring.
//! Nothing is dropped: a record that cannot be parsed is counted in [`ReaderStats`], and
//! PERF_RECORD_LOST is accounted by the ring as it is read and delivered like any other.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::drain::{records_in, Taken};
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

/// A record's place in its ring's queue (24 bytes: one per record held, which a flood of
/// small records makes many).
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Ordering time (its own, or inherited from the record before it in the ring).
    key: u64,
    /// Sequence number of the chunk holding it.
    chunk: u64,
    /// Offset in the chunk (chunks stay under [`CHUNK_MAX`]).
    start: u32,
    /// The record's size (a perf record's size is 16 bits).
    len: u16,
    /// Whether `key` is a time at all (not the 0 of a ring with no timed record yet).
    timed: bool,
}

/// Bytes a chunk may hold, so that offsets in it fit an [`Entry`].
const CHUNK_MAX: usize = u32::MAX as usize;

const ENTRY_SIZE: usize = std::mem::size_of::<Entry>();

/// Capacity of a spent chunk kept for the next round's copies: what steady reading needs;
/// the larger chunks of a burst are given back.
const SPARE_MAX: usize = 1 << 20;

/// Records read from one ring and not yet delivered, oldest first.
#[derive(Default)]
struct RingQueue {
    cpu: u32,
    /// A ring of the session (CPU numbers may have gaps; those have no ring).
    active: bool,
    /// The records' bytes, oldest first: the reader's own copies, and chunks the session's
    /// drainer copied out, kept as they came.
    chunks: VecDeque<Vec<u8>>,
    /// Sequence number of `chunks[0]`.
    first_chunk: u64,
    /// Whether the last chunk is the reader's own, still appended to.
    own_open: bool,
    /// A spent own chunk, kept for its capacity.
    spare: Vec<u8>,
    entries: VecDeque<Entry>,
    /// Latest time read from this ring.
    latest: Option<u64>,
}

impl RingQueue {
    /// Sequence number the next chunk pushed gets.
    fn next_chunk(&self) -> u64 {
        self.first_chunk + self.chunks.len() as u64
    }

    /// Queue the record at `start..start + len` of chunk `chunk`.
    fn enqueue(&mut self, time: Option<u64>, chunk: u64, start: u32, len: u16) {
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
        self.entries.push_back(Entry {
            key,
            chunk,
            start,
            len,
            timed,
        });
    }

    /// A record read from the ring, copied into the reader's own chunk. False for one that
    /// is not a perf record (over 64 KiB).
    fn push(&mut self, time: Option<u64>, record: &[u8]) -> bool {
        let Ok(len) = u16::try_from(record.len()) else {
            return false;
        };
        let own = match self.chunks.back_mut() {
            Some(own) if self.own_open && own.len() + record.len() <= CHUNK_MAX => own,
            _ => {
                self.chunks.push_back(std::mem::take(&mut self.spare));
                self.own_open = true;
                self.chunks.back_mut().unwrap_or(&mut self.spare)
            }
        };
        let start = own.len() as u32;
        own.extend_from_slice(record);
        let chunk = self.next_chunk() - 1;
        self.enqueue(time, chunk, start, len);
        true
    }

    /// A chunk of whole records the drainer copied out, kept as it is. Returns how many
    /// records it holds and the latest time among them.
    fn adopt(&mut self, fmt: &SampleFormat, chunk: Vec<u8>) -> (u64, Option<u64>) {
        let seq = self.next_chunk();
        let (mut n, mut latest, mut start) = (0, None, 0usize);
        for record in records_in(&chunk) {
            // The drainer keeps chunks under CHUNK_MAX; what lies beyond is not queued.
            if start + record.len() > CHUNK_MAX {
                break;
            }
            let time = fmt.time_of(record);
            latest = latest.max(time);
            self.enqueue(time, seq, start as u32, record.len() as u16);
            start += record.len();
            n += 1;
        }
        self.chunks.push_back(chunk);
        self.own_open = false;
        (n, latest)
    }

    fn bytes(&self, e: &Entry) -> &[u8] {
        let chunk = e
            .chunk
            .checked_sub(self.first_chunk)
            .and_then(|c| usize::try_from(c).ok());
        let start = e.start as usize;
        chunk
            .and_then(|c| self.chunks.get(c))
            .and_then(|c| c.get(start..start + usize::from(e.len)))
            .unwrap_or(&[])
    }

    /// Give back the chunks whose records were all delivered (keeping one spent own chunk's
    /// capacity for the next round, when it is not too large).
    fn compact(&mut self) {
        let keep_from = self
            .entries
            .front()
            .map_or(self.first_chunk + self.chunks.len() as u64, |e| e.chunk);
        while self.first_chunk < keep_from {
            let Some(mut spent) = self.chunks.pop_front() else {
                break;
            };
            self.first_chunk += 1;
            if spent.capacity() <= SPARE_MAX && spent.capacity() > self.spare.capacity() {
                spent.clear();
                self.spare = spent;
            }
        }
        if self.chunks.is_empty() {
            self.own_open = false;
        }
        // After a burst, give back the queue's room too.
        if self.entries.is_empty() && self.entries.capacity() > SPARE_MAX / ENTRY_SIZE {
            self.entries = VecDeque::new();
        }
    }

    /// Everything given back (nothing is held any more).
    fn release_memory(&mut self) {
        if self.entries.is_empty() {
            self.chunks = VecDeque::new();
            self.own_open = false;
            self.spare = Vec::new();
            self.entries = VecDeque::new();
        }
    }

    /// Bytes held: the records' (and of delivered ones sharing a chunk with them), and
    /// their queue entries'.
    fn held(&self) -> usize {
        let entries = self.entries.len() * ENTRY_SIZE;
        self.chunks.iter().map(Vec::len).sum::<usize>() + entries
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

    /// Bytes of the records read and not delivered yet (and of delivered ones sharing a
    /// chunk with them), with what queueing them takes.
    pub fn held_bytes(&self) -> usize {
        self.rings.iter().map(RingQueue::held).sum()
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
        if !self.ring(cpu).push(time, record) {
            self.stats.parse_errors += 1;
        }
    }

    /// One round: read every ring of `session` up to its head (after what its background
    /// drainer copied out of it), then deliver in time order everything no ring can still
    /// precede. Returns the records read.
    pub fn pump(&mut self, session: &mut Session, consume: impl FnMut(&Ordered<'_>)) -> usize {
        for cpu in session.ring_cpus() {
            self.add_ring(cpu);
        }
        let mut n = 0;
        session.take(|cpu, taken| match taken {
            Taken::Record(bytes) => {
                self.push(cpu, bytes);
                n += 1;
            }
            Taken::Chunk(chunk) => n += self.adopt(cpu, chunk),
        });
        // While the records are consumed (which can be slow), the drainer counts them.
        session.reader_holds(self.held_bytes());
        self.end_round(consume);
        session.reader_holds(self.held_bytes());
        n
    }

    /// Takes a chunk of whole records copied out of `cpu`'s ring (in ring order, before
    /// anything read from the ring itself later). Returns the records in it.
    fn adopt(&mut self, cpu: u32, chunk: Vec<u8>) -> usize {
        let fmt = self.fmt;
        let (n, latest) = self.ring(cpu).adopt(&fmt, chunk);
        self.max_seen = self.max_seen.max(latest);
        self.stats.records += n;
        n as usize
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

    /// Delivers everything held, in time order (at the end of recording), and gives back
    /// the memory that held it.
    pub fn finish(&mut self, consume: impl FnMut(&Ordered<'_>)) {
        self.release(u64::MAX, consume);
        self.previous_round_max = self.max_seen;
        for r in &mut self.rings {
            r.release_memory();
        }
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
            let bytes = ring.bytes(&e);
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

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: usize = ENTRY_SIZE;

    #[test]
    fn an_entry_is_small() {
        assert_eq!(ENTRY_SIZE, 24);
    }

    fn fmt() -> SampleFormat {
        SampleFormat {
            sample_type: crate::attr::sample::TIME,
            ..SampleFormat::default()
        }
    }

    /// A PERF_RECORD_SAMPLE carrying only its time.
    fn sample(time: u64) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&crate::record::record_type::SAMPLE.to_ne_bytes());
        r.extend_from_slice(&0u16.to_ne_bytes());
        r.extend_from_slice(&16u16.to_ne_bytes());
        r.extend_from_slice(&time.to_ne_bytes());
        r
    }

    fn times(r: &mut OrderedReader, finish: bool) -> Vec<u64> {
        let mut got = Vec::new();
        let take = |o: &Ordered<'_>| got.push(o.time.unwrap_or(0));
        if finish {
            r.finish(take);
        } else {
            r.end_round(take);
        }
        got
    }

    #[test]
    fn a_drained_chunk_reads_as_the_front_of_its_ring() {
        let mut r = OrderedReader::new(fmt());
        r.add_ring(0);
        r.add_ring(1);
        // CPU 0: the drainer's copies (times 1 and 3), then what was still in the ring (5).
        let chunk = [sample(1), sample(3)].concat();
        assert_eq!(r.adopt(0, chunk), 2);
        r.push(0, &sample(5));
        r.push(1, &sample(2));
        r.push(1, &sample(6));
        assert_eq!(times(&mut r, false), vec![1, 2, 3, 5]);
        assert!(r.held_bytes() >= 16 + ENTRY);
        assert_eq!(times(&mut r, true), vec![6]);
        assert_eq!(r.held_bytes(), 0);
        assert_eq!(r.stats().records, 5);
        assert_eq!(r.stats().out_of_order, 0);
    }

    #[test]
    fn a_chunk_is_given_back_once_its_records_are_delivered() {
        let mut r = OrderedReader::new(fmt());
        r.add_ring(0);
        r.add_ring(1);
        r.adopt(0, [sample(10), sample(20)].concat());
        r.push(1, &sample(15));
        // Ring 1 has reached only 15: the chunk stays for 20, ring 1's own copy is spent.
        assert_eq!(times(&mut r, false), vec![10, 15]);
        assert_eq!(r.held_bytes(), 32 + ENTRY);
        r.push(1, &sample(30));
        assert_eq!(times(&mut r, false), vec![20]);
        // The chunk is given back; what is left is ring 1's copy of 30.
        assert_eq!(r.held_bytes(), 16 + ENTRY);
    }
}

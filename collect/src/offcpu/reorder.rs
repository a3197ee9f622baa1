//! Merging per-CPU rings into one time-ordered stream.
//!
//! Each ring is in time order, but a task switches out on one CPU and in on another, so the
//! interval engine needs the rings merged. Records are held until no ring can still deliver
//! an earlier one. The safe point is the round rule perf uses (FINISHED_ROUND): after every
//! ring has been read once more, nothing older than the newest time seen before the previous
//! round can still appear, because such a record was already committed when that round read
//! its ring. An idle CPU therefore never stalls the merge, which a per-ring minimum would.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

struct Pending<T> {
    time: u64,
    /// Push order: ties in time keep the order they were read in.
    seq: u64,
    item: T,
}

impl<T> PartialEq for Pending<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl<T> Eq for Pending<T> {}
impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Pending<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

pub struct Reorder<T> {
    pending: BinaryHeap<Reverse<Pending<T>>>,
    seq: u64,
    /// Latest time pushed per ring, for untimed records (a LOST without sample_id_all) that
    /// belong after the ring's last record.
    latest: Vec<Option<u64>>,
    max_seen: Option<u64>,
    /// `max_seen` as it was at the previous [`Reorder::end_round`].
    previous_round_max: Option<u64>,
    released_up_to: Option<u64>,
    late: u64,
}

impl<T> Reorder<T> {
    pub fn new(rings: usize) -> Reorder<T> {
        Reorder {
            pending: BinaryHeap::new(),
            seq: 0,
            latest: vec![None; rings],
            max_seen: None,
            previous_round_max: None,
            released_up_to: None,
            late: 0,
        }
    }

    pub fn push(&mut self, ring: usize, time: u64, item: T) {
        if ring >= self.latest.len() {
            self.latest.resize(ring + 1, None);
        }
        if let Some(latest) = self.latest.get_mut(ring) {
            *latest = Some(latest.map_or(time, |l| l.max(time)));
        }
        self.max_seen = Some(self.max_seen.map_or(time, |m| m.max(time)));
        if self.released_up_to.is_some_and(|r| time < r) {
            // Released late, after newer records: the consumer must tolerate it (the interval
            // engine clamps such times).
            self.late += 1;
        }
        self.pending.push(Reverse(Pending {
            time,
            seq: self.seq,
            item,
        }));
        self.seq += 1;
    }

    /// The latest time pushed from `ring`.
    pub fn latest(&self, ring: usize) -> Option<u64> {
        self.latest.get(ring).copied().flatten()
    }

    /// Releases, in time order, everything at or before `watermark`.
    pub fn drain_ready(&mut self, watermark: u64, mut out: impl FnMut(u64, T)) {
        while self
            .pending
            .peek()
            .is_some_and(|Reverse(p)| p.time <= watermark)
        {
            if let Some(Reverse(p)) = self.pending.pop() {
                out(p.time, p.item);
            }
        }
        self.released_up_to = Some(self.released_up_to.map_or(watermark, |r| r.max(watermark)));
    }

    /// Call after each pass that read every ring; releases what can no longer be preceded.
    pub fn end_round(&mut self, out: impl FnMut(u64, T)) {
        let watermark = self.previous_round_max;
        self.previous_round_max = self.max_seen;
        if let Some(watermark) = watermark {
            self.drain_ready(watermark, out);
        }
    }

    /// Releases everything (at the end of recording).
    pub fn drain_all(&mut self, out: impl FnMut(u64, T)) {
        self.drain_ready(u64::MAX, out);
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Records pushed with a time below what had already been released.
    pub fn late(&self) -> u64 {
        self.late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect<T>(
        r: &mut Reorder<T>,
        f: impl FnOnce(&mut Reorder<T>, &mut dyn FnMut(u64, T)),
    ) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        f(r, &mut |t, x| out.push((t, x)));
        out
    }

    #[test]
    fn merges_rings_in_time_order_with_stable_ties() {
        let mut r = Reorder::new(2);
        r.push(0, 10, "a0");
        r.push(0, 30, "a1");
        r.push(1, 10, "b0");
        r.push(1, 20, "b1");
        let got = collect(&mut r, |r, f| r.drain_all(f));
        assert_eq!(got, vec![(10, "a0"), (10, "b0"), (20, "b1"), (30, "a1")]);
        assert!(r.is_empty());
    }

    #[test]
    fn rounds_hold_back_what_a_slower_ring_may_still_precede() {
        let mut r = Reorder::new(2);
        // Round 1: CPU 0 is ahead.
        r.push(0, 100, 1);
        r.push(1, 40, 2);
        assert!(
            collect(&mut r, |r, f| r.end_round(f)).is_empty(),
            "first round releases nothing"
        );
        // Round 2: CPU 1 delivers a record older than CPU 0's 100.
        r.push(1, 90, 3);
        r.push(0, 150, 4);
        let got = collect(&mut r, |r, f| r.end_round(f));
        assert_eq!(got, vec![(40, 2), (90, 3), (100, 1)]);
        // Round 3 with nothing new: everything seen before round 2 ended is safe.
        let got = collect(&mut r, |r, f| r.end_round(f));
        assert_eq!(got, vec![(150, 4)]);
        assert_eq!(r.late(), 0);
    }

    #[test]
    fn an_idle_ring_does_not_stall_the_merge() {
        let mut r = Reorder::new(4);
        r.push(0, 5, 'x');
        let _ = collect(&mut r, |r, f| r.end_round(f));
        let got = collect(&mut r, |r, f| r.end_round(f));
        assert_eq!(got, vec![(5, 'x')]);
    }

    #[test]
    fn late_records_are_counted_and_still_delivered() {
        let mut r = Reorder::new(1);
        r.push(0, 50, 1);
        let _ = collect(&mut r, |r, f| r.drain_ready(60, f));
        r.push(3, 40, 2); // ring index beyond `new`'s count grows the table
        assert_eq!(r.late(), 1);
        assert_eq!(r.latest(3), Some(40));
        assert_eq!(collect(&mut r, |r, f| r.drain_all(f)), vec![(40, 2)]);
    }

    proptest! {
        #[test]
        fn rounds_deliver_a_globally_ordered_stream(
            records in proptest::collection::vec((0usize..4, 0u64..1000), 0..80),
            round_step in 5u64..200,
        ) {
            // A live model: in each round ring i is read a little later than ring i-1, so it
            // holds records up to `bound + i`; a record is read once its time has passed.
            let mut by_ring: Vec<Vec<u64>> = vec![Vec::new(); 4];
            for &(ring, time) in &records {
                by_ring[ring].push(time);
            }
            for ring in &mut by_ring {
                ring.sort();
            }
            let mut cursors = [0usize; 4];
            let mut r = Reorder::new(4);
            let mut out = Vec::new();
            let mut bound = 0u64;
            while bound < 1000 + round_step {
                for (i, ring) in by_ring.iter().enumerate() {
                    while let Some(&t) = ring.get(cursors[i]) {
                        if t > bound + i as u64 {
                            break;
                        }
                        r.push(i, t, (i, t));
                        cursors[i] += 1;
                    }
                }
                r.end_round(|t, x| out.push((t, x)));
                bound += round_step;
            }
            r.drain_all(|t, x| out.push((t, x)));
            prop_assert_eq!(out.len(), records.len());
            prop_assert!(out.windows(2).all(|w| w[0].0 <= w[1].0), "{:?}", out);
            prop_assert_eq!(r.late(), 0);
        }
    }
}

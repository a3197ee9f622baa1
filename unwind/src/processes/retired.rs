//! Code mappings no process maps any more, kept so frames already collected in them still
//! symbolize — within budget. A process that loops `mmap(PROT_EXEC)`/`munmap` would otherwise
//! grow the arena by one mapping per iteration, for as long as psample runs.
//!
//! Each process (the first one a mapping was seen in) keeps at most
//! [`CODE_MAPPINGS_RETIRED_PER_PROCESS`] retired mappings and all processes together
//! [`CODE_MAPPINGS_RETIRED_MAX`]; beyond that the oldest are evicted (least recently
//! unmapped first). Evicted ids are remembered as merged ranges, so a frame in evicted
//! anonymous code can still say `[jit]`.

use std::collections::{HashMap, VecDeque};

use symbolize::budget::{CODE_MAPPINGS_RETIRED_MAX, CODE_MAPPINGS_RETIRED_PER_PROCESS};

use super::MappingId;

/// Merged id ranges at most; past it the closest two merge (see [`IdRanges::insert`]).
const MAX_RANGES: usize = 1024;

#[derive(Default)]
pub(crate) struct Retired {
    /// Per process, oldest first. An id may appear twice (retired, mapped again, retired
    /// again); the stale entry is skipped when it comes up.
    by_pid: HashMap<u32, VecDeque<MappingId>>,
    /// Processes in the order their queue was created: global eviction starts here.
    order: VecDeque<u32>,
    total: usize,
}

impl Retired {
    /// Records that `id` (first seen in `pid`) is mapped nowhere now. Returns the ids that must
    /// be evicted to stay within budget (the caller skips ids that were mapped again).
    pub fn retire(&mut self, pid: u32, id: MappingId) -> Vec<MappingId> {
        let queue = self.by_pid.entry(pid).or_insert_with(|| {
            self.order.push_back(pid);
            VecDeque::new()
        });
        queue.push_back(id);
        self.total += 1;
        let mut out = Vec::new();
        if queue.len() > CODE_MAPPINGS_RETIRED_PER_PROCESS {
            out.extend(queue.pop_front());
            self.total -= 1;
        }
        while self.total > CODE_MAPPINGS_RETIRED_MAX {
            let Some(&oldest) = self.order.front() else {
                break;
            };
            match self.by_pid.get_mut(&oldest).and_then(VecDeque::pop_front) {
                Some(victim) => {
                    out.push(victim);
                    self.total -= 1;
                }
                None => {
                    self.by_pid.remove(&oldest);
                    self.order.pop_front();
                }
            }
        }
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.total
    }
}

/// A set of ids kept as sorted, disjoint, inclusive ranges.
#[derive(Default)]
pub(crate) struct IdRanges {
    ranges: Vec<(u32, u32)>,
}

impl IdRanges {
    /// Adds `id`. Over [`MAX_RANGES`] the two ranges with the smallest gap merge, so the set
    /// may also claim ids between them: callers only ask about ids whose mapping is gone,
    /// and a mapping in such a gap that is gone was never code a frame could refer to.
    pub fn insert(&mut self, id: u32) {
        let i = self.ranges.partition_point(|&(_, end)| end < id);
        if let Some(r) = self.ranges.get_mut(i) {
            if r.0 <= id {
                return;
            }
        }
        let joins_prev = i > 0 && self.ranges[i - 1].1.checked_add(1) == Some(id);
        let joins_next = self
            .ranges
            .get(i)
            .is_some_and(|r| id.checked_add(1) == Some(r.0));
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = id,
            (false, true) => self.ranges[i].0 = id,
            (false, false) => self.ranges.insert(i, (id, id)),
        }
        if self.ranges.len() > MAX_RANGES {
            let closest = (1..self.ranges.len())
                .min_by_key(|&k| self.ranges[k].0 - self.ranges[k - 1].1)
                .unwrap_or(1);
            self.ranges[closest - 1].1 = self.ranges[closest].1;
            self.ranges.remove(closest);
        }
    }

    pub fn contains(&self, id: u32) -> bool {
        let i = self.ranges.partition_point(|&(_, end)| end < id);
        self.ranges.get(i).is_some_and(|&(start, _)| start <= id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_process_and_global_caps_evict_oldest_first() {
        let mut r = Retired::default();
        let mut evicted = Vec::new();
        for i in 0..CODE_MAPPINGS_RETIRED_PER_PROCESS as u32 + 3 {
            evicted.extend(r.retire(1, MappingId(i)));
        }
        assert_eq!(evicted, vec![MappingId(0), MappingId(1), MappingId(2)]);
        assert_eq!(r.len(), CODE_MAPPINGS_RETIRED_PER_PROCESS);
        let mut n = 0u32;
        let mut pid = 2;
        while r.len() < CODE_MAPPINGS_RETIRED_MAX {
            assert!(r.retire(pid, MappingId(1_000_000 + n)).is_empty());
            n += 1;
            if n % 100 == 0 {
                pid += 1;
            }
        }
        // Over the global cap: the first process's oldest goes.
        assert_eq!(r.retire(pid, MappingId(9_999_999)), vec![MappingId(3)]);
    }

    #[test]
    fn id_ranges_merge_and_stay_bounded() {
        let mut s = IdRanges::default();
        for id in [5, 7, 6, 1, 100] {
            s.insert(id);
        }
        assert_eq!(s.ranges, vec![(1, 1), (5, 7), (100, 100)]);
        assert!(s.contains(6) && s.contains(100) && !s.contains(8) && !s.contains(0));
        for id in (0..10_000u32).map(|i| i * 3) {
            s.insert(id);
        }
        assert!(s.ranges.len() <= MAX_RANGES);
        assert!(s.contains(9_999 * 3));
    }
}

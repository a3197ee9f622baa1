//! The executable mappings of one address space, in the order they were mapped.
//!
//! The kernel reports every mmap but no munmap, so a process that maps executable memory at
//! ever new addresses and unmaps it again looks, to psample, like one whose address space only
//! grows. Past [`CODE_MAPPINGS_LIVE_PER_PROCESS`] executable mappings the least recently
//! mapped one is dropped from the space (its frames then show as unknown, and the mapping is
//! retired, see [`crate::retired`]). Per-process code (anonymous/JIT memory, deleted files)
//! goes first, so churning JIT memory never pushes out the process's binary and libraries.
//! Real processes have a few hundred executable mappings.
//!
//! [`CODE_MAPPINGS_LIVE_PER_PROCESS`]: symbolize::budget::CODE_MAPPINGS_LIVE_PER_PROCESS

use std::collections::{HashMap, VecDeque};

#[derive(Clone, Debug, Default)]
pub(crate) struct CodeOrder {
    /// Start address of each executable mapping in the space → when it was mapped.
    current: HashMap<u64, u64>,
    /// (start, stamp) of per-process code, then of file code, oldest first; entries whose
    /// stamp is no longer current are stale.
    per_process: VecDeque<(u64, u64)>,
    files: VecDeque<(u64, u64)>,
    next: u64,
}

impl CodeOrder {
    /// An executable mapping was linked at `start`.
    pub fn mapped(&mut self, start: u64, per_process: bool) {
        self.next += 1;
        self.current.insert(start, self.next);
        let queue = if per_process {
            &mut self.per_process
        } else {
            &mut self.files
        };
        queue.push_back((start, self.next));
        // Re-mapping the same addresses leaves stale entries behind: keep them bounded.
        if self.per_process.len() + self.files.len() > 2 * self.current.len() + 64 {
            let current = &self.current;
            for q in [&mut self.per_process, &mut self.files] {
                q.retain(|(s, stamp)| current.get(s) == Some(stamp));
            }
        }
    }

    /// The mapping at `start` left the space.
    pub fn unmapped(&mut self, start: u64) {
        self.current.remove(&start);
    }

    /// While more than `cap` are mapped: the start of the one to drop (the least recently
    /// mapped per-process code, else the least recently mapped file code), which the caller
    /// must unlink (and report through [`Self::unmapped`]).
    pub fn over(&mut self, cap: usize) -> Option<u64> {
        if self.current.len() <= cap {
            return None;
        }
        for q in [&mut self.per_process, &mut self.files] {
            while let Some((start, stamp)) = q.pop_front() {
                if self.current.get(&start) == Some(&stamp) {
                    return Some(start);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_per_process_code_goes_first() {
        let mut c = CodeOrder::default();
        c.mapped(0x100, false);
        c.mapped(0x1000, true);
        c.mapped(0x2000, true);
        c.mapped(0x1000, true); // mapped again: now the newest
        c.mapped(0x3000, true);
        assert_eq!(c.over(4), None);
        assert_eq!(c.over(3), Some(0x2000));
        c.unmapped(0x2000);
        assert_eq!(c.over(2), Some(0x1000));
        c.unmapped(0x1000);
        assert_eq!(c.over(1), Some(0x3000));
        c.unmapped(0x3000);
        assert_eq!(c.over(1), None);
        assert_eq!(c.over(0), Some(0x100));
        // Remapping one address forever stays bounded.
        for _ in 0..10_000 {
            c.mapped(0x9000, true);
        }
        assert!(c.per_process.len() < 200);
    }
}

//! Aggregation: identical raw stacks merged with a count, before any symbolization.

use std::collections::HashMap;

use crate::frame::Frame;
use crate::names::Names;

/// Counts per (thread name, raw stack). Stacks are stored leaf first, as collected.
#[derive(Default)]
pub struct Profile {
    names: Names,
    /// name id → stack → count. Two levels so a repeated stack is found by borrowed slice
    /// (`Box<[Frame]>: Borrow<[Frame]>`) and costs no allocation.
    counts: HashMap<u32, HashMap<Box<[Frame]>, u64>>,
    total: u64,
}

impl Profile {
    pub fn new() -> Self {
        Self::default()
    }

    /// Intern a process/thread name (comm) so per-sample keys stay small.
    pub fn name_id(&mut self, name: &str) -> u32 {
        self.names.intern(name)
    }

    pub fn name(&self, id: u32) -> &str {
        self.names.get(id)
    }

    /// Add `count` to a stack. `frames` is leaf first.
    pub fn add(&mut self, name: u32, frames: &[Frame], count: u64) {
        self.total += count;
        let stacks = self.counts.entry(name).or_default();
        match stacks.get_mut(frames) {
            Some(c) => *c += count,
            None => {
                stacks.insert(frames.into(), count);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn distinct_stacks(&self) -> usize {
        self.counts.values().map(HashMap::len).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &[Frame], u64)> {
        self.counts
            .iter()
            .flat_map(|(n, stacks)| stacks.iter().map(move |(f, c)| (*n, &f[..], *c)))
    }
}

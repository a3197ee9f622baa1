//! On-CPU aggregation: samples counted per (thread name, interned stack), before any
//! symbolization.

use std::collections::HashMap;

use crate::names::NameId;
use crate::stacks::StackId;

/// Counts per (thread name, stack). Ids refer to the session's [`crate::tables::Tables`].
#[derive(Default, Debug, Clone)]
pub struct Profile {
    counts: HashMap<(NameId, StackId), u64>,
    total: u64,
}

impl Profile {
    /// An empty profile.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `count` samples of `stack` taken in a thread named `name`.
    pub fn add(&mut self, name: NameId, stack: StackId, count: u64) {
        self.total += count;
        *self.counts.entry((name, stack)).or_insert(0) += count;
    }

    /// Samples added.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Distinct (name, stack) pairs.
    pub fn distinct_stacks(&self) -> usize {
        self.counts.len()
    }

    /// Every (name, stack, count), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (NameId, StackId, u64)> + '_ {
        self.counts.iter().map(|(&(n, s), &c)| (n, s, c))
    }
}

//! On-CPU aggregation: samples counted per (thread name, interned stack, process, thread),
//! before any symbolization. The folded output merges threads; pprof labels each sample
//! with its pid, tid, thread name and container.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::fast_map::FastMap;
use crate::names::NameId;
use crate::stacks::StackId;

/// Where samples were taken: the process and thread (0 for both when unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    /// Process id (thread group id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
}

/// Counts per (thread name, stack, origin). Ids refer to the session's
/// [`crate::tables::Tables`].
#[derive(Default, Debug, Clone)]
pub struct Profile {
    counts: FastMap<(NameId, StackId, Origin), u64>,
    /// The container of each process sampled in one (see [`crate::container`]).
    containers: HashMap<u32, Arc<str>>,
    total: u64,
}

impl Profile {
    /// An empty profile.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `count` samples of `stack` taken in a thread named `name`, of unknown origin.
    pub fn add(&mut self, name: NameId, stack: StackId, count: u64) {
        self.add_from(name, stack, Origin::default(), count);
    }

    /// Add `count` samples of `stack` taken in thread `origin`, named `name`.
    pub fn add_from(&mut self, name: NameId, stack: StackId, origin: Origin, count: u64) {
        self.total += count;
        *self.counts.entry((name, stack, origin)).or_insert(0) += count;
    }

    /// Note the container process `pid` runs in.
    pub fn set_container(&mut self, pid: u32, container: Option<Arc<str>>) {
        if let Some(c) = container {
            self.containers.entry(pid).or_insert(c);
        }
    }

    /// The container of process `pid`, if it ran in one.
    pub fn container(&self, pid: u32) -> Option<&str> {
        self.containers.get(&pid).map(|c| &**c)
    }

    /// Samples added.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Distinct (name, stack) pairs (threads of one name share their stacks).
    pub fn distinct_stacks(&self) -> usize {
        let pairs: HashSet<(NameId, StackId)> =
            self.counts.keys().map(|&(n, s, _)| (n, s)).collect();
        pairs.len()
    }

    /// Every (name, stack, count), in no particular order; a pair sampled in several
    /// threads comes once per thread.
    pub fn iter(&self) -> impl Iterator<Item = (NameId, StackId, u64)> + '_ {
        self.counts.iter().map(|(&(n, s, _), &c)| (n, s, c))
    }

    /// Every (name, stack, origin, count), in no particular order.
    pub fn iter_origins(&self) -> impl Iterator<Item = (NameId, StackId, Origin, u64)> + '_ {
        self.counts.iter().map(|(&(n, s, o), &c)| (n, s, o, c))
    }
}

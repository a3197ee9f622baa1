//! The hash maps of the per-record path: stacks, thread names, per-thread state, counts.
//!
//! std's default hasher (SipHash-1-3) took 7–15 % of `offcpu -a`'s own CPU on a
//! switch-heavy host, most of it interning stacks. aHash costs a fraction of that and, like
//! SipHash, is keyed at random per map: a target cannot pick return addresses or thread
//! names that collide in psample's tables (a fixed-key hash such as FxHash would let it).

use std::collections::{HashMap, HashSet};

/// A `HashMap` with a fast, randomly keyed hasher. Build it with `FastMap::default()`.
pub type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// A `HashSet` with a fast, randomly keyed hasher. Build it with `FastSet::default()`.
pub type FastSet<K> = HashSet<K, ahash::RandomState>;

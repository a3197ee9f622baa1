//! The stack interner: every distinct raw stack stored once, referred to by a small id.
//!
//! One interner is shared by everything a session aggregates (on-CPU samples, blocked
//! intervals, wakers), so aggregation keys stay small and a stack seen a million times costs
//! its frames once.

use crate::fast_map::FastMap;
use crate::frame::Frame;

/// A stack's id in its [`Stacks`] table.
pub type StackId = u32;

/// Interned stacks, leaf first.
#[derive(Default, Clone, Debug)]
pub struct Stacks {
    list: Vec<Box<[Frame]>>,
    ids: FastMap<Box<[Frame]>, StackId>,
}

impl Stacks {
    /// The id of `frames` (leaf first), adding it if new. A repeated stack is found by
    /// borrowed slice and costs no allocation.
    pub fn intern(&mut self, frames: &[Frame]) -> StackId {
        if let Some(id) = self.ids.get(frames) {
            return *id;
        }
        let id = self.list.len() as StackId;
        self.list.push(frames.into());
        self.ids.insert(frames.into(), id);
        id
    }

    /// The frames of `id`, leaf first (empty for an id this table never gave out).
    pub fn get(&self, id: StackId) -> &[Frame] {
        self.list.get(id as usize).map_or(&[], |b| &b[..])
    }

    /// Distinct stacks held.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether no stack was interned yet.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_stacks_share_an_id() {
        let mut s = Stacks::default();
        let a = s.intern(&[Frame::Kernel(1), Frame::Unmapped(2)]);
        let b = s.intern(&[Frame::Kernel(1)]);
        assert_ne!(a, b);
        assert_eq!(s.intern(&[Frame::Kernel(1), Frame::Unmapped(2)]), a);
        assert_eq!(s.get(b), &[Frame::Kernel(1)]);
        assert!(s.get(99).is_empty());
        assert_eq!(s.len(), 2);
    }
}

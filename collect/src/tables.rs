//! What aggregated ids refer to: the interned stacks, thread names and named frames of a
//! session, and how they are carried from one continuous-mode interval to the next.
//!
//! An ended interval takes its tables (and the address spaces its frames point into) to the
//! writer thread; the next interval starts with tables holding only what the collector
//! still refers to (the stacks of blocked intervals still open, say), re-expressed in the
//! fresh address spaces. So nothing grows with the length of a run.

use std::collections::HashMap;

use unwind::Processes;

use crate::frame::Frame;
use crate::names::{NameId, Names};
use crate::stacks::{StackId, Stacks};

/// The interned tables of one aggregation.
#[derive(Default, Clone, Debug)]
pub struct Tables {
    /// Raw stacks, leaf first.
    pub stacks: Stacks,
    /// Thread names (comm), as they were when the event happened.
    pub names: Names,
    /// Names of [`Frame::Named`] frames (e.g. kernel stacks read from /proc).
    pub frame_names: Names,
}

/// An aggregation's tables and the address spaces its user frames refer to: what it needs
/// to be symbolized and rendered, on any thread.
pub struct Snapshot {
    /// The interned tables.
    pub tables: Tables,
    /// Mappings of the frames' [`Frame::User`] ids.
    pub procs: Processes,
}

/// Ids a collector still uses after an interval ends.
#[derive(Default, Debug)]
pub struct Keep {
    /// Stacks of open state (blocked intervals, their wakers).
    pub stacks: Vec<StackId>,
    /// Names of open state and of totals kept for the summary.
    pub names: Vec<NameId>,
}

/// Old id → new id, for what [`Keep`] listed.
#[derive(Default, Debug)]
pub struct Remap {
    stacks: HashMap<StackId, StackId>,
    names: HashMap<NameId, NameId>,
}

impl Remap {
    /// The new id of a kept stack (unchanged for one that was not kept).
    pub fn stack(&self, id: StackId) -> StackId {
        self.stacks.get(&id).copied().unwrap_or(id)
    }

    /// The new id of a kept name (unchanged for one that was not kept).
    pub fn name(&self, id: NameId) -> NameId {
        self.names.get(&id).copied().unwrap_or(id)
    }
}

impl Tables {
    /// Tables holding only what `keep` lists, with user frames re-expressed from `old`
    /// address spaces in `new` ones. Named frames are kept whole (they are few: only
    /// threads found blocked at the start are named that way).
    pub fn compact(&self, keep: &Keep, old: &Processes, new: &Processes) -> (Tables, Remap) {
        let mut fresh = Tables {
            frame_names: self.frame_names.clone(),
            ..Tables::default()
        };
        let mut remap = Remap::default();
        for &id in &keep.stacks {
            if remap.stacks.contains_key(&id) {
                continue;
            }
            let frames: Vec<Frame> = self
                .stacks
                .get(id)
                .iter()
                .map(|f| rebase_frame(*f, old, new))
                .collect();
            remap.stacks.insert(id, fresh.stacks.intern(&frames));
        }
        for &id in &keep.names {
            remap
                .names
                .entry(id)
                .or_insert_with(|| fresh.names.intern(self.names.get(id)));
        }
        (fresh, remap)
    }
}

/// A frame of an old tracker's address spaces, re-expressed in a fresh tracker's: the same
/// process and address, if the process still maps it.
pub fn rebase_frame(f: Frame, old: &Processes, new: &Processes) -> Frame {
    let Frame::User { mapping, addr } = f else {
        return f;
    };
    let Some(m) = old.get(mapping) else {
        return Frame::Unmapped(addr);
    };
    // Frames are canonical (see `Processes::canonical`): the process that first mapped the
    // file may be gone while others still map it.
    let found = new
        .find(m.pid, addr)
        .map(|id| new.canonical(id, addr))
        .or_else(|| new.equivalent(m, addr));
    match found {
        Some((mapping, addr)) => Frame::User { mapping, addr },
        None => Frame::Unmapped(addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_keeps_what_is_listed_and_rebases_user_frames() {
        let mut old = Processes::new();
        old.on_mmap(7, 0x1000, 0x1000, 0, "/bin/x", true, None, None);
        let mut new = Processes::new();
        new.on_mmap(7, 0x1000, 0x1000, 0, "/bin/x", true, None, None);
        let user = |p: &Processes| {
            let m = p.find(7, 0x1800).unwrap();
            Frame::User {
                mapping: m,
                addr: 0x1800,
            }
        };
        let mut t = Tables::default();
        let dropped = t.stacks.intern(&[Frame::Kernel(1)]);
        let kept = t
            .stacks
            .intern(&[Frame::Kernel(2), user(&old), Frame::Unmapped(3)]);
        let gone = t.stacks.intern(&[Frame::User {
            mapping: old.find(7, 0x1800).unwrap(),
            addr: 0x9000, // not mapped in the new spaces
        }]);
        let a = t.names.intern("a");
        let b = t.names.intern("b");
        let keep = Keep {
            stacks: vec![kept, gone, kept],
            names: vec![b],
        };
        let (fresh, remap) = t.compact(&keep, &old, &new);
        assert_eq!(fresh.stacks.len(), 2);
        assert_eq!(
            fresh.stacks.get(remap.stack(kept)),
            &[Frame::Kernel(2), user(&new), Frame::Unmapped(3)]
        );
        assert_eq!(
            fresh.stacks.get(remap.stack(gone)),
            &[Frame::Unmapped(0x9000)]
        );
        assert_eq!(fresh.names.len(), 1);
        assert_eq!(fresh.names.get(remap.name(b)), "b");
        let _ = (dropped, a);
    }
}

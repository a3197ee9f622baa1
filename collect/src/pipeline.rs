//! The per-session state every collector works on: the process tracker, the stack
//! builder and the interned tables. One of each per session, shared, so a collector that
//! combines on-CPU samples and off-CPU intervals aggregates into the same tables.

use perfring::record::Sample;

use crate::frame::Frame;
use crate::names::NameId;
use crate::stack::{StackBuilder, StackMode};
use crate::stacks::StackId;
use crate::tables::{Keep, Remap, Snapshot, Tables};
use crate::tracker::Tracker;

/// Tracker, stack builder and tables of one session.
pub struct Pipeline {
    /// Process names and address spaces, from side-band records.
    pub tracker: Tracker,
    /// Builds one sample's raw stack; keeps the unwinder's caches and statistics.
    pub builder: StackBuilder,
    /// What aggregated ids refer to.
    pub tables: Tables,
    /// psample's own process, left out of system-wide profiles.
    pub own_pid: u32,
}

impl Pipeline {
    /// A pipeline for stacks collected in `mode`, following processes with `tracker`.
    pub fn new(tracker: Tracker, mode: StackMode) -> Self {
        Pipeline {
            tracker,
            builder: StackBuilder::new(mode),
            tables: Tables::default(),
            own_pid: std::process::id(),
        }
    }

    /// Build the stack of a sample taken in process `pid` and intern it.
    pub fn sample_stack(&mut self, s: &Sample<'_>, pid: u32) -> StackId {
        self.tracker.ensure_known(pid);
        self.builder.build(&self.tracker, s, pid);
        self.tables.stacks.intern(&self.builder.frames)
    }

    /// Intern a stack built some other way (leaf first).
    pub fn intern_stack(&mut self, frames: &[Frame]) -> StackId {
        self.tables.stacks.intern(frames)
    }

    /// The interned name of thread `tid` of process `pid`, as it is now.
    pub fn thread_name(&mut self, pid: u32, tid: u32) -> NameId {
        self.tables.names.intern(self.tracker.comm(pid, tid))
    }

    /// Intern a name that is not a tracked thread's (e.g. `swapper` for the idle task).
    pub fn name(&mut self, name: &str) -> NameId {
        self.tables.names.intern(name)
    }

    /// End an interval: the tables and address spaces aggregated so far go (in the
    /// returned snapshot); the pipeline goes on with a tracker of live processes only,
    /// tables holding what `keep` lists, and a fresh stack builder (its caches follow the
    /// old address spaces; its unwinding statistics describe the whole session and stay).
    pub fn cut(&mut self, keep: &Keep) -> (Snapshot, Remap) {
        let fresh = self.tracker.refreshed();
        let (tables, remap) = self.tables.compact(keep, &self.tracker.procs, &fresh.procs);
        let old_tables = std::mem::replace(&mut self.tables, tables);
        let old_tracker = std::mem::replace(&mut self.tracker, fresh);
        self.builder.renew();
        let snapshot = Snapshot {
            tables: old_tables,
            procs: old_tracker.procs,
        };
        (snapshot, remap)
    }

    /// The end of the session: everything the last aggregation refers to.
    pub fn into_snapshot(self) -> Snapshot {
        Snapshot {
            tables: self.tables,
            procs: self.tracker.procs,
        }
    }
}

//! # collect — psample's collection pipeline
//!
//! Everything between "records come out of the ring" and "a profile is written", as a
//! library with plain option structs (the `psample` binary is argument parsing, dispatch and
//! printing on top of it):
//!
//! - [`session`]: attaching a perfring session to a target, the one read loop every
//!   command shares (each supplies a [`session::Collector`]), the summary;
//! - [`pipeline`], [`tables`], [`stacks`]: the per-session state collectors share (tracker,
//!   stack builder, interned stacks and names) and how it is carried across intervals;
//! - [`continuous`]: one profile per interval, the writer thread, re-attaching to restarted
//!   targets;
//! - [`oncpu`], [`offcpu`]: the `record` and `offcpu` pipelines;
//! - [`wall`]: `psample wall`, both in one session: on-CPU, blocked and runnable time;
//! - [`tracker`]: process names and address spaces from side-band records;
//! - [`stack`], [`frame`]: building one sample's raw stack (frame pointers or DWARF);
//! - [`profile`], [`names`]: aggregation of raw stacks before symbolization;
//! - [`output`], [`push`]: symbolizing once per distinct frame ([`output::fold`]),
//!   folded/SVG/pprof encoders and where they are written, uploads to Pyroscope-compatible
//!   servers;
//! - [`target`], [`launch`], [`container`], [`follow`], [`tracing`], [`perms`], [`limits`],
//!   [`stdio`]: targets (and finding them again, and the containers they run in), the host,
//!   and standard streams psample does not control.
//!
//! Modules import only from their own layer or below (top to bottom: wall, oncpu/offcpu,
//! session, continuous/push, output/pipeline, tracker/stack/tables/profile, the rest);
//! `scripts/layers` checks it, docs/architecture.md describes the path of a sample.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod container;
pub mod continuous;
pub mod error;
pub mod fast_map;
pub mod follow;
pub mod frame;
pub mod launch;
pub mod limits;
pub mod names;
pub mod offcpu;
pub mod oncpu;
pub mod output;
pub mod perms;
pub mod pipeline;
pub mod profile;
pub mod push;
pub mod session;
pub mod stack;
pub mod stacks;
pub mod stdio;
pub mod tables;
pub mod target;
pub mod tracing;
pub mod tracker;
pub mod wall;

pub use error::Error;

//! # psample (cli) — commands, aggregation and output writers
//!
//! The `psample` binary is a thin `main.rs` over this library so that aggregation and output
//! code can be benchmarked and tested without a terminal.

pub mod offcpu;

//! Off-CPU profiling (in progress)

//! # compat-tests — psample against emulated and real kernels
//!
//! (in progress)

//! # symbolize — addresses to frames
//!
//! (in progress)

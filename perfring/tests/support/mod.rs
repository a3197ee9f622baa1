//! Helpers shared by the integration tests (each test binary includes only what it uses).
#![allow(dead_code)]

pub mod builder;
pub mod perf_data;

//! # unwind — process address spaces and user-stack unwinding
//!
//! (in progress)

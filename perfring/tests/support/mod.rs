//! Helpers shared by the integration tests (each test binary includes only what it uses).
#![allow(dead_code)]

pub mod builder;
pub mod perf_data;

/// This thread's CPU time. Tests that need N samples of a task-clock or cpu-clock event spin
/// for CPU time, not wall time: the count then does not depend on how loaded the machine is.
pub fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for clock_gettime.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
        0
    );
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

//! Loader tests for the BPF stack counter against the running kernel. Needs root; fails
//! loudly without.

mod support;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use perf_event_open_sys as sys;
use perfring::bpf::{probe, BpfError, StackCounter, StackCounterOptions};
use support::thread_cpu;

fn load(opts: &StackCounterOptions) -> StackCounter {
    StackCounter::load(opts).unwrap_or_else(|e| panic!("load failed: {e}"))
}

/// A disabled cpu-clock sampling event on the calling thread.
fn own_thread_event(period_ns: u64) -> OwnedFd {
    let mut attr = sys::bindings::perf_event_attr {
        type_: sys::bindings::PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<sys::bindings::perf_event_attr>() as u32,
        config: u64::from(sys::bindings::PERF_COUNT_SW_CPU_CLOCK),
        ..Default::default()
    };
    attr.__bindgen_anon_1.sample_period = period_ns;
    attr.set_disabled(1);
    // SAFETY: a fully initialised attr; pid 0/cpu -1 is the calling thread on any CPU.
    let fd = unsafe {
        sys::perf_event_open(
            &mut attr,
            0,
            -1,
            -1,
            sys::bindings::PERF_FLAG_FD_CLOEXEC as _,
        )
    };
    assert!(
        fd >= 0,
        "perf_event_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fresh fd from the kernel.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn probe_succeeds_here() {
    test_support::require!(test_support::Need::Root);
    probe().unwrap_or_else(|e| panic!("probe failed on a kernel with BPF: {e}"));
}

#[test]
fn verifier_log_only_on_request() {
    test_support::require!(test_support::Need::Root);
    let quiet = load(&StackCounterOptions::default());
    assert_eq!(quiet.verifier_log(), "");

    let verbose = load(&StackCounterOptions {
        log_verifier: true,
        ..Default::default()
    });
    let log = verbose.verifier_log();
    assert!(
        log.contains("processed"),
        "unexpected verifier log: {log:?}"
    );
}

#[test]
fn absurd_sizes_fail_with_a_clear_error() {
    test_support::require!(test_support::Need::Root);
    let err = StackCounter::load(&StackCounterOptions {
        max_entries: 0,
        ..Default::default()
    })
    .expect_err("a zero-entry count map must be refused");
    assert!(matches!(err, BpfError::InvalidOption(_)), "{err:?}");
    assert!(err.to_string().contains("at least 1 entry"), "{err}");

    // Too big for any kernel: the refusal comes from bpf(2) and names the errno and a remedy.
    let err = StackCounter::load(&StackCounterOptions {
        stack_map_entries: u32::MAX,
        ..Default::default()
    })
    .expect_err("a 4-billion-entry stack map must be refused");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(err.errno().is_some(), "{err:?}");
    assert!(text.contains("STACK_TRACE"), "{text}");
    assert!(text.contains("--bpf never"), "{text}");
}

#[test]
fn attach_refusals_are_reported() {
    test_support::require!(test_support::Need::Root);
    let counter = load(&StackCounterOptions::default());
    let not_perf = std::fs::File::open("/dev/null").expect("open /dev/null");
    let err = counter
        .attach(not_perf.as_fd())
        .expect_err("SET_BPF on a non-perf fd must fail");
    assert!(err.to_string().contains("SET_BPF"), "{err}");

    let event = own_thread_event(1_000_000);
    counter.attach(event.as_fd()).expect("first attach");
    let err = counter
        .attach(event.as_fd())
        .expect_err("a second program on the same event must be refused");
    assert!(err.errno().is_some(), "{err:?}");
}

/// Without stacks the program still counts samples per thread, and samples stop going to
/// the ring (there is none here — the event would simply be counted).
#[test]
fn counts_own_thread_without_stacks() {
    test_support::require!(test_support::Need::Root);
    let mut counter = load(&StackCounterOptions {
        user_stacks: false,
        kernel_stacks: false,
        ..Default::default()
    });
    let event = own_thread_event(1_000_000);
    counter.attach(event.as_fd()).expect("attach");
    // SAFETY: plain perf ioctls on a live fd.
    assert!(unsafe { sys::ioctls::ENABLE(event.as_raw_fd(), 0) } >= 0);
    // 300 ms of this thread's CPU (not wall) time: the sample count does not depend on load.
    let end = thread_cpu() + Duration::from_millis(300);
    let mut x = 0u64;
    while thread_cpu() < end {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    // SAFETY: as above.
    assert!(unsafe { sys::ioctls::DISABLE(event.as_raw_fd(), 0) } >= 0);

    let counts = counter.drain().expect("drain");
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let total: u64 = counts.iter().map(|c| c.count).sum();
    assert!(
        total >= 50,
        "only {total} samples in 300 ms of busy loop at 1 kHz"
    );
    for c in &counts {
        assert_eq!((c.pid, c.tid), (std::process::id(), tid));
        assert!(
            c.user_stack.is_empty() && c.kernel_stack.is_empty(),
            "{c:?}"
        );
    }
    assert_eq!(counter.missing().spilled_samples(), 0);
}

/// A one-entry count map overflows as soon as a second (thread, stack) key appears; those
/// samples are handed to the ring (spilled), and counted as such.
#[test]
fn full_count_map_is_reported() {
    test_support::require!(test_support::Need::Root);
    let mut counter = load(&StackCounterOptions {
        max_entries: 1,
        ..Default::default()
    });
    let event = own_thread_event(100_000);
    counter.attach(event.as_fd()).expect("attach");
    // SAFETY: plain perf ioctls on a live fd.
    assert!(unsafe { sys::ioctls::ENABLE(event.as_raw_fd(), 0) } >= 0);
    let end = thread_cpu() + Duration::from_millis(300);
    // Alternate user work and syscalls so samples land on several distinct stacks.
    while thread_cpu() < end {
        let mut x = 0u64;
        for i in 0..10_000u64 {
            x = std::hint::black_box(x ^ i);
        }
        let _ = std::fs::metadata("/proc/self/stat");
    }
    // SAFETY: as above.
    assert!(unsafe { sys::ioctls::DISABLE(event.as_raw_fd(), 0) } >= 0);
    let counts = counter.drain().expect("drain");
    assert!(counts.len() <= 1, "{} keys in a 1-entry map", counts.len());
    let missing = counter.missing();
    assert!(
        missing.count_map_full > 0,
        "no overflow counted: {missing:?}"
    );
    assert!(
        missing.spilled_samples() >= missing.count_map_full,
        "overflowing samples not spilled: {missing:?}"
    );
    assert_eq!(missing.lost_stacks(), 0, "{missing:?}");
}

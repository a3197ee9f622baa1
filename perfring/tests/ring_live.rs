//! The reader and parser against the running kernel's real rings (software events, which
//! work on this VM). Opening the event is done here with the raw syscall so that this
//! test depends only on ring.rs and record/. Needs root or perf_event_paranoid ≤ 1; fails
//! loudly otherwise.

mod support;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use perf_event_open_sys::bindings as b;
use perfring::record::{parse_record, CallchainContext, Record, SampleFormat};
use perfring::ring::{RingBuffer, RingMemory, RingStats};
use support::thread_cpu;

const PAGE: usize = 4096;

struct Mapped {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value.
unsafe impl Send for Mapped {}

// SAFETY: a live MAP_SHARED mapping of `len` bytes until drop; mmap returns page alignment.
unsafe impl RingMemory for Mapped {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn page_size(&self) -> usize {
        PAGE
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping what mmap returned.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

struct Event {
    fd: OwnedFd,
    ring: RingBuffer,
    fmt: SampleFormat,
}

fn open(mut attr: b::perf_event_attr, data_pages: usize) -> Event {
    attr.size = std::mem::size_of::<b::perf_event_attr>() as u32;
    attr.set_disabled(1);
    attr.set_sample_id_all(1);
    let fmt = SampleFormat {
        sample_type: attr.sample_type,
        read_format: attr.read_format,
        regs_user_mask: attr.sample_regs_user,
        sample_id_all: true,
        branch_sample_type: attr.branch_sample_type,
    };
    // SAFETY: attr is a valid, fully initialised perf_event_attr.
    let fd = unsafe { perf_event_open_sys::perf_event_open(&mut attr, 0, -1, -1, 0) };
    assert!(
        fd >= 0,
        "perf_event_open failed: {} — these tests need root or perf_event_paranoid <= 1",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd was just returned by the kernel and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (1 + data_pages) * PAGE;
    // SAFETY: mapping a perf fd writable (non-overwrite mode) as the ABI requires.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let ring = RingBuffer::new(Box::new(Mapped {
        ptr: ptr.cast(),
        len,
    }))
    .expect("kernel ring layout");
    Event { fd, ring, fmt }
}

impl Event {
    fn enable(&self, on: bool) {
        // SAFETY: plain ioctls on a perf fd we own.
        let rc = unsafe {
            if on {
                perf_event_open_sys::ioctls::ENABLE(self.fd.as_raw_fd(), 0)
            } else {
                perf_event_open_sys::ioctls::DISABLE(self.fd.as_raw_fd(), 0)
            }
        };
        assert_eq!(rc, 0, "enable/disable ioctl");
    }
}

fn task_clock(sample_type: u64, period_ns: u64) -> b::perf_event_attr {
    let mut attr = b::perf_event_attr {
        type_: b::PERF_TYPE_SOFTWARE,
        config: u64::from(b::PERF_COUNT_SW_TASK_CLOCK),
        sample_type,
        ..Default::default()
    };
    attr.__bindgen_anon_1.sample_period = period_ns;
    attr
}

/// Spin for `ms` of this thread's CPU time: task-clock samples come per CPU time, so the
/// counts below hold however loaded the machine is (wall time would not).
fn burn(ms: u64) -> u64 {
    let end = thread_cpu() + std::time::Duration::from_millis(ms);
    let mut x = 1u64;
    while thread_cpu() < end {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    x
}

const IP: u64 = b::PERF_SAMPLE_IP as u64;
const TID: u64 = b::PERF_SAMPLE_TID as u64;
const TIME: u64 = b::PERF_SAMPLE_TIME as u64;
const CPU: u64 = b::PERF_SAMPLE_CPU as u64;
const PERIOD: u64 = b::PERF_SAMPLE_PERIOD as u64;
const CALLCHAIN: u64 = b::PERF_SAMPLE_CALLCHAIN as u64;
const IDENTIFIER: u64 = b::PERF_SAMPLE_IDENTIFIER as u64;
const REGS_USER: u64 = b::PERF_SAMPLE_REGS_USER as u64;
const STACK_USER: u64 = b::PERF_SAMPLE_STACK_USER as u64;

#[test]
fn live_callchain_samples_and_side_records() {
    test_support::require!(test_support::Need::Perf);
    let mut attr = task_clock(
        IDENTIFIER | IP | TID | TIME | CPU | PERIOD | CALLCHAIN,
        100_000,
    );
    attr.set_mmap(1);
    attr.set_mmap2(1);
    attr.set_comm(1);
    attr.set_comm_exec(1);
    attr.set_task(1);
    attr.set_context_switch(1);
    let mut ev = open(attr, 16);
    ev.enable(true);
    let pid = std::process::id();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let (mut samples, mut mmaps, mut switches, mut errors) = (0, 0, 0, Vec::new());
    let mut saw_true = false;
    let fmt = ev.fmt;
    for _ in 0..20 {
        burn(10);
        // An executable mapping and a sleep produce MMAP2 and SWITCH records.
        let f = std::fs::File::open("/bin/true").expect("/bin/true");
        // SAFETY: a fresh private read+exec mapping, unmapped right away.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            libc::munmap(p, PAGE);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        ev.ring
            .read_records(|bytes| match parse_record(bytes, &fmt) {
                Ok(Record::Sample(s)) => {
                    samples += 1;
                    assert_eq!((s.pid, s.tid), (Some(pid), Some(tid)));
                    assert!(s.identifier.is_some() && s.time.is_some() && s.period.is_some());
                    assert_eq!(fmt.identifier_of(bytes), s.identifier);
                    let chain = s.callchain.expect("callchain requested");
                    let first = chain.iter().next().expect("non-empty chain");
                    assert!(CallchainContext::from_marker(first).is_some(), "{first:#x}");
                }
                Ok(Record::Mmap(m)) => {
                    mmaps += 1;
                    assert!(m.is_mmap2());
                    saw_true |= m.filename.ends_with(b"true");
                    assert_eq!(m.sample_id.pid, Some(pid));
                }
                Ok(Record::Switch(_)) => switches += 1,
                Ok(_) => {}
                Err(e) => errors.push(e),
            });
    }
    ev.enable(false);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(samples >= 100, "only {samples} samples in 200 ms at 10 kHz");
    assert!(mmaps >= 20 && saw_true, "mmaps {mmaps}");
    assert!(switches >= 20, "switches {switches}");
    assert_eq!(ev.ring.stats(), RingStats::default());
}

#[test]
fn live_dwarf_samples_regs_and_stack() {
    test_support::require!(test_support::Need::Perf);
    const STACK: u32 = 8192;
    let mut attr = task_clock(IP | TID | TIME | REGS_USER | STACK_USER, 200_000);
    attr.sample_regs_user = 0xff0fff;
    attr.sample_stack_user = STACK;
    attr.set_exclude_kernel(1);
    attr.set_exclude_hv(1);
    let mut ev = open(attr, 256);
    let fmt = ev.fmt;
    let mut samples = 0;
    ev.enable(true);
    // ~8 KiB per sample at 5 kHz: drain every 5 ms so the 1 MiB ring rarely fills.
    for _ in 0..20 {
        burn(5);
        ev.ring.read_records(|bytes| {
            if let Record::Sample(s) = parse_record(bytes, &fmt).expect("parse") {
                samples += 1;
                let regs = s.regs_user.expect("regs");
                assert_eq!(regs.abi(), 2, "64-bit task");
                assert_eq!(regs.values().len(), 20);
                // exclude_kernel: the sample ip is the user ip the registers were taken at.
                assert_eq!(regs.get(8), s.ip);
                let stack = s.stack_user.expect("stack");
                assert!(!stack.is_empty() && stack.len() <= STACK as usize);
                assert!(regs.get(7).is_some_and(|sp| sp > 0x1000));
            }
        });
    }
    ev.enable(false);
    assert!(samples >= 100, "only {samples} samples");
    assert_eq!(ev.ring.stats().corrupt, 0);
    assert_eq!(ev.ring.stats().corrupt, 0);
}

#[test]
fn live_small_ring_wraps_and_reports_lost() {
    test_support::require!(test_support::Need::Perf);
    // One data page, 20 kHz samples and a reader that falls behind: records wrap, the
    // kernel drops some and says so with PERF_RECORD_LOST once space is back.
    let attr = task_clock(IP | TID | TIME | CALLCHAIN, 50_000);
    let mut ev = open(attr, 1);
    ev.enable(true);
    let fmt = ev.fmt;
    let mut samples = 0;
    let mut lost_seen = 0;
    for _ in 0..10 {
        burn(20);
        ev.ring
            .read_records(|bytes| match parse_record(bytes, &fmt) {
                Ok(Record::Sample(_)) => samples += 1,
                Ok(Record::Lost(l)) => lost_seen += l.lost,
                other => panic!("{other:?}"),
            });
    }
    ev.enable(false);
    let stats = ev.ring.stats();
    assert!(samples > 0);
    assert!(stats.lost_events >= 1, "{stats:?}");
    assert_eq!(stats.lost_records, lost_seen);
    assert_eq!(stats.corrupt, 0);
}

//! Asking the kernel directly what it accepts, one feature at a time — for `psample check`.
//!
//! Each probe opens a disabled cpu-clock event on the calling thread with exactly one
//! feature added, and reads the answer from the errno. The recording path does not use
//! these probes (it learns the same answers from its own opens via [`crate::features`]);
//! they exist to tell a user, before they need it, what this host will give them.

use std::os::fd::AsFd;

use crate::attr::{flag, sample, size, AttrBuilder, EventKind, RawAttr};
use crate::features::Feature;
use crate::sys::{open_flag, Errno, Ioctl, Kernel};

/// The answer to one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Accepted.
    Yes,
    /// Refused as unknown/unsupported (the feature is missing).
    No(Errno),
    /// Refused for another reason (permission, resources): we cannot tell.
    Unknown(Errno),
}

impl Probe {
    /// Whether the answer is yes.
    pub fn is_yes(self) -> bool {
        self == Probe::Yes
    }
}

fn base() -> RawAttr {
    AttrBuilder::new(EventKind::CpuClock)
        .period(10_000_000)
        .disabled(true)
        .exclude_kernel(true)
        .exclude_hv(true)
        .build()
}

fn classify(e: Errno) -> Probe {
    match e {
        Errno::EINVAL
        | Errno::E2BIG
        | Errno::EOPNOTSUPP
        | Errno::ENOENT
        | Errno::ENODEV
        | Errno::ENOTTY
        | Errno::EOVERFLOW
        | Errno::ENXIO => Probe::No(e),
        e => Probe::Unknown(e),
    }
}

fn try_open(kernel: &dyn Kernel, mut attr: RawAttr, flags: u64) -> Probe {
    attr.size = attr.minimal_size();
    match kernel.perf_event_open(&mut attr, 0, -1, None, flags) {
        Ok(_) => Probe::Yes,
        Err(e) => classify(e),
    }
}

/// Probe one ladder feature.
pub fn feature(kernel: &dyn Kernel, f: Feature) -> Probe {
    let mut a = base();
    let mut flags = 0;
    match f {
        Feature::Cloexec => flags = open_flag::FD_CLOEXEC,
        Feature::SampleIdAll => a.set(flag::SAMPLE_ID_ALL, true),
        Feature::ExcludeCallchainUser => {
            a.sample_type |= sample::CALLCHAIN;
            a.set(flag::EXCLUDE_CALLCHAIN_USER, true);
        }
        Feature::UserStackCopy => {
            a.sample_type |= sample::REGS_USER | sample::STACK_USER;
            // IP, SP and BP (perf_regs bits 8, 7, 6 on x86_64): what unwinding starts from.
            a.sample_regs_user = (1 << 6) | (1 << 7) | (1 << 8);
            a.sample_stack_user = 512;
        }
        Feature::Mmap2 => {
            a.set(flag::MMAP, true);
            a.set(flag::MMAP2, true);
        }
        Feature::CommExec => {
            a.set(flag::COMM, true);
            a.set(flag::COMM_EXEC, true);
        }
        Feature::UseClockid => {
            a.set(flag::USE_CLOCKID, true);
            a.clockid = libc::CLOCK_MONOTONIC;
        }
        Feature::ContextSwitch => a.set(flag::CONTEXT_SWITCH, true),
        Feature::SampleMaxStack => {
            a.sample_type |= sample::CALLCHAIN;
            a.sample_max_stack = 32;
        }
        Feature::PreciseIp => {
            a = AttrBuilder::new(EventKind::Cycles)
                .period(10_000_000)
                .disabled(true)
                .exclude_kernel(true)
                .precise_ip(1)
                .build();
        }
        Feature::Hardware => {
            a = AttrBuilder::new(EventKind::Cycles)
                .period(10_000_000)
                .disabled(true)
                .exclude_kernel(true)
                .build();
        }
        Feature::KernelSamples => a.set(flag::EXCLUDE_KERNEL, false),
        Feature::IocId => {
            let mut b = base();
            b.size = b.minimal_size();
            return match kernel.perf_event_open(&mut b, 0, -1, None, 0) {
                Ok(fd) => match kernel.ioctl(fd.as_fd(), Ioctl::Id) {
                    Ok(_) => Probe::Yes,
                    Err(e) => classify(e),
                },
                Err(e) => Probe::Unknown(e),
            };
        }
        Feature::RingDataOffset => return ring_data_offset(kernel),
    }
    try_open(kernel, a, flags)
}

fn ring_data_offset(kernel: &dyn Kernel) -> Probe {
    let mut b = base();
    b.size = b.minimal_size();
    let fd = match kernel.perf_event_open(&mut b, 0, -1, None, 0) {
        Ok(fd) => fd,
        Err(e) => return Probe::Unknown(e),
    };
    match kernel.mmap_ring(fd.as_fd(), 1) {
        Ok(mem) => match crate::ring::RingBuffer::new(mem) {
            Ok(r) if r.used_header_fallback() => Probe::No(Errno::EINVAL),
            Ok(_) => Probe::Yes,
            Err(_) => Probe::Unknown(Errno::EINVAL),
        },
        Err(e) => Probe::Unknown(e),
    }
}

/// A software or hardware event opens at all (for this user, on this thread).
pub fn event(kernel: &dyn Kernel, kind: EventKind) -> Probe {
    let a = AttrBuilder::new(kind)
        .period(10_000_000)
        .disabled(true)
        .exclude_kernel(true)
        .build();
    try_open(kernel, a, 0)
}

/// The largest `perf_event_attr` this kernel knows, learned from E2BIG: an attr that claims
/// to be larger than any published layout, with a non-zero byte past every known field,
/// makes the kernel write its own size back.
pub fn attr_size(kernel: &dyn Kernel) -> Option<u32> {
    #[repr(C)]
    struct Oversized {
        attr: RawAttr,
        tail: [u8; 64],
    }
    let mut big = Oversized {
        attr: base(),
        tail: [0; 64],
    };
    big.tail[63] = 1;
    big.attr.size = size::VER8 + 64;
    // The kernel reads `size` bytes starting at `attr`, which stay inside `big`.
    match kernel.perf_event_open(&mut big.attr, 0, -1, None, 0) {
        Err(Errno::E2BIG) if big.attr.size >= size::VER0 && big.attr.size <= size::VER8 + 64 => {
            Some(big.attr.size)
        }
        // Accepted: the kernel knows an even larger struct than we do.
        Ok(_) => Some(size::VER8 + 64),
        _ => None,
    }
}

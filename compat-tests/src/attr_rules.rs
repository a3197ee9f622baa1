//! How a kernel of a given profile judges `perf_event_open` arguments, following the order
//! of checks in kernel/events/core.c (`perf_copy_attr`, then `perf_event_open`,
//! `perf_event_alloc` and the PMU's `event_init`).

use perfring::attr::{event_type, flag, sample, size, RawAttr, MAX_STACK_USER};
use perfring::sys::Errno;

use crate::profile::KernelProfile;

/// CPUs of the emulated machine.
pub const NR_CPUS: i32 = 2;

/// Valid `attr.clockid` values: REALTIME, MONOTONIC, MONOTONIC_RAW, BOOTTIME, TAI.
const CLOCKIDS: [i32; 5] = [0, 1, 4, 7, 11];

/// perf_regs bits refused on x86_64 (DS, ES, FS, GS) and everything above R15.
const BAD_REGS_X86_64: u64 = (0xf << 12) | !((1u64 << 24) - 1);

/// Offset of `__reserved_2` (u16 after sample_max_stack) in layouts from 4.8 on.
const RESERVED_2_AT: usize = 110;

/// An attr from the bytes a caller passed (at most `size_of::<RawAttr>()` of them; the rest
/// of the struct zero).
pub fn attr_from_bytes(bytes: &[u8]) -> RawAttr {
    let mut attr = RawAttr::default();
    let keep = bytes.len().min(std::mem::size_of::<RawAttr>());
    // SAFETY: RawAttr is repr(C) with only integer fields and no padding (asserted in
    // perfring), so any byte pattern is a valid value; keep <= size_of::<RawAttr>().
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut attr as *mut RawAttr).cast::<u8>(),
            keep,
        );
    }
    attr
}

/// The attr as the kernel sees it: `size` bytes copied from the caller, the rest zero, cut at
/// the kernel's own struct size (bytes beyond are checked for zero, then dropped).
fn kernel_view(attr: &RawAttr, kernel_size: u32) -> (RawAttr, bool) {
    let given = attr.as_bytes();
    let keep = given.len().min(kernel_size as usize);
    let tail_zero = given.get(keep..).is_none_or(|t| t.iter().all(|b| *b == 0));
    let mut view = attr_from_bytes(&given[..keep]);
    view.size = attr.size;
    (view, tail_zero)
}

fn u16_at(attr: &RawAttr, offset: usize) -> u16 {
    let b = attr.as_bytes();
    match b.get(offset..offset + 2) {
        Some(s) => u16::from_ne_bytes([s[0], s[1]]),
        None => 0,
    }
}

/// Where the caller's process lives: pid 0 means the calling process.
fn task_exists(pid: i32) -> bool {
    pid == 0 || std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Checks one `perf_event_open` call on the emulated [`NR_CPUS`]-CPU machine. On success
/// returns the attr as the kernel stored it (unknown tail cut, padding fields it ignores
/// cleared); on E2BIG writes the kernel's struct size into `attr.size`, as the syscall does.
pub fn check_open(
    p: &KernelProfile,
    attr: &mut RawAttr,
    pid: i32,
    cpu: i32,
    open_flags: u64,
    tracepoint_ids: &[u64],
) -> Result<RawAttr, Errno> {
    check_open_on(p, attr, pid, cpu, open_flags, tracepoint_ids, NR_CPUS)
}

/// [`check_open`] on a machine with `nr_cpus` CPUs (the real one, for the interposer).
pub fn check_open_on(
    p: &KernelProfile,
    attr: &mut RawAttr,
    pid: i32,
    cpu: i32,
    open_flags: u64,
    tracepoint_ids: &[u64],
    nr_cpus: i32,
) -> Result<RawAttr, Errno> {
    if open_flags & !p.known_open_flags != 0 {
        return Err(Errno::EINVAL);
    }
    let given_size = if attr.size == 0 {
        size::VER0
    } else {
        attr.size
    };
    if !(size::VER0..=4096).contains(&given_size) {
        attr.size = p.attr_size;
        return Err(Errno::E2BIG);
    }
    let mut sized = *attr;
    sized.size = given_size;
    let (mut a, tail_zero) = kernel_view(&sized, p.attr_size);
    if given_size > p.attr_size && !tail_zero {
        attr.size = p.attr_size;
        return Err(Errno::E2BIG);
    }
    if a.flags & !p.known_flags != 0 {
        return Err(Errno::EINVAL);
    }
    if a.sample_type & !p.known_sample_type != 0 {
        return Err(Errno::EINVAL);
    }
    if a.read_format & !p.known_read_format != 0 {
        return Err(Errno::EINVAL);
    }
    if p.rejects_reserved && p.attr_size > RESERVED_2_AT as u32 && u16_at(&a, RESERVED_2_AT) != 0 {
        return Err(Errno::EINVAL);
    }
    // Fields that live in padding on this kernel are not fields at all: clear them so the
    // stored attr says what the kernel will actually do.
    if !p.knows_flag(flag::USE_CLOCKID) {
        a.clockid = 0;
    }
    if !p.honours_sample_max_stack {
        a.sample_max_stack = 0;
        a.reserved_2 = 0;
    }
    if a.has(flag::USE_CLOCKID) && !CLOCKIDS.contains(&a.clockid) {
        return Err(Errno::EINVAL);
    }
    if p.honours_sample_max_stack {
        if let Some(max) = p.sysctl_max_stack {
            if i64::from(a.sample_max_stack) > max {
                return Err(Errno::EOVERFLOW);
            }
        }
    }
    if a.has(flag::FREQ) {
        if a.sample_period_or_freq > p.sysctl_max_sample_rate.max(0) as u64 {
            return Err(Errno::EINVAL);
        }
    } else if a.sample_period_or_freq & (1 << 63) != 0 {
        return Err(Errno::EINVAL);
    }
    if a.sample_type & sample::STACK_USER != 0
        && (a.sample_stack_user > MAX_STACK_USER || a.sample_stack_user % 8 != 0)
    {
        return Err(Errno::EINVAL);
    }
    if a.sample_type & sample::REGS_USER != 0 && a.sample_regs_user & BAD_REGS_X86_64 != 0 {
        return Err(Errno::EINVAL);
    }
    if pid == -1 && cpu == -1 {
        return Err(Errno::EINVAL);
    }
    if !(-1..nr_cpus).contains(&cpu) {
        return Err(Errno::EINVAL);
    }
    match a.type_ {
        // The emulated machine is a VM without a PMU, like the development host.
        event_type::HARDWARE => return Err(Errno::ENOENT),
        event_type::SOFTWARE => {
            // PERF_COUNT_SW_DUMMY (9) is 3.12, BPF_OUTPUT (10) is 4.4.
            let max = if p.ioc_id { 10 } else { 8 };
            if a.config > max {
                return Err(Errno::ENOENT);
            }
            if a.sample_type & sample::BRANCH_STACK != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
        }
        event_type::TRACEPOINT => {
            if !tracepoint_ids.contains(&a.config) {
                return Err(Errno::ENOENT);
            }
        }
        _ => return Err(Errno::ENOENT),
    }
    if pid > 0 && !task_exists(pid) {
        return Err(Errno::ESRCH);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile;
    use perfring::attr::{AttrBuilder, EventKind};

    fn clock() -> AttrBuilder {
        AttrBuilder::new(EventKind::CpuClock).frequency(99)
    }

    #[test]
    fn a_larger_attr_with_a_nonzero_tail_is_e2big_with_the_size_written_back() {
        let p = profile::upstream_3_10();
        let mut a = clock().sample_max_stack(32).build();
        assert_eq!(a.size, size::VER5);
        assert_eq!(check_open(&p, &mut a, 0, 0, 0, &[]), Err(Errno::E2BIG));
        assert_eq!(a.size, size::VER3);
        // The same size with a zero tail is accepted.
        let mut a = clock().build();
        a.size = size::VER5;
        assert!(check_open(&p, &mut a, 0, 0, 0, &[]).is_ok());
    }

    #[test]
    fn unknown_flags_and_open_flags_are_einval() {
        let p = profile::upstream_3_10();
        let mut a = clock().mmap2(true).build();
        assert_eq!(check_open(&p, &mut a, 0, 0, 0, &[]), Err(Errno::EINVAL));
        let mut a = clock().build();
        let cloexec = perfring::sys::open_flag::FD_CLOEXEC;
        assert_eq!(
            check_open(&p, &mut a, 0, 0, cloexec, &[]),
            Err(Errno::EINVAL)
        );
        assert!(check_open(&profile::rhel_7_9(), &mut a, 0, 0, cloexec, &[]).is_ok());
    }

    #[test]
    fn rhel7_accepts_and_ignores_sample_max_stack() {
        let mut a = clock().sample_max_stack(8).build();
        let stored = check_open(&profile::rhel_7_9(), &mut a, 0, 0, 0, &[]).unwrap();
        assert_eq!(stored.sample_max_stack, 0);
        let stored = check_open(&profile::v4_9(), &mut a, 0, 0, 0, &[]).unwrap();
        assert_eq!(stored.sample_max_stack, 8);
        let mut a = clock().sample_max_stack(500).build();
        assert_eq!(
            check_open(&profile::v4_9(), &mut a, 0, 0, 0, &[]),
            Err(Errno::EOVERFLOW)
        );
    }

    #[test]
    fn reserved_bytes_are_checked_only_on_new_kernels() {
        let mut a = clock().sample_max_stack(8).build();
        a.reserved_2 = 1;
        assert!(check_open(&profile::v4_19(), &mut a, 0, 0, 0, &[]).is_ok());
        assert_eq!(
            check_open(&profile::v5_4(), &mut a, 0, 0, 0, &[]),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn clockid_in_3_10_padding_is_ignored_but_the_flag_is_not() {
        let p = profile::upstream_3_10();
        let mut a = clock().build();
        a.clockid = 1;
        a.size = size::VER3;
        let stored = check_open(&p, &mut a, 0, 0, 0, &[]).unwrap();
        assert_eq!(stored.clockid, 0);
        let mut a = clock().use_clockid(Some(1)).build();
        assert_eq!(check_open(&p, &mut a, 0, 0, 0, &[]), Err(Errno::EINVAL));
        let mut a = clock().use_clockid(Some(99)).build();
        assert_eq!(
            check_open(&profile::v4_9(), &mut a, 0, 0, 0, &[]),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn sample_types_hardware_and_targets() {
        let p = profile::upstream_3_10();
        let mut a = clock().sample_type(sample::IDENTIFIER).build();
        assert_eq!(check_open(&p, &mut a, 0, 0, 0, &[]), Err(Errno::EINVAL));
        let mut a = AttrBuilder::new(EventKind::Cycles).build();
        assert_eq!(check_open(&p, &mut a, 0, 0, 0, &[]), Err(Errno::ENOENT));
        let mut a = clock().build();
        assert_eq!(check_open(&p, &mut a, -1, -1, 0, &[]), Err(Errno::EINVAL));
        assert_eq!(check_open(&p, &mut a, -1, 7, 0, &[]), Err(Errno::EINVAL));
        assert_eq!(
            check_open(&p, &mut a, i32::MAX, 0, 0, &[]),
            Err(Errno::ESRCH)
        );
        let mut a = AttrBuilder::new(EventKind::Tracepoint(5)).build();
        assert_eq!(check_open(&p, &mut a, -1, 0, 0, &[6]), Err(Errno::ENOENT));
        assert!(check_open(&p, &mut a, -1, 0, 0, &[5]).is_ok());
    }
}

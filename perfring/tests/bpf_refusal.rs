//! Kernels without bpf(2), with BPF locked down, or without PERF_EVENT_IOC_SET_BPF,
//! emulated on this kernel with a per-thread seccomp filter that makes exactly that call
//! fail with the errno such a kernel returns. The library must hand back an error value
//! naming the errno and a remedy — what `--bpf auto` falls back on.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use perf_event_open_sys as sys;
use perfring::bpf::{probe, BpfError, StackCounter, StackCounterOptions};

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
// Classic BPF opcodes for the seccomp filter.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
// Offsets in struct seccomp_data.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// Low half of syscall argument `i` (little-endian u64s from offset 16).
const fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k,
    }
}

/// Make `syscall` (optionally only when argument `arg.0` equals `arg.1`) fail with
/// `errno`, for the calling thread only.
fn refuse_on_this_thread(syscall: libc::c_long, arg: Option<(u32, u32)>, errno: Errno) {
    let ret_errno = SECCOMP_RET_ERRNO | (errno as u32 & 0xffff);
    let mut filter = vec![
        stmt(LD_W_ABS, ARCH),
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, SECCOMP_RET_ALLOW),
        stmt(LD_W_ABS, NR),
    ];
    match arg {
        None => {
            filter.push(jeq(syscall as u32, 0, 1));
        }
        Some((index, value)) => {
            filter.push(jeq(syscall as u32, 0, 3));
            filter.push(stmt(LD_W_ABS, arg_lo(index)));
            filter.push(jeq(value, 0, 1));
        }
    }
    filter.push(stmt(RET_K, ret_errno));
    filter.push(stmt(RET_K, SECCOMP_RET_ALLOW));
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with documented arguments; prog points at a live filter.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog
            ),
            0,
            "seccomp: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Run `f` on a fresh thread (seccomp filters stick to the thread that installs them).
fn on_restricted_thread<T: Send + 'static>(
    syscall: libc::c_long,
    arg: Option<(u32, u32)>,
    errno: Errno,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        refuse_on_this_thread(syscall, arg, errno);
        f()
    })
    .join()
    .expect("restricted thread panicked")
}

#[test]
fn kernel_without_bpf_syscall() {
    test_support::require!(test_support::Need::Root);
    let err = on_restricted_thread(libc::SYS_bpf, None, Errno::ENOSYS, || {
        probe().expect_err("bpf(2) is refused")
    });
    assert_eq!(err.errno(), Some(Errno::ENOSYS), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("3.18") && text.contains("--bpf never"),
        "{text}"
    );
}

#[test]
fn bpf_locked_down() {
    test_support::require!(test_support::Need::Root);
    let err = on_restricted_thread(libc::SYS_bpf, None, Errno::EPERM, || {
        StackCounter::load(&StackCounterOptions::default()).expect_err("bpf(2) is refused")
    });
    assert_eq!(err.errno(), Some(Errno::EPERM), "{err:?}");
    assert!(err.to_string().contains("root"), "{err}");
}

#[test]
fn kernel_without_set_bpf() {
    test_support::require!(test_support::Need::Root);
    let err = on_restricted_thread(
        libc::SYS_ioctl,
        Some((1, sys::bindings::SET_BPF)),
        Errno::ENOTTY,
        || {
            let counter = StackCounter::load(&StackCounterOptions::default()).expect("load");
            let mut attr = sys::bindings::perf_event_attr {
                type_: sys::bindings::PERF_TYPE_SOFTWARE,
                size: std::mem::size_of::<sys::bindings::perf_event_attr>() as u32,
                config: u64::from(sys::bindings::PERF_COUNT_SW_CPU_CLOCK),
                ..Default::default()
            };
            attr.__bindgen_anon_1.sample_period = 1_000_000;
            attr.set_disabled(1);
            // SAFETY: a fully initialised attr for the calling thread.
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
            // SAFETY: fresh fd.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            counter.attach(fd.as_fd()).expect_err("SET_BPF is refused")
        },
    );
    assert!(
        matches!(
            err,
            BpfError::Syscall {
                errno: Errno::ENOTTY,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("4.1"), "{err}");
}

/// Before 4.9 the kernel knows no BPF_PROG_TYPE_PERF_EVENT: BPF_PROG_LOAD (cmd 5) is
/// EINVAL with an empty verifier log, while maps still work.
#[test]
fn kernel_without_perf_event_programs() {
    test_support::require!(test_support::Need::Root);
    const PROG_LOAD: u32 = 5;
    let err = on_restricted_thread(libc::SYS_bpf, Some((0, PROG_LOAD)), Errno::EINVAL, || {
        probe().expect_err("program type refused")
    });
    assert!(
        matches!(
            err,
            BpfError::Syscall {
                errno: Errno::EINVAL,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("4.9"), "{err}");
}

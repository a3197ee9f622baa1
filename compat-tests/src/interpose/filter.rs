//! The seccomp filter installed in the launched process, and its installation between fork
//! and exec.
//!
//! The filter sends to the supervisor (SECCOMP_RET_USER_NOTIF) exactly the calls an old kernel
//! answers differently: `perf_event_open`, `bpf`, ioctls of the perf type (`'$'`) and `mmap`
//! of a file descriptor (the supervisor lets through those that are not perf events).
//! Everything else, and every call of another architecture, runs untouched. It is ~14 classic
//! BPF instructions, written out here: the seccomp crates at hand build filters for the
//! allow/errno/kill actions, not for user notification.

use std::io;
use std::os::fd::RawFd;

/// AUDIT_ARCH_X86_64: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// Offsets in `struct seccomp_data`: nr, arch, then args[6] (u64, low half first).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// An instruction; jumps name absolute targets and are made relative in [`program`].
#[derive(Clone, Copy)]
enum Insn {
    Load(u32),
    And(u32),
    JumpIfEq { k: u32, then: usize, or: usize },
    Ret(u32),
}

const NOTIFY: usize = 12;
const ALLOW: usize = 13;

/// The filter program, as the kernel takes it.
pub fn program() -> Vec<libc::sock_filter> {
    use Insn::*;
    let nr = |n: libc::c_long| n as u32;
    let insns = [
        /* 0 */ Load(OFF_ARCH),
        /* 1 */
        JumpIfEq {
            k: AUDIT_ARCH_X86_64,
            then: 2,
            or: ALLOW,
        },
        /* 2 */ Load(OFF_NR),
        /* 3 */
        JumpIfEq {
            k: nr(libc::SYS_perf_event_open),
            then: NOTIFY,
            or: 4,
        },
        /* 4 */
        JumpIfEq {
            k: nr(libc::SYS_bpf),
            then: NOTIFY,
            or: 5,
        },
        /* 5 */
        JumpIfEq {
            k: nr(libc::SYS_ioctl),
            then: 9,
            or: 6,
        },
        /* 6 */
        JumpIfEq {
            k: nr(libc::SYS_mmap),
            then: 7,
            or: ALLOW,
        },
        // mmap(addr, len, prot, flags, fd, off): anything but fd == -1 may be a perf ring.
        /* 7 */
        Load(arg_low(4)),
        /* 8 */
        JumpIfEq {
            k: u32::MAX,
            then: ALLOW,
            or: NOTIFY,
        },
        // ioctl(fd, request, arg): the type byte of the request is '$' for perf.
        /* 9 */
        Load(arg_low(1)),
        /* 10 */ And(0xff00),
        /* 11 */
        JumpIfEq {
            k: crate::ioctl_rules::PERF_IOC_MAGIC << 8,
            then: NOTIFY,
            or: ALLOW,
        },
        /* 12 */ Ret(libc::SECCOMP_RET_USER_NOTIF),
        /* 13 */ Ret(libc::SECCOMP_RET_ALLOW),
    ];
    insns
        .iter()
        .enumerate()
        .map(|(pc, insn)| match *insn {
            Load(off) => stmt(LD_W_ABS, off),
            And(k) => stmt(AND_K, k),
            Ret(k) => stmt(RET_K, k),
            JumpIfEq { k, then, or } => libc::sock_filter {
                code: JEQ_K,
                // Classic BPF jumps only forward, relative to the next instruction.
                jt: relative(pc, then),
                jf: relative(pc, or),
                k,
            },
        })
        .collect()
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn relative(pc: usize, target: usize) -> u8 {
    let off = target
        .checked_sub(pc + 1)
        .expect("seccomp jumps go forward");
    u8::try_from(off).expect("seccomp jump within 255 instructions")
}

/// Installs `prog` with a new listener and sends the listener fd over `sock`. Runs in the
/// child between fork and exec, so it only makes system calls (no allocation, no locks).
///
/// # Safety
/// Call only in a freshly forked child (Command::pre_exec); `sock` must be a connected unix
/// socket and `prog` a valid filter.
pub unsafe fn install_and_send(
    prog: &[libc::sock_filter],
    sock: RawFd,
    no_new_privs: bool,
) -> io::Result<()> {
    // SAFETY (whole body): plain system calls on values owned by this frame.
    unsafe {
        if no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fprog = libc::sock_fprog {
            len: prog.len() as libc::c_ushort,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        let listener = libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        );
        if listener < 0 {
            return Err(io::Error::last_os_error());
        }
        let sent = send_fd(sock, listener as RawFd);
        libc::close(listener as RawFd);
        sent
    }
}

/// The buffers of a one-byte message carrying one fd, on the stack (sending happens between
/// fork and exec, where nothing may allocate).
struct FdMessage {
    byte: [u8; 1],
    iov: libc::iovec,
    /// CMSG_SPACE(sizeof(int)) is 24 on x86_64; u64s keep it aligned for cmsghdr.
    control: [u64; 4],
}

impl FdMessage {
    fn new() -> FdMessage {
        FdMessage {
            byte: [0],
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 1,
            },
            control: [0; 4],
        }
    }

    /// A msghdr over these buffers with `controllen` bytes of control data; it points into
    /// `self`, which must not move while the header is in use.
    fn header(&mut self, controllen: usize) -> libc::msghdr {
        self.iov.iov_base = self.byte.as_mut_ptr().cast();
        // SAFETY: msghdr is plain data; every pointer field is set or left null below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut self.iov;
        msg.msg_iovlen = 1;
        msg.msg_control = self.control.as_mut_ptr().cast();
        msg.msg_controllen = controllen.min(std::mem::size_of_val(&self.control));
        msg
    }
}

/// CMSG_LEN of one fd.
fn fd_cmsg_len() -> usize {
    // SAFETY: CMSG_LEN is arithmetic on its argument.
    unsafe { libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize }
}

/// Sends one fd with SCM_RIGHTS, from stack buffers only.
///
/// # Safety
/// `sock` and `fd` must be open file descriptors.
unsafe fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut m = FdMessage::new();
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let msg = m.header(space);
    // SAFETY: the header points into `m`, alive and unmoved for the whole block; the one
    // cmsg of one int lies inside its control buffer.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = fd_cmsg_len();
        libc::CMSG_DATA(cmsg).cast::<RawFd>().write_unaligned(fd);
        if libc::sendmsg(sock, &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives the fd [`install_and_send`] sent.
pub fn recv_fd(sock: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut m = FdMessage::new();
    let mut msg = m.header(usize::MAX);
    // SAFETY: recvmsg into `m`'s buffers, alive and unmoved for the whole block; the cmsg
    // is read only after checking its level, type and length.
    unsafe {
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if n == 0
            || cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            || (*cmsg).cmsg_len != fd_cmsg_len()
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the launched process sent no seccomp listener",
            ));
        }
        let fd = libc::CMSG_DATA(cmsg).cast::<RawFd>().read_unaligned();
        Ok(std::os::fd::OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_the_two_returns() {
        let p = program();
        assert_eq!(p.len(), 14);
        assert_eq!(p[NOTIFY].k, libc::SECCOMP_RET_USER_NOTIF);
        assert_eq!(p[ALLOW].k, libc::SECCOMP_RET_ALLOW);
        for (pc, i) in p.iter().enumerate() {
            if i.code == JEQ_K {
                for off in [i.jt, i.jf] {
                    assert!(pc + 1 + (off as usize) < p.len());
                }
            }
        }
        // The arch check falls through to ALLOW for other architectures.
        assert_eq!(1 + 1 + p[1].jf as usize, ALLOW);
    }
}

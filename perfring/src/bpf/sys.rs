//! Thin wrappers over the `bpf(2)` syscall.
//!
//! Each command gets its own `#[repr(C)]` prefix of `union bpf_attr`, only as long as the
//! fields we set. The kernel accepts a shorter attr (it zero-fills the rest), while a longer
//! one is refused with E2BIG on kernels that do not know the extra bytes unless they are
//! zero — so keeping each struct minimal is what lets one binary run from 4.9 to today.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

mod cmd {
    pub const MAP_CREATE: libc::c_int = 0;
    pub const MAP_LOOKUP_ELEM: libc::c_int = 1;
    pub const MAP_UPDATE_ELEM: libc::c_int = 2;
    pub const MAP_DELETE_ELEM: libc::c_int = 3;
    pub const MAP_GET_NEXT_KEY: libc::c_int = 4;
    pub const PROG_LOAD: libc::c_int = 5;
    pub const OBJ_GET_INFO_BY_FD: libc::c_int = 15;
    pub const MAP_LOOKUP_AND_DELETE_ELEM: libc::c_int = 21;
}

/// Map types used by psample.
pub mod map_type {
    /// BPF_MAP_TYPE_HASH.
    pub const HASH: u32 = 1;
    /// BPF_MAP_TYPE_ARRAY.
    pub const ARRAY: u32 = 2;
    /// BPF_MAP_TYPE_PERF_EVENT_ARRAY (4.3): perf event fds per CPU, for bpf_perf_event_output.
    pub const PERF_EVENT_ARRAY: u32 = 4;
    /// BPF_MAP_TYPE_PERCPU_ARRAY (4.6): one value per CPU, for scratch buffers.
    pub const PERCPU_ARRAY: u32 = 6;
    /// BPF_MAP_TYPE_STACK_TRACE.
    pub const STACK_TRACE: u32 = 7;
}

/// Program types used by psample.
pub mod prog_type {
    /// BPF_PROG_TYPE_TRACEPOINT (4.7): attached to a tracepoint perf event.
    pub const TRACEPOINT: u32 = 5;
    /// BPF_PROG_TYPE_PERF_EVENT.
    pub const PERF_EVENT: u32 = 7;
}

/// Update flags.
pub mod update {
    /// BPF_ANY: create or update.
    pub const ANY: u64 = 0;
    /// BPF_NOEXIST: create only.
    pub const NOEXIST: u64 = 1;
}

/// Kernel's own ceiling on `log_size` (UINT_MAX >> 2 since 5.2, >> 8 before).
pub const MAX_LOG_SIZE: u32 = u32::MAX >> 8;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapCreateNamedAttr {
    base: MapCreateAttr,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadNamedAttr {
    base: ProgLoadAttr,
    prog_name: [u8; 16],
}

/// # Safety
/// `attr` must point to a struct laid out as the `bpf_attr` prefix for `cmd`, and every
/// pointer inside it must be valid for what that command reads or writes.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> Result<libc::c_long, Errno> {
    let rc = libc::syscall(
        libc::SYS_bpf,
        cmd,
        attr as *mut T as *mut libc::c_void,
        std::mem::size_of::<T>() as libc::c_uint,
    );
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

fn object_name(name: &str) -> [u8; 16] {
    // The kernel allows only [A-Za-z0-9_.] and 15 bytes plus NUL.
    let mut out = [0u8; 16];
    for (slot, b) in out
        .iter_mut()
        .zip(
            name.bytes()
                .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.'),
        )
        .take(15)
    {
        *slot = b;
    }
    out
}

fn owned(fd: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = libc::c_int::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: a fresh fd returned by bpf(2), owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_MAP_CREATE`. Tries with a name first (4.15+; visible in bpftool) and falls back
/// to an unnamed map when the kernel does not know the field (E2BIG).
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> Result<OwnedFd, Errno> {
    let base = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
    };
    let mut named = MapCreateNamedAttr {
        base,
        map_name: object_name(name),
        ..Default::default()
    };
    // SAFETY: MapCreateNamedAttr is a prefix of bpf_attr for BPF_MAP_CREATE; no pointers.
    match unsafe { bpf(cmd::MAP_CREATE, &mut named) } {
        Ok(fd) => owned(fd),
        Err(Errno::E2BIG) => {
            let mut plain = named.base;
            // SAFETY: as above, shorter prefix.
            owned(unsafe { bpf(cmd::MAP_CREATE, &mut plain) }?)
        }
        Err(e) => Err(e),
    }
}

fn elem_op(
    cmd: libc::c_int,
    map: BorrowedFd<'_>,
    key: *const u8,
    value: *mut u8,
    flags: u64,
) -> Result<(), Errno> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as u64,
        value_or_next_key: value as u64,
        flags,
        ..Default::default()
    };
    // SAFETY: callers pass key/value buffers sized for the map (checked by the safe
    // wrappers in maps.rs against the sizes the map was created with).
    unsafe { bpf(cmd, &mut attr) }.map(drop)
}

/// `BPF_MAP_LOOKUP_ELEM`.
///
/// # Safety
/// `key` must be `key_size` readable bytes and `value` `value_size` writable bytes of `map`
/// (for per-CPU maps, value_size times the number of possible CPUs).
pub unsafe fn map_lookup(map: BorrowedFd<'_>, key: *const u8, value: *mut u8) -> Result<(), Errno> {
    elem_op(cmd::MAP_LOOKUP_ELEM, map, key, value, 0)
}

/// `BPF_MAP_UPDATE_ELEM`.
///
/// # Safety
/// As for [`map_lookup`], with `value` only read.
pub unsafe fn map_update(
    map: BorrowedFd<'_>,
    key: *const u8,
    value: *const u8,
    flags: u64,
) -> Result<(), Errno> {
    elem_op(cmd::MAP_UPDATE_ELEM, map, key, value as *mut u8, flags)
}

/// `BPF_MAP_DELETE_ELEM`.
///
/// # Safety
/// `key` must be `key_size` readable bytes.
pub unsafe fn map_delete(map: BorrowedFd<'_>, key: *const u8) -> Result<(), Errno> {
    elem_op(cmd::MAP_DELETE_ELEM, map, key, std::ptr::null_mut(), 0)
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (hash maps from 5.14; EINVAL/ENOTSUPP before).
///
/// # Safety
/// As for [`map_lookup`].
pub unsafe fn map_lookup_and_delete(
    map: BorrowedFd<'_>,
    key: *const u8,
    value: *mut u8,
) -> Result<(), Errno> {
    elem_op(cmd::MAP_LOOKUP_AND_DELETE_ELEM, map, key, value, 0)
}

/// `BPF_MAP_GET_NEXT_KEY`; a null `key` asks for the first key (4.12+; older kernels
/// need a key that is not in the map, which callers handle).
///
/// # Safety
/// `key` null or `key_size` readable bytes; `next` `key_size` writable bytes.
pub unsafe fn map_get_next_key(
    map: BorrowedFd<'_>,
    key: *const u8,
    next: *mut u8,
) -> Result<(), Errno> {
    elem_op(cmd::MAP_GET_NEXT_KEY, map, key, next, 0)
}

/// Everything `BPF_PROG_LOAD` needs from the caller.
pub struct ProgLoad<'a> {
    /// BPF_PROG_TYPE_*.
    pub prog_type: u32,
    /// The instructions (8 bytes each).
    pub insns: &'a [u8],
    /// The license (GPL-compatible for the helpers used).
    pub license: &'a std::ffi::CStr,
    /// Kernel version (checked by kernels before 5.0 for kprobes; 0 otherwise).
    pub kern_version: u32,
    /// The program name (truncated to 15 bytes).
    pub name: &'a str,
    /// Verifier log destination; `None` loads without a log (faster).
    pub log: Option<&'a mut [u8]>,
}

/// `BPF_PROG_LOAD`. Like [`map_create`], retries without a name on E2BIG.
pub fn prog_load(req: ProgLoad<'_>) -> Result<OwnedFd, Errno> {
    let insn_cnt = u32::try_from(req.insns.len() / 8).map_err(|_| Errno::E2BIG)?;
    let (log_level, log_size, log_buf) = match req.log {
        Some(buf) if !buf.is_empty() => (
            1,
            u32::try_from(buf.len())
                .unwrap_or(MAX_LOG_SIZE)
                .min(MAX_LOG_SIZE),
            buf.as_mut_ptr() as u64,
        ),
        _ => (0, 0, 0),
    };
    let base = ProgLoadAttr {
        prog_type: req.prog_type,
        insn_cnt,
        insns: req.insns.as_ptr() as u64,
        license: req.license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        kern_version: req.kern_version,
        prog_flags: 0,
    };
    let mut named = ProgLoadNamedAttr {
        base,
        prog_name: object_name(req.name),
    };
    // SAFETY: insns/license/log_buf point to live buffers of the stated sizes for the
    // duration of the call; the kernel writes at most log_size bytes to log_buf.
    match unsafe { bpf(cmd::PROG_LOAD, &mut named) } {
        Ok(fd) => owned(fd),
        Err(Errno::E2BIG) => {
            let mut plain = named.base;
            // SAFETY: as above.
            owned(unsafe { bpf(cmd::PROG_LOAD, &mut plain) }?)
        }
        Err(e) => Err(e),
    }
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Offset of `recursion_misses` in `struct bpf_prog_info` (5.12+).
const RECURSION_MISSES_OFF: usize = 208;

/// How many times the kernel skipped program `prog` instead of running it, because a BPF
/// program (or a `bpf(2)` map operation, which blocks tracing programs the same way) was
/// already active on that CPU: `recursion_misses` of `BPF_OBJ_GET_INFO_BY_FD` (5.12+).
/// `None` where the kernel does not report it.
pub fn prog_recursion_misses(prog: BorrowedFd<'_>) -> Option<u64> {
    let mut info = [0u8; RECURSION_MISSES_OFF + 8];
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: attr is the OBJ_GET_INFO_BY_FD prefix; info points to info_len writable bytes.
    unsafe { bpf(cmd::OBJ_GET_INFO_BY_FD, &mut attr) }.ok()?;
    // The kernel writes back how much it filled: older kernels stop before the field.
    if (attr.info_len as usize) < info.len() {
        return None;
    }
    let b = info.get(RECURSION_MISSES_OFF..)?;
    Some(u64::from_ne_bytes(b.try_into().ok()?))
}

/// `LINUX_VERSION_CODE` of the running kernel, for `kern_version` (only kprobe programs on
/// pre-5.0 kernels check it, but old kernels reject a mismatch there, so send the truth).
pub fn kernel_version_code() -> u32 {
    // SAFETY: uname fills a caller-owned utsname; zeroed is a valid initial value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    let release = if unsafe { libc::uname(&mut uts) } == 0 {
        // SAFETY: the kernel NUL-terminates release within its fixed-size array.
        unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        String::new()
    };
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0).min(255);
    let minor = parts.next().unwrap_or(0).min(255);
    let patch = parts.next().unwrap_or(0).min(255);
    (major << 16) | (minor << 8) | patch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel_offsets() {
        assert_eq!(std::mem::size_of::<MapCreateAttr>(), 20);
        assert_eq!(std::mem::offset_of!(MapCreateNamedAttr, map_name), 28);
        assert_eq!(std::mem::size_of::<ElemAttr>(), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, kern_version), 40);
        assert_eq!(std::mem::offset_of!(ProgLoadNamedAttr, prog_name), 48);
        assert_eq!(std::mem::size_of::<ProgLoadNamedAttr>(), 64);
    }

    #[test]
    fn names_are_sanitised_and_truncated() {
        assert_eq!(&object_name("psample-stacks")[..14], b"psamplestacks\0");
        let long = object_name("abcdefghijklmnopqrstuvwxyz");
        assert_eq!(&long[..15], b"abcdefghijklmno");
        assert_eq!(long[15], 0);
    }

    #[test]
    fn version_code_is_plausible() {
        let code = kernel_version_code();
        assert!(code >= (3 << 16), "version code {code:#x}");
    }
}

//! Which perf ioctls and whether `bpf(2)` a kernel of a given profile knows, shared by the
//! emulated kernel ([`crate::kernel`]) and the real-kernel interposer ([`crate::interpose`]).
//!
//! An ioctl number the kernel does not know reaches `perf_ioctl`'s `default:` case, which
//! returns ENOTTY; a kernel without the `bpf` syscall answers ENOSYS.

use perfring::sys::Errno;

use crate::profile::KernelProfile;

/// The perf ioctls, by their number in `_IO('$', nr)` (include/uapi/linux/perf_event.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerfIoctl {
    Enable,
    Disable,
    Refresh,
    Reset,
    Period,
    SetOutput,
    SetFilter,
    /// PERF_EVENT_IOC_ID (3.12).
    Id,
    /// PERF_EVENT_IOC_SET_BPF (4.1).
    SetBpf,
    /// PERF_EVENT_IOC_PAUSE_OUTPUT (4.7).
    PauseOutput,
    /// PERF_EVENT_IOC_QUERY_BPF (4.16).
    QueryBpf,
    /// PERF_EVENT_IOC_MODIFY_ATTRIBUTES (4.17).
    ModifyAttributes,
    /// A number no kernel defines.
    Unknown(u32),
}

/// The ioctl type byte of every perf ioctl.
pub const PERF_IOC_MAGIC: u32 = b'$' as u32;

impl PerfIoctl {
    /// The perf ioctl of an ioctl request number, or None when it is not a perf ioctl.
    pub fn from_request(request: u32) -> Option<PerfIoctl> {
        if (request >> 8) & 0xff != PERF_IOC_MAGIC {
            return None;
        }
        Some(match request & 0xff {
            0 => PerfIoctl::Enable,
            1 => PerfIoctl::Disable,
            2 => PerfIoctl::Refresh,
            3 => PerfIoctl::Reset,
            4 => PerfIoctl::Period,
            5 => PerfIoctl::SetOutput,
            6 => PerfIoctl::SetFilter,
            7 => PerfIoctl::Id,
            8 => PerfIoctl::SetBpf,
            9 => PerfIoctl::PauseOutput,
            10 => PerfIoctl::QueryBpf,
            11 => PerfIoctl::ModifyAttributes,
            nr => PerfIoctl::Unknown(nr),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PerfIoctl::Enable => "ENABLE",
            PerfIoctl::Disable => "DISABLE",
            PerfIoctl::Refresh => "REFRESH",
            PerfIoctl::Reset => "RESET",
            PerfIoctl::Period => "PERIOD",
            PerfIoctl::SetOutput => "SET_OUTPUT",
            PerfIoctl::SetFilter => "SET_FILTER",
            PerfIoctl::Id => "ID",
            PerfIoctl::SetBpf => "SET_BPF",
            PerfIoctl::PauseOutput => "PAUSE_OUTPUT",
            PerfIoctl::QueryBpf => "QUERY_BPF",
            PerfIoctl::ModifyAttributes => "MODIFY_ATTRIBUTES",
            PerfIoctl::Unknown(_) => "unknown",
        }
    }
}

/// Whether a kernel of profile `p` has this ioctl at all: ENOTTY when it does not.
pub fn check_ioctl(p: &KernelProfile, which: PerfIoctl) -> Result<(), Errno> {
    let known = match which {
        PerfIoctl::Enable
        | PerfIoctl::Disable
        | PerfIoctl::Refresh
        | PerfIoctl::Reset
        | PerfIoctl::Period
        | PerfIoctl::SetOutput
        | PerfIoctl::SetFilter => true,
        PerfIoctl::Id => p.ioc_id,
        PerfIoctl::SetBpf => p.ioc_set_bpf,
        PerfIoctl::PauseOutput => p.ioc_pause_output,
        PerfIoctl::QueryBpf => p.ioc_query_bpf,
        PerfIoctl::ModifyAttributes => p.ioc_modify_attributes,
        PerfIoctl::Unknown(_) => false,
    };
    if known {
        Ok(())
    } else {
        Err(Errno::ENOTTY)
    }
}

/// Whether a kernel of profile `p` has the `bpf` syscall (ENOSYS when it does not).
pub fn check_bpf_syscall(p: &KernelProfile) -> Result<(), Errno> {
    if p.bpf_syscall {
        Ok(())
    } else {
        Err(Errno::ENOSYS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile;

    #[test]
    fn request_numbers_decode_only_for_perf() {
        // _IOR('$', 7, __u64) and _IOW('$', 8, __u32) as the kernel headers define them.
        assert_eq!(PerfIoctl::from_request(0x8008_2407), Some(PerfIoctl::Id));
        assert_eq!(
            PerfIoctl::from_request(0x4004_2408),
            Some(PerfIoctl::SetBpf)
        );
        assert_eq!(PerfIoctl::from_request(0x2400), Some(PerfIoctl::Enable));
        // TCGETS is not a perf ioctl.
        assert_eq!(PerfIoctl::from_request(0x5401), None);
    }

    #[test]
    fn old_kernels_refuse_what_they_lack_with_enotty() {
        let old = profile::upstream_3_10();
        assert_eq!(check_ioctl(&old, PerfIoctl::Enable), Ok(()));
        assert_eq!(check_ioctl(&old, PerfIoctl::Id), Err(Errno::ENOTTY));
        assert_eq!(check_ioctl(&old, PerfIoctl::SetBpf), Err(Errno::ENOTTY));
        assert_eq!(check_bpf_syscall(&old), Err(Errno::ENOSYS));
        let early = profile::rhel_7_early();
        assert_eq!(check_ioctl(&early, PerfIoctl::Id), Ok(()));
        assert_eq!(
            check_ioctl(&early, PerfIoctl::PauseOutput),
            Err(Errno::ENOTTY)
        );
        let rhel79 = profile::rhel_7_9();
        assert_eq!(check_ioctl(&rhel79, PerfIoctl::QueryBpf), Ok(()));
        assert_eq!(
            check_ioctl(&rhel79, PerfIoctl::ModifyAttributes),
            Err(Errno::ENOTTY)
        );
        assert_eq!(
            check_ioctl(&profile::v6_x(), PerfIoctl::ModifyAttributes),
            Ok(())
        );
    }
}

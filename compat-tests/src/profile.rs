//! What each emulated kernel knows: attr layout, flag and sample_type bits, open flags,
//! ioctls, ring header layout, record types, tracing filesystem and tracepoint formats.
//!
//! Every value comes from shared/kernel-compat.md (first mainline kernel of each feature,
//! RHEL 7 notes). Where RHEL 7's backports are uncertain the choice is said at the field.

use perfring::attr::size;

/// Where the kernel exposes tracepoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracingLayout {
    /// tracefs at /sys/kernel/tracing (4.1+), already mounted; debugfs' compatibility
    /// `tracing/` directory is present too, as on real 4.1+ systems.
    Tracefs,
    /// Only debugfs' `tracing/` (before 4.1, and RHEL 7); `debugfs_mounted` says whether it
    /// is mounted at start (if not, psample has to mount it, as root).
    DebugfsOnly { debugfs_mounted: bool },
}

/// One emulated kernel version.
#[derive(Debug, Clone)]
pub struct KernelProfile {
    pub name: &'static str,
    /// sizeof(struct perf_event_attr) of this kernel: larger attrs need zero tails, else
    /// E2BIG with this size written back.
    pub attr_size: u32,
    /// Attr flag bits (kernel bit indices) the kernel knows; any other set bit is EINVAL.
    pub known_flags: u64,
    pub known_sample_type: u64,
    pub known_read_format: u64,
    /// perf_event_open `flags` argument bits the kernel knows (FD_CLOEXEC from 3.14).
    pub known_open_flags: u64,
    /// Non-zero reserved fields inside the struct are refused (EINVAL) — mainline since
    /// 2019; older kernels ignore them silently.
    pub rejects_reserved: bool,
    /// attr.sample_max_stack limits callchains (4.8+). RHEL 7 has the bytes inside its
    /// 112-byte struct but as unchecked padding: accepted and ignored.
    pub honours_sample_max_stack: bool,
    pub ioc_id: bool,
    pub ioc_set_bpf: bool,
    pub ioc_pause_output: bool,
    /// PERF_EVENT_IOC_QUERY_BPF (4.16).
    pub ioc_query_bpf: bool,
    /// PERF_EVENT_IOC_MODIFY_ATTRIBUTES (4.17).
    pub ioc_modify_attributes: bool,
    /// The ring's header page has data_offset/data_size (4.1+).
    pub ring_data_offset: bool,
    /// PERF_RECORD_MISC_SWITCH_OUT_PREEMPT on switch-outs of runnable tasks (4.17+).
    pub switch_out_preempt: bool,
    /// bpf(2) exists (3.18+; RHEL 7.6+ as a tech preview for tracing program types). The
    /// emulator cannot refuse the real bpf(2) syscall (it is not behind the Kernel trait);
    /// this is reported so tests can state what a host like this would do.
    pub bpf_syscall: bool,
    pub tracing: TracingLayout,
    pub sched_switch_format: &'static str,
    pub sched_wakeup_format: &'static str,
    /// The `prev_state` value the kernel records for a preempted (still runnable) task.
    pub preempt_state: u64,
    pub sysctl_max_sample_rate: i64,
    pub sysctl_mlock_kb: i64,
    pub sysctl_paranoid: i64,
    /// kernel.perf_event_max_stack (4.7+; not in RHEL 7).
    pub sysctl_max_stack: Option<i64>,
}

/// `(1 << n) - 1`: bits 0..n known.
const fn bits_below(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

const FORMATS_3_10_SWITCH: &str =
    include_str!("../../perfring/tests/data/formats/3.10-rhel7/sched_switch");
const FORMATS_3_10_WAKEUP: &str =
    include_str!("../../perfring/tests/data/formats/3.10-rhel7/sched_wakeup");
const FORMATS_4_9_SWITCH: &str = include_str!("../../perfring/tests/data/formats/4.9/sched_switch");
const FORMATS_4_9_WAKEUP: &str = include_str!("../../perfring/tests/data/formats/4.9/sched_wakeup");
const FORMATS_4_19_SWITCH: &str =
    include_str!("../../perfring/tests/data/formats/4.19/sched_switch");
const FORMATS_4_19_WAKEUP: &str =
    include_str!("../../perfring/tests/data/formats/4.19/sched_wakeup");
const FORMATS_5_4_SWITCH: &str = include_str!("../../perfring/tests/data/formats/5.4/sched_switch");
const FORMATS_5_4_WAKEUP: &str = include_str!("../../perfring/tests/data/formats/5.4/sched_wakeup");
const FORMATS_5_15_SWITCH: &str =
    include_str!("../../perfring/tests/data/formats/5.15/sched_switch");
const FORMATS_5_15_WAKEUP: &str =
    include_str!("../../perfring/tests/data/formats/5.15/sched_wakeup");
const FORMATS_6_X_SWITCH: &str =
    include_str!("../../perfring/tests/data/formats/6.18/sched_switch");
const FORMATS_6_X_WAKEUP: &str =
    include_str!("../../perfring/tests/data/formats/6.18/sched_wakeup");

/// perf_event_open flags known since 2.6.39.
const OPEN_FLAGS_OLD: u64 = 0b0111;
/// Plus PERF_FLAG_FD_CLOEXEC (3.14).
const OPEN_FLAGS_CLOEXEC: u64 = 0b1111;

/// read_format bits 0–3 (TOTAL_TIME_ENABLED, TOTAL_TIME_RUNNING, ID, GROUP); LOST is 6.0.
const READ_FORMAT_OLD: u64 = 0b1111;
const READ_FORMAT_LOST: u64 = 0b1_1111;

/// Upstream 3.10: attr VER3, flags up to exclude_callchain_user, no mmap2/comm_exec, no
/// CLOEXEC, no IOC_ID, no data_offset, tracing only under debugfs (not mounted at boot).
pub fn upstream_3_10() -> KernelProfile {
    KernelProfile {
        name: "3.10",
        attr_size: size::VER3,
        known_flags: bits_below(23),
        known_sample_type: bits_below(16),
        known_read_format: READ_FORMAT_OLD,
        known_open_flags: OPEN_FLAGS_OLD,
        rejects_reserved: false,
        honours_sample_max_stack: false,
        ioc_id: false,
        ioc_set_bpf: false,
        ioc_pause_output: false,
        ioc_query_bpf: false,
        ioc_modify_attributes: false,
        ring_data_offset: false,
        switch_out_preempt: false,
        bpf_syscall: false,
        tracing: TracingLayout::DebugfsOnly {
            debugfs_mounted: false,
        },
        sched_switch_format: FORMATS_3_10_SWITCH,
        sched_wakeup_format: FORMATS_3_10_WAKEUP,
        preempt_state: 1024,
        sysctl_max_sample_rate: 100_000,
        sysctl_mlock_kb: 516,
        sysctl_paranoid: 1,
        sysctl_max_stack: None,
    }
}

/// RHEL 7.9-like 3.10.0-1160 (kernel-compat.md's RHEL 7.7 notes): attr VER5 with mmap2,
/// comm_exec, use_clockid, context_switch and write_backward backported; sample_max_stack
/// bytes are unchecked padding (accepted, ignored); sample types up to PHYS_ADDR; ioctls up
/// to QUERY_BPF; data_offset present; no tracefs.
///
/// Uncertain: SWITCH_OUT_PREEMPT (4.17) — assumed not backported.
pub fn rhel_7_9() -> KernelProfile {
    KernelProfile {
        name: "rhel-7.9",
        attr_size: size::VER5,
        known_flags: bits_below(28),
        known_sample_type: bits_below(20),
        known_read_format: READ_FORMAT_OLD,
        known_open_flags: OPEN_FLAGS_CLOEXEC,
        rejects_reserved: false,
        honours_sample_max_stack: false,
        ioc_id: true,
        ioc_set_bpf: true,
        ioc_pause_output: true,
        ioc_query_bpf: true,
        ioc_modify_attributes: false,
        ring_data_offset: true,
        switch_out_preempt: false,
        bpf_syscall: true,
        tracing: TracingLayout::DebugfsOnly {
            debugfs_mounted: true,
        },
        sched_switch_format: FORMATS_3_10_SWITCH,
        sched_wakeup_format: FORMATS_3_10_WAKEUP,
        preempt_state: 1024,
        sysctl_max_sample_rate: 100_000,
        sysctl_mlock_kb: 516,
        sysctl_paranoid: 2,
        sysctl_max_stack: None,
    }
}

/// An early RHEL 7 minor release (kernel-compat.md: "mmap2, comm_exec, FD_CLOEXEC and IOC_ID
/// but no clockid, context_switch, SET_BPF or data_offset").
///
/// Uncertain: the attr size (taken as VER3, no sample_regs_intr backport) and the sample
/// types (taken as up to TRANSACTION, which came with IDENTIFIER-era perf backports).
pub fn rhel_7_early() -> KernelProfile {
    KernelProfile {
        name: "rhel-7-early",
        attr_size: size::VER3,
        known_flags: bits_below(25),
        known_sample_type: bits_below(18),
        known_read_format: READ_FORMAT_OLD,
        known_open_flags: OPEN_FLAGS_CLOEXEC,
        rejects_reserved: false,
        honours_sample_max_stack: false,
        ioc_id: true,
        ioc_set_bpf: false,
        ioc_pause_output: false,
        ioc_query_bpf: false,
        ioc_modify_attributes: false,
        ring_data_offset: false,
        switch_out_preempt: false,
        bpf_syscall: false,
        tracing: TracingLayout::DebugfsOnly {
            debugfs_mounted: true,
        },
        sched_switch_format: FORMATS_3_10_SWITCH,
        sched_wakeup_format: FORMATS_3_10_WAKEUP,
        preempt_state: 1024,
        sysctl_max_sample_rate: 100_000,
        sysctl_mlock_kb: 516,
        sysctl_paranoid: 2,
        sysctl_max_stack: None,
    }
}

/// 4.9: attr VER5, flags up to write_backward, sample types up to REGS_INTR, all ioctls
/// psample uses, data_offset, tracefs; prev_state is raw p->state with 2048 for preemption.
pub fn v4_9() -> KernelProfile {
    KernelProfile {
        name: "4.9",
        attr_size: size::VER5,
        known_flags: bits_below(28),
        known_sample_type: bits_below(19),
        known_read_format: READ_FORMAT_OLD,
        known_open_flags: OPEN_FLAGS_CLOEXEC,
        rejects_reserved: false,
        honours_sample_max_stack: true,
        ioc_id: true,
        ioc_set_bpf: true,
        ioc_pause_output: true,
        ioc_query_bpf: false,
        ioc_modify_attributes: false,
        ring_data_offset: true,
        switch_out_preempt: false,
        bpf_syscall: true,
        tracing: TracingLayout::Tracefs,
        sched_switch_format: FORMATS_4_9_SWITCH,
        sched_wakeup_format: FORMATS_4_9_WAKEUP,
        preempt_state: 2048,
        sysctl_max_sample_rate: 100_000,
        sysctl_mlock_kb: 516,
        sysctl_paranoid: 2,
        sysctl_max_stack: Some(127),
    }
}

/// 4.19: namespaces, PHYS_ADDR, SWITCH_OUT_PREEMPT, TASK_REPORT prev_state (0x100 preempt).
pub fn v4_19() -> KernelProfile {
    KernelProfile {
        name: "4.19",
        known_flags: bits_below(29),
        known_sample_type: bits_below(20),
        switch_out_preempt: true,
        ioc_query_bpf: true,
        ioc_modify_attributes: true,
        sched_switch_format: FORMATS_4_19_SWITCH,
        sched_wakeup_format: FORMATS_4_19_WAKEUP,
        preempt_state: 0x100,
        ..v4_9()
    }
}

/// 5.4: ksymbol/bpf_event/aux_output flags, reserved fields checked.
pub fn v5_4() -> KernelProfile {
    KernelProfile {
        name: "5.4",
        known_flags: bits_below(32),
        rejects_reserved: true,
        sched_switch_format: FORMATS_5_4_SWITCH,
        sched_wakeup_format: FORMATS_5_4_WAKEUP,
        ..v4_19()
    }
}

/// 5.15: attr VER7, flags up to sigtrap, sample types up to WEIGHT_STRUCT; sched_wakeup
/// without `success`.
pub fn v5_15() -> KernelProfile {
    KernelProfile {
        name: "5.15",
        attr_size: size::VER7,
        known_flags: bits_below(38),
        known_sample_type: bits_below(25),
        sched_switch_format: FORMATS_5_15_SWITCH,
        sched_wakeup_format: FORMATS_5_15_WAKEUP,
        ..v5_4()
    }
}

/// 6.x (formats captured on 6.18): attr VER8, read_format LOST.
pub fn v6_x() -> KernelProfile {
    KernelProfile {
        name: "6.x",
        attr_size: size::VER8,
        known_read_format: READ_FORMAT_LOST,
        sched_switch_format: FORMATS_6_X_SWITCH,
        sched_wakeup_format: FORMATS_6_X_WAKEUP,
        ..v5_15()
    }
}

/// Every profile, oldest first.
pub fn all() -> Vec<KernelProfile> {
    vec![
        upstream_3_10(),
        rhel_7_early(),
        rhel_7_9(),
        v4_9(),
        v4_19(),
        v5_4(),
        v5_15(),
        v6_x(),
    ]
}

/// Tracepoints psample may open that every profile's kernel has (3.10 included): the sched
/// switch and wakeups, and raw syscall entry/exit (2.6.32+). The interposer refuses any other
/// tracepoint id with ENOENT.
const COMMON_TRACEPOINTS: &[(&str, &str)] = &[
    ("sched", "sched_switch"),
    ("sched", "sched_wakeup"),
    ("sched", "sched_wakeup_new"),
    ("raw_syscalls", "sys_enter"),
    ("raw_syscalls", "sys_exit"),
];

impl KernelProfile {
    /// (subsystem, name) of the tracepoints this kernel has, of those psample may use.
    pub fn tracepoints(&self) -> &'static [(&'static str, &'static str)] {
        COMMON_TRACEPOINTS
    }

    pub fn knows_flag(&self, bit: u64) -> bool {
        self.known_flags & bit == bit
    }

    /// The tracing directory holding `events/`, once mounted.
    pub fn tracing_root(&self) -> &'static str {
        match self.tracing {
            TracingLayout::Tracefs => "/sys/kernel/tracing",
            TracingLayout::DebugfsOnly { .. } => "/sys/kernel/debug/tracing",
        }
    }
}

//! A typed builder for `perf_event_attr`.
//!
//! [`RawAttr`] is our own `#[repr(C)]` mirror of the kernel struct (up to VER8, 136 bytes)
//! with the flag word kept as a plain `u64`, so the fallback ladder and the emulated kernels
//! can inspect and clear individual feature bits by their kernel bit index. The builder sets
//! `size` to the smallest published layout that holds every field in use: a kernel that does
//! not know a later layout then never sees it, which avoids E2BIG for features we don't use.

use crate::record::SampleFormat;

/// Published `perf_event_attr` sizes (see kernel-compat.md).
pub mod size {
    /// `PERF_ATTR_SIZE_VER0`: 64 bytes (2.6.31).
    pub const VER0: u32 = 64;
    /// `PERF_ATTR_SIZE_VER1`: 72 bytes (2.6.33: config2).
    pub const VER1: u32 = 72;
    /// `PERF_ATTR_SIZE_VER2`: 80 bytes (3.4: branch_sample_type).
    pub const VER2: u32 = 80;
    /// `PERF_ATTR_SIZE_VER3`: 96 bytes (3.7: sample_regs_user, sample_stack_user).
    pub const VER3: u32 = 96;
    /// `PERF_ATTR_SIZE_VER4`: 104 bytes (3.19: sample_regs_intr).
    pub const VER4: u32 = 104;
    /// `PERF_ATTR_SIZE_VER5`: 112 bytes (4.1: aux_watermark, sample_max_stack).
    pub const VER5: u32 = 112;
    /// `PERF_ATTR_SIZE_VER6`: 120 bytes (4.17: aux_sample_size).
    pub const VER6: u32 = 120;
    /// `PERF_ATTR_SIZE_VER7`: 128 bytes (5.13: sig_data).
    pub const VER7: u32 = 128;
    /// `PERF_ATTR_SIZE_VER8`: 136 bytes (6.3: config3).
    pub const VER8: u32 = 136;
}

/// Bit indices of the attr flag word (the bitfield after `read_format`).
pub mod flag {
    /// Start disabled (enabled by ioctl or at exec).
    pub const DISABLED: u64 = 1 << 0;
    /// Child tasks inherit the event.
    pub const INHERIT: u64 = 1 << 1;
    /// Always on the PMU (hardware events).
    pub const PINNED: u64 = 1 << 2;
    /// Alone on the PMU (hardware events).
    pub const EXCLUSIVE: u64 = 1 << 3;
    /// Do not count user space.
    pub const EXCLUDE_USER: u64 = 1 << 4;
    /// Do not count the kernel.
    pub const EXCLUDE_KERNEL: u64 = 1 << 5;
    /// Do not count the hypervisor.
    pub const EXCLUDE_HV: u64 = 1 << 6;
    /// Do not count the idle task.
    pub const EXCLUDE_IDLE: u64 = 1 << 7;
    /// MMAP records for executable mappings.
    pub const MMAP: u64 = 1 << 8;
    /// COMM records (thread names).
    pub const COMM: u64 = 1 << 9;
    /// `sample_freq` is a frequency, not a period.
    pub const FREQ: u64 = 1 << 10;
    /// Inherited counts per task (read format).
    pub const INHERIT_STAT: u64 = 1 << 11;
    /// Enable at the next exec of the task.
    pub const ENABLE_ON_EXEC: u64 = 1 << 12;
    /// FORK and EXIT records.
    pub const TASK: u64 = 1 << 13;
    /// Wake up after `wakeup_watermark` bytes, not `wakeup_events` samples.
    pub const WATERMARK: u64 = 1 << 14;
    /// Two bits (15–16).
    pub const PRECISE_IP_SHIFT: u32 = 15;
    /// The two `precise_ip` bits (skid level 0–3).
    pub const PRECISE_IP_MASK: u64 = 3 << 15;
    /// MMAP records also for data mappings.
    pub const MMAP_DATA: u64 = 1 << 17;
    /// A `sample_id` trailer on every non-sample record (2.6.38).
    pub const SAMPLE_ID_ALL: u64 = 1 << 18;
    /// Do not count in the host (KVM).
    pub const EXCLUDE_HOST: u64 = 1 << 19;
    /// Do not count in guests (KVM).
    pub const EXCLUDE_GUEST: u64 = 1 << 20;
    /// No kernel part in callchains.
    pub const EXCLUDE_CALLCHAIN_KERNEL: u64 = 1 << 21;
    /// No user part in callchains (3.7).
    pub const EXCLUDE_CALLCHAIN_USER: u64 = 1 << 22;
    /// MMAP2 records, with inode or build-id and protection (3.16).
    pub const MMAP2: u64 = 1 << 23;
    /// COMM records say when they come from an exec (3.16).
    pub const COMM_EXEC: u64 = 1 << 24;
    /// Timestamps on `clockid` (4.1).
    pub const USE_CLOCKID: u64 = 1 << 25;
    /// SWITCH / SWITCH_CPU_WIDE records (4.3).
    pub const CONTEXT_SWITCH: u64 = 1 << 26;
    /// Write the ring backwards (overwrite mode, 4.7).
    pub const WRITE_BACKWARD: u64 = 1 << 27;
    /// NAMESPACES records (4.12).
    pub const NAMESPACES: u64 = 1 << 28;
    /// KSYMBOL records (5.1).
    pub const KSYMBOL: u64 = 1 << 29;
    /// BPF_EVENT records (5.1).
    pub const BPF_EVENT: u64 = 1 << 30;
    /// Generate AUX records instead of events (5.4).
    pub const AUX_OUTPUT: u64 = 1 << 31;
    /// CGROUP records (5.7).
    pub const CGROUP: u64 = 1 << 32;
    /// TEXT_POKE records (5.9).
    pub const TEXT_POKE: u64 = 1 << 33;
    /// MMAP2 records carry a build-id instead of the inode (5.12).
    pub const BUILD_ID: u64 = 1 << 34;
}

/// `sample_type` bits.
pub mod sample {
    /// PERF_SAMPLE_*: The instruction pointer.
    pub const IP: u64 = 1 << 0;
    /// PERF_SAMPLE_*: pid and tid.
    pub const TID: u64 = 1 << 1;
    /// PERF_SAMPLE_*: The timestamp.
    pub const TIME: u64 = 1 << 2;
    /// PERF_SAMPLE_*: The data address (memory events).
    pub const ADDR: u64 = 1 << 3;
    /// PERF_SAMPLE_*: The counter values (`read_format`).
    pub const READ: u64 = 1 << 4;
    /// PERF_SAMPLE_*: The callchain.
    pub const CALLCHAIN: u64 = 1 << 5;
    /// PERF_SAMPLE_*: The event id (of its group leader).
    pub const ID: u64 = 1 << 6;
    /// PERF_SAMPLE_*: The CPU.
    pub const CPU: u64 = 1 << 7;
    /// PERF_SAMPLE_*: The period.
    pub const PERIOD: u64 = 1 << 8;
    /// PERF_SAMPLE_*: The event's own id.
    pub const STREAM_ID: u64 = 1 << 9;
    /// PERF_SAMPLE_*: The RAW payload (a tracepoint's record).
    pub const RAW: u64 = 1 << 10;
    /// PERF_SAMPLE_*: The last branch records.
    pub const BRANCH_STACK: u64 = 1 << 11;
    /// PERF_SAMPLE_*: User registers (`sample_regs_user`).
    pub const REGS_USER: u64 = 1 << 12;
    /// PERF_SAMPLE_*: A copy of the user stack (`sample_stack_user` bytes).
    pub const STACK_USER: u64 = 1 << 13;
    /// PERF_SAMPLE_*: A weight (memory latency).
    pub const WEIGHT: u64 = 1 << 14;
    /// PERF_SAMPLE_*: The data source (memory events).
    pub const DATA_SRC: u64 = 1 << 15;
    /// PERF_SAMPLE_*: The event id, at a fixed position (first in samples, last in trailers).
    pub const IDENTIFIER: u64 = 1 << 16;
    /// PERF_SAMPLE_*: The transaction flags (TSX).
    pub const TRANSACTION: u64 = 1 << 17;
    /// PERF_SAMPLE_*: Registers at the interrupt (`sample_regs_intr`).
    pub const REGS_INTR: u64 = 1 << 18;
    /// PERF_SAMPLE_*: The physical data address.
    pub const PHYS_ADDR: u64 = 1 << 19;
}

/// `perf_event_attr.type`.
pub mod event_type {
    /// Hardware events (`config` is a PERF_COUNT_HW_*).
    pub const HARDWARE: u32 = 0;
    /// Software events (`config` is a PERF_COUNT_SW_*).
    pub const SOFTWARE: u32 = 1;
    /// Tracepoints (`config` is the tracefs id).
    pub const TRACEPOINT: u32 = 2;
}

/// Largest user-stack copy the kernel accepts (must stay below u16 record size, multiple of 8).
pub const MAX_STACK_USER: u32 = 65528;

/// Our mirror of `struct perf_event_attr` (VER8 layout). Passed to the kernel by pointer; the
/// kernel reads only `size` bytes of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawAttr {
    /// Event type (`event_type`).
    pub type_: u32,
    /// Bytes of this struct the kernel may read (`size`).
    pub size: u32,
    /// Which event of the type.
    pub config: u64,
    /// `sample_period`, or `sample_freq` when [`flag::FREQ`] is set.
    pub sample_period_or_freq: u64,
    /// PERF_SAMPLE_* bits: what a sample carries.
    pub sample_type: u64,
    /// PERF_FORMAT_* bits: what read() and PERF_SAMPLE_READ return.
    pub read_format: u64,
    /// The bit-field word (`flag`).
    pub flags: u64,
    /// `wakeup_events`, or `wakeup_watermark` (bytes) when [`flag::WATERMARK`] is set.
    pub wakeup: u32,
    /// Breakpoint type (unused here).
    pub bp_type: u32,
    /// Extension of `config` (breakpoint address).
    pub config1: u64,
    /// Extension of `config1` (breakpoint length).
    pub config2: u64,
    /// PERF_SAMPLE_BRANCH_* bits.
    pub branch_sample_type: u64,
    /// Registers sampled with PERF_SAMPLE_REGS_USER.
    pub sample_regs_user: u64,
    /// Bytes of user stack sampled with PERF_SAMPLE_STACK_USER.
    pub sample_stack_user: u32,
    /// The clock of timestamps with `use_clockid`.
    pub clockid: i32,
    /// Registers sampled with PERF_SAMPLE_REGS_INTR.
    pub sample_regs_intr: u64,
    /// AUX area wake-up watermark.
    pub aux_watermark: u32,
    /// Most callchain frames (0: the sysctl default).
    pub sample_max_stack: u16,
    /// Reserved, zero.
    pub reserved_2: u16,
    /// AUX data per sample.
    pub aux_sample_size: u32,
    /// AUX pause/resume action bits.
    pub aux_action: u32,
    /// Value for the signal of `sigtrap`.
    pub sig_data: u64,
    /// Extension of `config2`.
    pub config3: u64,
}

const _: () = assert!(std::mem::size_of::<RawAttr>() == size::VER8 as usize);

impl RawAttr {
    /// Whether flag `bit` (`flag::*`) is set.
    pub fn has(&self, bit: u64) -> bool {
        self.flags & bit != 0
    }

    /// Set or clear flag `bit`.
    pub fn set(&mut self, bit: u64, on: bool) {
        if on {
            self.flags |= bit;
        } else {
            self.flags &= !bit;
        }
    }

    /// The `precise_ip` level.
    pub fn precise_ip(&self) -> u8 {
        ((self.flags & flag::PRECISE_IP_MASK) >> flag::PRECISE_IP_SHIFT) as u8
    }

    /// Set the `precise_ip` level (0–3).
    pub fn set_precise_ip(&mut self, level: u8) {
        self.flags = (self.flags & !flag::PRECISE_IP_MASK)
            | ((u64::from(level.min(3))) << flag::PRECISE_IP_SHIFT);
    }

    /// The layout the record parser needs to decode this event's samples and trailers.
    pub fn sample_format(&self) -> SampleFormat {
        SampleFormat {
            sample_type: self.sample_type,
            read_format: self.read_format,
            regs_user_mask: self.sample_regs_user,
            sample_id_all: self.has(flag::SAMPLE_ID_ALL),
            branch_sample_type: self.branch_sample_type,
        }
    }

    /// The smallest published attr size holding every non-zero field (see module docs).
    pub fn minimal_size(&self) -> u32 {
        if self.config3 != 0 {
            size::VER8
        } else if self.sig_data != 0 {
            size::VER7
        } else if self.aux_sample_size != 0 || self.aux_action != 0 {
            size::VER6
        } else if self.aux_watermark != 0 || self.sample_max_stack != 0 {
            size::VER5
        } else if self.sample_regs_intr != 0 {
            size::VER4
        } else if self.sample_regs_user != 0 || self.sample_stack_user != 0 || self.clockid != 0 {
            size::VER3
        } else if self.branch_sample_type != 0 {
            size::VER2
        } else if self.config2 != 0 {
            size::VER1
        } else {
            size::VER0
        }
    }

    /// The attr bytes as the kernel would read them (`size` bytes).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: RawAttr is repr(C) with only integer fields and no padding (checked by the
        // size assertion above), so every byte is initialised.
        let all = unsafe {
            std::slice::from_raw_parts(
                (self as *const RawAttr).cast::<u8>(),
                std::mem::size_of::<RawAttr>(),
            )
        };
        &all[..(self.size as usize).min(all.len())]
    }
}

/// What to count/sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// PERF_COUNT_SW_CPU_CLOCK: a hrtimer, works in VMs without a PMU.
    CpuClock,
    /// PERF_COUNT_SW_TASK_CLOCK.
    TaskClock,
    /// PERF_COUNT_HW_CPU_CYCLES: needs a PMU.
    Cycles,
    /// PERF_COUNT_SW_CONTEXT_SWITCHES.
    ContextSwitches,
    /// PERF_COUNT_SW_DUMMY (4.3+; side-band records only).
    Dummy,
    /// PERF_COUNT_SW_BPF_OUTPUT (4.4+): the samples BPF programs write with
    /// `bpf_perf_event_output`.
    BpfOutput,
    /// A tracepoint by its tracefs id.
    Tracepoint(u64),
}

impl EventKind {
    /// `type` and `config` for the kernel.
    pub fn type_and_config(self) -> (u32, u64) {
        match self {
            EventKind::CpuClock => (event_type::SOFTWARE, 0),
            EventKind::TaskClock => (event_type::SOFTWARE, 1),
            EventKind::ContextSwitches => (event_type::SOFTWARE, 3),
            EventKind::Dummy => (event_type::SOFTWARE, 9),
            EventKind::BpfOutput => (event_type::SOFTWARE, 10),
            EventKind::Cycles => (event_type::HARDWARE, 0),
            EventKind::Tracepoint(id) => (event_type::TRACEPOINT, id),
        }
    }

    /// Whether this needs a PMU.
    pub fn is_hardware(self) -> bool {
        matches!(self, EventKind::Cycles)
    }
}

/// Builder for [`RawAttr`]. Every setter is named for the kernel field it sets.
#[derive(Clone, Debug)]
pub struct AttrBuilder {
    raw: RawAttr,
}

impl AttrBuilder {
    /// A builder for `kind` with every optional feature off.
    pub fn new(kind: EventKind) -> Self {
        let (type_, config) = kind.type_and_config();
        let raw = RawAttr {
            type_,
            config,
            ..RawAttr::default()
        };
        AttrBuilder { raw }
    }

    /// Sample `hz` times per second (attr.freq = 1).
    pub fn frequency(mut self, hz: u64) -> Self {
        self.raw.set(flag::FREQ, true);
        self.raw.sample_period_or_freq = hz;
        self
    }

    /// Sample every `n` events.
    pub fn period(mut self, n: u64) -> Self {
        self.raw.set(flag::FREQ, false);
        self.raw.sample_period_or_freq = n;
        self
    }

    /// Set `sample_type` (PERF_SAMPLE_* bits).
    pub fn sample_type(mut self, bits: u64) -> Self {
        self.raw.sample_type = bits;
        self
    }

    /// Set `read_format`.
    pub fn read_format(mut self, bits: u64) -> Self {
        self.raw.read_format = bits;
        self
    }

    /// Set or clear a `flag::*` bit.
    pub fn flag(mut self, bit: u64, on: bool) -> Self {
        self.raw.set(bit, on);
        self
    }

    /// `disabled`.
    pub fn disabled(self, on: bool) -> Self {
        self.flag(flag::DISABLED, on)
    }
    /// `inherit`.
    pub fn inherit(self, on: bool) -> Self {
        self.flag(flag::INHERIT, on)
    }
    /// `exclude_kernel`.
    pub fn exclude_kernel(self, on: bool) -> Self {
        self.flag(flag::EXCLUDE_KERNEL, on)
    }
    /// `exclude_user`.
    pub fn exclude_user(self, on: bool) -> Self {
        self.flag(flag::EXCLUDE_USER, on)
    }
    /// `exclude_hv`.
    pub fn exclude_hv(self, on: bool) -> Self {
        self.flag(flag::EXCLUDE_HV, on)
    }
    /// `exclude_idle`.
    pub fn exclude_idle(self, on: bool) -> Self {
        self.flag(flag::EXCLUDE_IDLE, on)
    }
    /// MMAP (exec mappings), COMM and FORK/EXIT side-band records.
    pub fn mmap(self, on: bool) -> Self {
        self.flag(flag::MMAP, on)
    }
    /// `comm`.
    pub fn comm(self, on: bool) -> Self {
        self.flag(flag::COMM, on)
    }
    /// `task`.
    pub fn task(self, on: bool) -> Self {
        self.flag(flag::TASK, on)
    }
    /// `mmap2`.
    pub fn mmap2(self, on: bool) -> Self {
        self.flag(flag::MMAP2, on)
    }
    /// `comm_exec`.
    pub fn comm_exec(self, on: bool) -> Self {
        self.flag(flag::COMM_EXEC, on)
    }
    /// `enable_on_exec`.
    pub fn enable_on_exec(self, on: bool) -> Self {
        self.flag(flag::ENABLE_ON_EXEC, on)
    }
    /// `sample_id_all`.
    pub fn sample_id_all(self, on: bool) -> Self {
        self.flag(flag::SAMPLE_ID_ALL, on)
    }
    /// `exclude_callchain_user`.
    pub fn exclude_callchain_user(self, on: bool) -> Self {
        self.flag(flag::EXCLUDE_CALLCHAIN_USER, on)
    }
    /// `context_switch`.
    pub fn context_switch(self, on: bool) -> Self {
        self.flag(flag::CONTEXT_SWITCH, on)
    }

    /// `use_clockid` with `clockid` (`None`: off).
    pub fn use_clockid(mut self, clockid: Option<i32>) -> Self {
        self.raw.set(flag::USE_CLOCKID, clockid.is_some());
        self.raw.clockid = clockid.unwrap_or(0);
        self
    }

    /// `precise_ip`.
    pub fn precise_ip(mut self, level: u8) -> Self {
        self.raw.set_precise_ip(level);
        self
    }

    /// Wake the reader after this many samples.
    pub fn wakeup_events(mut self, n: u32) -> Self {
        self.raw.set(flag::WATERMARK, false);
        self.raw.wakeup = n;
        self
    }

    /// Wake the reader when this many bytes are pending.
    pub fn wakeup_watermark(mut self, bytes: u32) -> Self {
        self.raw.set(flag::WATERMARK, true);
        self.raw.wakeup = bytes;
        self
    }

    /// `sample_regs_user`.
    pub fn sample_regs_user(mut self, mask: u64) -> Self {
        self.raw.sample_regs_user = mask;
        self
    }

    /// Bytes of user stack to copy per sample, rounded down to a multiple of 8 and capped.
    pub fn sample_stack_user(mut self, bytes: u32) -> Self {
        self.raw.sample_stack_user = bytes.min(MAX_STACK_USER) & !7;
        self
    }

    /// `sample_max_stack`.
    pub fn sample_max_stack(mut self, frames: u16) -> Self {
        self.raw.sample_max_stack = frames;
        self
    }

    /// The attr, with `size` the smallest layout holding every field in use.
    pub fn build(mut self) -> RawAttr {
        self.raw.size = self.raw.minimal_size();
        self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_offsets_match_the_kernel_abi() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(RawAttr, sample_type), 24);
        assert_eq!(offset_of!(RawAttr, flags), 40);
        assert_eq!(offset_of!(RawAttr, wakeup), 48);
        assert_eq!(offset_of!(RawAttr, config1), 56);
        assert_eq!(offset_of!(RawAttr, config2), 64);
        assert_eq!(offset_of!(RawAttr, branch_sample_type), 72);
        assert_eq!(offset_of!(RawAttr, sample_regs_user), 80);
        assert_eq!(offset_of!(RawAttr, sample_stack_user), 88);
        assert_eq!(offset_of!(RawAttr, clockid), 92);
        assert_eq!(offset_of!(RawAttr, sample_regs_intr), 96);
        assert_eq!(offset_of!(RawAttr, aux_watermark), 104);
        assert_eq!(offset_of!(RawAttr, sample_max_stack), 108);
        assert_eq!(offset_of!(RawAttr, sig_data), 120);
        assert_eq!(offset_of!(RawAttr, config3), 128);
    }

    #[test]
    fn flags_agree_with_the_bindgen_bitfield() {
        // Cross-check our bit indices against perf-event-open-sys' generated setters.
        let mut b: perf_event_open_sys::bindings::perf_event_attr = Default::default();
        b.set_mmap2(1);
        b.set_context_switch(1);
        b.set_sample_id_all(1);
        b.set_precise_ip(2);
        // SAFETY: reading the flag word at its ABI offset from a fully initialised struct.
        let word = unsafe { *((&b as *const _ as *const u8).add(40) as *const u64) };
        assert_eq!(
            word,
            flag::MMAP2 | flag::CONTEXT_SWITCH | flag::SAMPLE_ID_ALL | (2 << 15)
        );
    }

    #[test]
    fn size_is_the_smallest_layout_in_use() {
        let a = AttrBuilder::new(EventKind::CpuClock).frequency(99).build();
        assert_eq!(a.size, size::VER0);
        assert_eq!(a.type_, event_type::SOFTWARE);
        assert_eq!(a.config, 0);
        assert!(a.has(flag::FREQ));
        let a = AttrBuilder::new(EventKind::CpuClock)
            .sample_regs_user(0x1c0)
            .sample_stack_user(16384)
            .build();
        assert_eq!(a.size, size::VER3);
        let a = AttrBuilder::new(EventKind::CpuClock)
            .sample_max_stack(64)
            .build();
        assert_eq!(a.size, size::VER5);
        assert_eq!(a.as_bytes().len(), 112);
    }

    #[test]
    fn stack_user_is_clamped_and_aligned() {
        let a = AttrBuilder::new(EventKind::CpuClock)
            .sample_stack_user(70000)
            .build();
        assert_eq!(a.sample_stack_user, MAX_STACK_USER);
        let a = AttrBuilder::new(EventKind::CpuClock)
            .sample_stack_user(1001)
            .build();
        assert_eq!(a.sample_stack_user, 1000);
    }

    #[test]
    fn sample_format_mirrors_attr() {
        let a = AttrBuilder::new(EventKind::Tracepoint(42))
            .sample_type(sample::TID | sample::RAW)
            .sample_id_all(true)
            .build();
        let f = a.sample_format();
        assert_eq!(f.sample_type, sample::TID | sample::RAW);
        assert!(f.sample_id_all);
        assert_eq!(a.type_, event_type::TRACEPOINT);
        assert_eq!(a.config, 42);
    }
}

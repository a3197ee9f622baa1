//! In-kernel off-CPU aggregation: blocked time per (thread, stacks, state, waker) summed by
//! tracepoint programs, read by userspace about once a second. See [`program`] for what
//! runs in the kernel and [`layout`] for the bytes it shares with userspace.
//!
//! Nothing crosses the ring per switch. What the maps cannot take — a stack that does not
//! fit a stack map, an interval the count map has no room for — is written to per-CPU
//! bpf-output events instead ("spilled") and read like any ring record, so the result is
//! as complete as the ring path's.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::drain::{read_u64, HashDrain};
use super::error::{self, BpfError};
use super::maps::Map;
use super::stack_counter::{create_map, load_program, max_depth};
use super::stack_gens::{Stack, StackGens};
use super::sys;
use crate::tracepoint::{DecodeError, Field, StateTable, TaskState, TracepointFormat};

pub mod layout;
pub mod program;

pub use layout::{RawEntry, RawKey, Spilled};
pub use program::{accept, Filter, SwitchFields, STATE_TABLE_SIZE};

/// Counter slots of the programs (see [`OffcpuCounters`]).
pub(crate) mod slot {
    pub const USER: u32 = 0;
    pub const KERNEL: u32 = 4;
    pub const COUNT_MAP_FULL: u32 = 8;
    pub const SPILLED_INTERVALS: u32 = 9;
    pub const SPILL_FAILED: u32 = 10;
    pub const FILTERED: u32 = 11;
    pub const UNPAIRED: u32 = 12;
    pub const START_UNCONFIRMED: u32 = 13;
    pub const NOT_BLOCKED: u32 = 14;
    pub const START_MAP_FULL: u32 = 15;
    pub const ENDED_AT_WAKEUP: u32 = 16;
    pub const ENDED_BY_RUNTIME: u32 = 17;
    pub const COUNT: u32 = 18;
}

/// How the programs are built.
#[derive(Debug, Clone)]
pub struct OffcpuOptions {
    /// Which tasks are profiled; the ids go to [`OffcpuBpf::add_target`].
    pub filter: Filter,
    /// psample's own process id (never profiled).
    pub own_tgid: u32,
    /// Intervals shorter than this are not counted (`-m`).
    pub min_ns: u64,
    /// Intervals longer than this are not counted (`-M`).
    pub max_ns: Option<u64>,
    /// The [`accept`] decision for each `prev_state` value below [`STATE_TABLE_SIZE`].
    pub states: Vec<u32>,
    /// The decision for larger values.
    pub unknown_state: u32,
    /// `sched_switch` field offsets.
    pub switch: SwitchFields,
    /// `sched_waking`'s (or `sched_wakeup`'s) `pid` offset: wakeup times, which end
    /// intervals whose switch-in fired no `sched_switch`.
    pub waking_pid: Option<i16>,
    /// Record the waker's stacks at each wakeup (`--wakers`; needs `waking_pid`).
    pub wakers: bool,
    /// Offset of `se.sum_exec_runtime` in `task_struct` ([`runtime_offset`]).
    pub runtime_off: Option<i32>,
    /// `sched_process_fork`'s `child_pid` offset: follow children of target processes.
    pub fork_child_pid: Option<i16>,
    /// Threads that can be blocked at once (start map size).
    pub threads: u32,
    /// Distinct (thread, stacks, state, waker) keys held between drains.
    pub count_entries: u32,
    /// Distinct stacks held per epoch (each of the two stack maps).
    pub stack_entries: u32,
    /// Possible CPUs (the spill array is indexed by CPU number).
    pub cpus: u32,
    /// Record user stacks.
    pub user_stacks: bool,
    /// Record kernel stacks.
    pub kernel_stacks: bool,
    /// Keep the verifier's log even when loading succeeds.
    pub log_verifier: bool,
}

/// What the programs counted besides blocked time, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffcpuCounters {
    /// Stack ids not recorded (collision, full, other), user side: spilled.
    pub user_not_recorded: u64,
    /// The same, kernel side.
    pub kernel_not_recorded: u64,
    /// Intervals the count map had no room for: spilled.
    pub count_map_full: u64,
    /// Intervals handed to the ring (their stacks or their count did not fit).
    pub spilled_intervals: u64,
    /// Spill records the ring refused (no room, no buffer): lost.
    pub spill_failed: u64,
    /// Intervals outside `-m`/`-M`.
    pub filtered: u64,
    /// Switch-outs of a thread whose previous interval was never closed (its switch-in
    /// fired no `sched_switch`) and had no wakeup either: that interval was dropped.
    pub unpaired: u64,
    /// Intervals whose switch-in fired no `sched_switch`, closed at their last wakeup.
    pub ended_at_wakeup: u64,
    /// Intervals whose switch-in fired no `sched_switch`, closed at the switch-in the
    /// thread's CPU time dates.
    pub ended_by_runtime: u64,
    /// Threads found blocked at start that were running after all.
    pub start_unconfirmed: u64,
    /// Switch-outs whose state opens no interval (preemptions, by default).
    pub not_blocked: u64,
    /// Switch-outs dropped because the start map was full.
    pub start_map_full: u64,
}

/// A count read from the kernel, with its stacks resolved (empty: none, or lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedCount {
    /// The key as the kernel wrote it.
    pub key: RawKey,
    /// The blocked thread's stacks, leaf first.
    pub user: Stack,
    /// Kernel side.
    pub kernel: Stack,
    /// The waker's stacks (empty without a wakeup).
    pub waker_user: Stack,
    /// Kernel side.
    pub waker_kernel: Stack,
    /// Blocked nanoseconds.
    pub blocked_ns: u64,
    /// Intervals.
    pub intervals: u64,
}

/// The loaded programs and their maps.
#[derive(Debug)]
pub struct OffcpuBpf {
    switch_prog: OwnedFd,
    waking_prog: Option<OwnedFd>,
    fork_prog: Option<OwnedFd>,
    start: Map,
    counts: Map,
    targets: Map,
    counters: Map,
    spill: Map,
    gate: Map,
    _states: Map,
    _scratch: Map,
    gens: StackGens,
    drainer: HashDrain,
    /// Stack ids that no longer resolved at a drain (counted per interval): lost.
    pub unresolved: u64,
    log: String,
}

fn empty() -> Stack {
    Stack::from(Vec::new())
}

fn syscall(what: &'static str) -> impl Fn(nix::errno::Errno) -> BpfError {
    move |e| error::syscall(what, e)
}

/// The maps of [`OffcpuBpf`], created before the programs that refer to them.
struct OwnedMaps {
    start: Map,
    counts: Map,
    targets: Map,
    states: Map,
    counters: Map,
    gate: Map,
    scratch: Map,
    spill: Map,
    gens: StackGens,
}

impl OwnedMaps {
    /// Every map the programs use, sized by `opts`.
    fn create(opts: &OffcpuOptions) -> Result<OwnedMaps, BpfError> {
        if opts.threads == 0 || opts.count_entries == 0 || opts.stack_entries == 0 {
            return Err(BpfError::InvalidOption(
                "map sizes must be at least 1".into(),
            ));
        }
        let hash = |name, key: usize, value: usize, n: u32| {
            create_map(
                "bpf(BPF_MAP_CREATE hash)",
                sys::map_type::HASH,
                key as u32,
                value as u32,
                n,
                name,
            )
        };
        let array = |name, value: u32, n: u32| {
            create_map(
                "bpf(BPF_MAP_CREATE array)",
                sys::map_type::ARRAY,
                4,
                value,
                n,
                name,
            )
        };
        let start = hash("psample_start", 4, layout::entry::SIZE, opts.threads)?;
        let counts = hash(
            "psample_offcpu",
            layout::KEY_SIZE,
            layout::VALUE_SIZE,
            opts.count_entries,
        )?;
        let targets = hash("psample_targets", 4, 4, 65536)?;
        let states = array("psample_states", 4, STATE_TABLE_SIZE)?;
        for (i, v) in (0u32..).zip(opts.states.iter().take(STATE_TABLE_SIZE as usize)) {
            states
                .update(&i.to_ne_bytes(), &v.to_ne_bytes(), sys::update::ANY)
                .map_err(syscall("bpf(BPF_MAP_UPDATE_ELEM states)"))?;
        }
        let counters = array("psample_offcnt", 8, slot::COUNT)?;
        let gate = array("psample_gate", 8, 1)?;
        let scratch = create_map(
            "bpf(BPF_MAP_CREATE percpu array)",
            sys::map_type::PERCPU_ARRAY,
            4,
            program::SCRATCH_SIZE,
            1,
            "psample_scratch",
        )?;
        let spill = create_map(
            "bpf(BPF_MAP_CREATE perf event array)",
            sys::map_type::PERF_EVENT_ARRAY,
            4,
            4,
            opts.cpus.max(1),
            "psample_spill",
        )?;
        let gens = StackGens::create(opts.stack_entries, max_depth())?;
        Ok(OwnedMaps {
            start,
            counts,
            targets,
            states,
            counters,
            gate,
            scratch,
            spill,
            gens,
        })
    }
}

impl OffcpuBpf {
    /// Create the maps and load the programs. Errors carry errno + what to do.
    pub fn load(opts: &OffcpuOptions) -> Result<OffcpuBpf, BpfError> {
        let m = OwnedMaps::create(opts)?;
        let maps = program::Maps {
            start: m.start.raw_fd(),
            counts: m.counts.raw_fd(),
            targets: m.targets.raw_fd(),
            states: m.states.raw_fd(),
            counters: m.counters.raw_fd(),
            scratch: m.scratch.raw_fd(),
            spill: m.spill.raw_fd(),
            gate: m.gate.raw_fd(),
            stacks: m.gens.fds(),
        };
        let cfg = program::Config {
            filter: opts.filter,
            own_tgid: opts.own_tgid,
            min_ns: opts.min_ns,
            max_ns: opts.max_ns,
            unknown_state: opts.unknown_state,
            user_stacks: opts.user_stacks,
            kernel_stacks: opts.kernel_stacks,
            wakers: opts.wakers && opts.waking_pid.is_some(),
            runtime_off: opts.runtime_off,
        };
        let tp = sys::prog_type::TRACEPOINT;
        let insns = program::switch_program(&opts.switch, &maps, &cfg)?;
        let (switch_prog, log) = load_program(tp, "psample_switch", &insns, opts.log_verifier)?;
        let waking_prog = match opts.waking_pid {
            Some(off) => {
                let insns = program::waking_program(off, &maps, &cfg)?;
                Some(load_program(tp, "psample_waking", &insns, false)?.0)
            }
            None => None,
        };
        let fork_prog = match (opts.fork_child_pid, opts.filter) {
            (Some(off), Filter::Processes) => {
                let insns = program::fork_program(off, &maps)?;
                Some(load_program(tp, "psample_fork", &insns, false)?.0)
            }
            _ => None,
        };
        Ok(OffcpuBpf {
            switch_prog,
            waking_prog,
            fork_prog,
            start: m.start,
            counts: m.counts,
            targets: m.targets,
            counters: m.counters,
            spill: m.spill,
            gate: m.gate,
            _states: m.states,
            _scratch: m.scratch,
            gens: m.gens,
            drainer: HashDrain::default(),
            unresolved: 0,
            log,
        })
    }

    /// The `sched_switch` program, for PERF_EVENT_IOC_SET_BPF on a `sched_switch` event.
    pub fn switch_prog(&self) -> BorrowedFd<'_> {
        self.switch_prog.as_fd()
    }

    /// Start (or stop) opening and closing intervals: the switch program does nothing
    /// until armed, so nothing is counted before the session starts or after it stops.
    pub fn arm(&self, on: bool) -> Result<(), BpfError> {
        self.gate
            .update(
                &0u32.to_ne_bytes(),
                &u64::from(on).to_ne_bytes(),
                sys::update::ANY,
            )
            .map_err(syscall("bpf(BPF_MAP_UPDATE_ELEM gate)"))
    }

    /// The `sched_waking` program (wakeup times, and the wakers' stacks with `--wakers`).
    pub fn waking_prog(&self) -> Option<BorrowedFd<'_>> {
        self.waking_prog.as_ref().map(AsFd::as_fd)
    }

    /// How many times the kernel skipped the switch and waking programs instead of running
    /// them (another BPF program, or a bpf(2) map operation, was active on that CPU): each
    /// skipped switch is a switch-out or switch-in the maps never saw. `None` before 5.12.
    pub fn skipped_runs(&self) -> Option<u64> {
        let switch = sys::prog_recursion_misses(self.switch_prog.as_fd())?;
        let waking = self
            .waking_prog
            .as_ref()
            .and_then(|p| sys::prog_recursion_misses(p.as_fd()))
            .unwrap_or(0);
        Some(switch + waking)
    }

    /// The `sched_process_fork` program, for process targets.
    pub fn fork_prog(&self) -> Option<BorrowedFd<'_>> {
        self.fork_prog.as_ref().map(AsFd::as_fd)
    }

    /// The verifier's log of the switch program, when asked for.
    pub fn verifier_log(&self) -> &str {
        &self.log
    }

    /// Send spilled records of `cpu` to the bpf-output event `fd` (one per CPU).
    pub fn set_spill_event(&self, cpu: u32, fd: i32) -> Result<(), BpfError> {
        self.spill
            .update(
                &cpu.to_ne_bytes(),
                &(fd as u32).to_ne_bytes(),
                sys::update::ANY,
            )
            .map_err(syscall("bpf(BPF_MAP_UPDATE_ELEM spill)"))
    }

    /// Profile process (or thread, per the filter) `id`.
    pub fn add_target(&self, id: u32) -> Result<(), BpfError> {
        self.targets
            .update(&id.to_ne_bytes(), &1u32.to_ne_bytes(), sys::update::ANY)
            .map_err(syscall("bpf(BPF_MAP_UPDATE_ELEM targets)"))
    }

    /// Stop profiling `id` (an exited target whose id could be reused).
    pub fn remove_target(&self, id: u32) {
        let _ = self.targets.delete(&id.to_ne_bytes());
    }

    /// The ids profiled now (children of targets included).
    pub fn targets(&self) -> Vec<u32> {
        self.targets
            .keys()
            .unwrap_or_default()
            .iter()
            .filter_map(|k| super::drain::read_u32(k, 0))
            .collect()
    }

    /// Open an interval for a thread found blocked when recording started; its key has
    /// [`layout::AT_START`] as user stack id and `index` as kernel stack id.
    pub fn insert_blocked_at_start(&self, e: &RawEntry) -> Result<(), BpfError> {
        self.start
            .update(&e.key.tid.to_ne_bytes(), &e.encode(), sys::update::NOEXIST)
            .map_err(syscall("bpf(BPF_MAP_UPDATE_ELEM start)"))
    }

    /// Open (or overwrite) the interval of `e.key.tid` as if its thread had switched out
    /// at `e.ts`: for tests that force what the programs see when a switch-in fires no
    /// `sched_switch`. Profiling uses [`OffcpuBpf::insert_blocked_at_start`], which never
    /// replaces an interval the programs opened.
    pub fn replace_open_interval(&self, e: &RawEntry) -> Result<(), BpfError> {
        self.start
            .update(&e.key.tid.to_ne_bytes(), &e.encode(), sys::update::ANY)
            .map_err(syscall("bpf(BPF_MAP_UPDATE_ELEM start)"))
    }

    /// Every open interval (switch-out seen, switch-in not yet).
    pub fn open_intervals(&self) -> Result<Vec<RawEntry>, BpfError> {
        let keys = self
            .start
            .keys()
            .map_err(syscall("bpf(BPF_MAP_GET_NEXT_KEY start)"))?;
        let mut value = vec![0u8; layout::entry::SIZE];
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if self.start.lookup(&key, &mut value).unwrap_or(false) {
                out.extend(RawEntry::decode(&value));
            }
        }
        Ok(out)
    }

    /// A stack of `epoch` by id; empty for negative ids or when it is gone.
    pub fn resolve(&mut self, epoch: u32, id: i32) -> Option<Stack> {
        let Ok(id) = u32::try_from(id) else {
            return Some(empty());
        };
        self.gens.resolve(epoch, id)
    }

    fn resolve_counted(&mut self, epoch: u32, id: i32, intervals: u64) -> Stack {
        self.resolve(epoch, id).unwrap_or_else(|| {
            self.unresolved += intervals;
            empty()
        })
    }

    /// Take the counts added since the last drain and start a new stack epoch. Stacks that
    /// open intervals still hold stay resolvable (pinned) until they close.
    pub fn drain(&mut self) -> Result<Vec<BlockedCount>, BpfError> {
        // Held ids are read before the counts, so an interval closing in between is pinned.
        let held: Vec<(u32, u32)> = self
            .open_intervals()?
            .iter()
            .flat_map(|e| {
                let k = &e.key;
                [
                    (k.epoch, k.ustack),
                    (k.epoch, k.kstack),
                    (k.waker_epoch, k.waker_ustack),
                    (k.waker_epoch, k.waker_kstack),
                ]
            })
            .filter_map(|(e, id)| Some((e, u32::try_from(id).ok()?)))
            .collect();
        let entries = self
            .drainer
            .take(&self.counts, "bpf(BPF_MAP_LOOKUP_ELEM offcpu counts)")?;
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let (Some(key), Some(ns), Some(n)) = (
                RawKey::decode(&key),
                read_u64(&value, 0),
                read_u64(&value, 8),
            ) else {
                continue;
            };
            let at_start = key.ustack == layout::AT_START;
            let (user, kernel) = if at_start {
                (empty(), empty())
            } else {
                (
                    self.resolve_counted(key.epoch, key.ustack, n),
                    self.resolve_counted(key.epoch, key.kstack, n),
                )
            };
            let (waker_user, waker_kernel) = if key.has_waker() {
                (
                    self.resolve_counted(key.waker_epoch, key.waker_ustack, n),
                    self.resolve_counted(key.waker_epoch, key.waker_kstack, n),
                )
            } else {
                (empty(), empty())
            };
            out.push(BlockedCount {
                key,
                user,
                kernel,
                waker_user,
                waker_kernel,
                blocked_ns: ns,
                intervals: n,
            });
        }
        self.gens.rotate(held)?;
        Ok(out)
    }

    /// Stacks pinned for open intervals (verbose table sizes).
    pub fn pinned_stacks(&self) -> usize {
        self.gens.pinned()
    }

    /// The programs' counters.
    pub fn counters(&self) -> Result<OffcpuCounters, BpfError> {
        let mut v = [0u64; slot::COUNT as usize];
        let mut buf = [0u8; 8];
        for (i, out) in (0u32..).zip(v.iter_mut()) {
            if self
                .counters
                .lookup(&i.to_ne_bytes(), &mut buf)
                .map_err(syscall("bpf(BPF_MAP_LOOKUP_ELEM counters)"))?
            {
                *out = u64::from_ne_bytes(buf);
            }
        }
        let side = |base: u32| -> u64 {
            use super::emit::failure;
            [failure::COLLISION, failure::STACK_MAP_FULL, failure::OTHER]
                .iter()
                .map(|f| v[(base + f) as usize])
                .sum()
        };
        Ok(OffcpuCounters {
            user_not_recorded: side(slot::USER),
            kernel_not_recorded: side(slot::KERNEL),
            count_map_full: v[slot::COUNT_MAP_FULL as usize],
            spilled_intervals: v[slot::SPILLED_INTERVALS as usize],
            spill_failed: v[slot::SPILL_FAILED as usize],
            filtered: v[slot::FILTERED as usize],
            unpaired: v[slot::UNPAIRED as usize],
            ended_at_wakeup: v[slot::ENDED_AT_WAKEUP as usize],
            ended_by_runtime: v[slot::ENDED_BY_RUNTIME as usize],
            start_unconfirmed: v[slot::START_UNCONFIRMED as usize],
            not_blocked: v[slot::NOT_BLOCKED as usize],
            start_map_full: v[slot::START_MAP_FULL as usize],
        })
    }
}

/// Where the running kernel keeps a task's CPU time (`task_struct.se.sum_exec_runtime`),
/// from its BTF; `None` without BTF.
pub fn runtime_offset() -> Option<i32> {
    let btf = super::btf::Btf::vmlinux()?;
    let off = btf.offset_of("task_struct", &["se", "sum_exec_runtime"])?;
    i32::try_from(off).ok()
}

/// A 4-byte integer field's offset in a tracepoint record, usable as a program's context
/// offset (the first 8 bytes are not readable by tracepoint programs).
pub fn int_field(format: &TracepointFormat, name: &'static str) -> Result<i16, DecodeError> {
    let f = format.field(name).ok_or(DecodeError::MissingField(name))?;
    if f.size != 4 {
        return Err(DecodeError::UnexpectedSize {
            field: f.name.clone(),
            size: f.size,
            expected: "4",
        });
    }
    field_offset(f)
}

fn field_offset(f: &Field) -> Result<i16, DecodeError> {
    match i16::try_from(f.offset) {
        Ok(off) if off >= 8 && f.offset % f.size == 0 => Ok(off),
        _ => Err(DecodeError::OutOfRange {
            field: f.name.clone(),
            value: f.offset as i64,
        }),
    }
}

impl SwitchFields {
    /// The fields of a `sched_switch` format file.
    pub fn from_format(format: &TracepointFormat) -> Result<SwitchFields, DecodeError> {
        let state = format
            .field("prev_state")
            .ok_or(DecodeError::MissingField("prev_state"))?;
        if state.size != 4 && state.size != 8 {
            return Err(DecodeError::UnexpectedSize {
                field: state.name.clone(),
                size: state.size,
                expected: "4 or 8",
            });
        }
        Ok(SwitchFields {
            prev_pid: int_field(format, "prev_pid")?,
            prev_state: field_offset(state)?,
            prev_state_size: state.size as u8,
            next_pid: int_field(format, "next_pid")?,
        })
    }
}

/// The state array for `states` and the decision for values beyond it: `opens` says
/// which decoded states open an interval; the final switch-out of a dying task never does.
pub fn state_decisions(states: &StateTable, opens: impl Fn(TaskState) -> bool) -> (Vec<u32>, u32) {
    let decide = |raw: u64| match states.decode(raw) {
        TaskState::Dead => accept::DEAD,
        s if opens(s) => accept::YES,
        _ => accept::NO,
    };
    let table = (0..u64::from(STATE_TABLE_SIZE)).map(decide).collect();
    // A value past the table has high bits the table cannot name: decode the largest one.
    (table, decide(u64::from(u32::MAX)))
}

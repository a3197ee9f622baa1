//! In-kernel stack aggregation: a `BPF_PROG_TYPE_PERF_EVENT` program that, on every
//! sample, records the user and kernel stacks in a `BPF_MAP_TYPE_STACK_TRACE` and counts
//! samples per (tgid, tid, user stack id, kernel stack id) in a hash map — bcc's `profile`
//! design. Userspace only reads the maps, so nothing crosses the ring buffer per sample.
//!
//! The program returns 0, which tells the kernel's overflow handler not to also write the
//! sample to the event's ring.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::drain::{read_u32, read_u64, HashDrain};
use super::emit::{atomic_add, failure, frame_ptr, Counters};
use super::error::{self, BpfError};
use super::insn::{alu, jmp, size, Asm, Insn, Reg, FP};
use super::maps::Map;
use super::stack_gens::{StackGenFds, StackGens};
use super::sys;

use super::helpers::{self as helper, F_USER_STACK};

/// Stored as a stack id when that side's stack was not asked for (never a real errno).
const NOT_COLLECTED: i32 = i32::MIN;

/// Slots of the missing-stack counter array. Per side: EEXIST (bucket held another stack,
/// a hash collision), ENOMEM (stack map full), EFAULT (no stack of that kind — a user-mode
/// sample has no kernel stack, a kernel thread no user stack), anything else. Every
/// failure but EFAULT hands the sample to the ring (see [`MissingStacks`]).
mod slot {
    /// Base of the user side's `emit::failure` slots.
    pub const USER: u32 = 0;
    /// Base of the kernel side's.
    pub const KERNEL: u32 = 4;
    /// The count map was full: the sample went to the ring.
    pub const COUNT_MAP_FULL: u32 = 8;
    /// The key vanished between a failed NOEXIST insert and the second lookup (userspace
    /// drained it in between): the sample went to the ring.
    pub const INSERT_RACE: u32 = 9;
    /// Samples handed to the ring, for any of the reasons above.
    pub const SPILLED: u32 = 10;
    pub const COUNT: u32 = 11;
}

// Stack frame layout of the program (offsets from r10).
const KEY_OFF: i16 = -24; // {u32 tgid, u32 tid, s32 user_id, s32 kernel_id, u32 epoch}
const USER_ID_OFF: i16 = -16;
const KERNEL_ID_OFF: i16 = -12;
const EPOCH_OFF: i16 = -8;
const ONE_OFF: i16 = -32; // u64 initial count
const SLOT_OFF: i16 = -36; // u32 counter index
const ZERO_OFF: i16 = -40; // u32 key of the epoch array
const KEY_SIZE: usize = 20;
const NSDATA_OFF: i16 = -48; // struct bpf_pidns_info {u32 pid (thread), u32 tgid}

/// The pid namespace psample names processes in, as `bpf_get_ns_current_pid_tgid` takes
/// it: the device (kernel encoding, `MAJOR << 20 | MINOR`) and inode of `/proc/self/ns/pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidNamespace {
    /// Device of the nsfs inode, kernel `dev_t` encoding.
    pub dev: u64,
    /// Inode number: the namespace's id.
    pub ino: u64,
}

/// Inode of the initial pid namespace (`PROC_PID_INIT_INO`, a fixed kernel constant).
const INIT_PID_NS_INO: u64 = 0xEFFF_FFFC;

impl PidNamespace {
    /// psample's own pid namespace when it is not the initial one (in a container, or under
    /// `unshare --pid`): there the kernel's global pids are not the ones psample and /proc
    /// use. `None` in the initial namespace or when it cannot be told.
    pub fn own_if_nested() -> Option<PidNamespace> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata("/proc/self/ns/pid").ok()?;
        if m.ino() == INIT_PID_NS_INO {
            return None;
        }
        let (major, minor) = (libc::major(m.dev()) as u64, libc::minor(m.dev()) as u64);
        Some(PidNamespace {
            dev: (major << 20) | minor,
            ino: m.ino(),
        })
    }
}

/// Largest callchain the stack map stores per stack, the perf default and the historic
/// fixed limit (RHEL 7 has no perf_event_max_stack sysctl).
const DEFAULT_MAX_DEPTH: u32 = 127;

/// How the stack counter is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackCounterOptions {
    /// Count-map size: distinct (thread, stack pair) keys held between drains.
    pub max_entries: u32,
    /// Stack-trace map size: distinct stacks held between drains.
    pub stack_map_entries: u32,
    /// Collect user stacks.
    pub user_stacks: bool,
    /// Collect kernel stacks.
    pub kernel_stacks: bool,
    /// Always capture the verifier log (otherwise only on a failed load).
    pub log_verifier: bool,
    /// Name threads by their ids in this pid namespace (`None`: the kernel's global ids).
    /// A thread outside it is counted as pid 0 / tid 0, as perf's ring reports it.
    pub pid_namespace: Option<PidNamespace>,
}

impl Default for StackCounterOptions {
    fn default() -> Self {
        StackCounterOptions {
            max_entries: 16384,
            stack_map_entries: 16384,
            user_stacks: true,
            kernel_stacks: true,
            log_verifier: false,
            pid_namespace: None,
        }
    }
}

/// One aggregated key: `count` samples of thread `tid` in process `pid` with these stacks.
/// An empty stack means that side was not collected, not available, or lost (see
/// [`MissingStacks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackCount {
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Leaf first.
    pub user_stack: Vec<u64>,
    /// Leaf first.
    pub kernel_stack: Vec<u64>,
    /// Samples counted.
    pub count: u64,
}

/// Per-side failure counts of `bpf_get_stackid`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackFailures {
    /// -EEXIST: another stack already held the hash bucket.
    pub collision: u64,
    /// -ENOMEM: the stack map was full.
    pub map_full: u64,
    /// -EFAULT: no stack of this kind existed (a user-mode sample has no kernel stack;
    /// a kernel thread has no user stack). Expected, not a loss.
    pub no_stack: u64,
    /// Any other error.
    pub other: u64,
}

impl StackFailures {
    /// Stacks that existed but did not fit the stack map (each such sample went to the
    /// ring instead).
    pub fn not_recorded(&self) -> u64 {
        self.collision + self.map_full + self.other
    }
}

/// What the in-kernel path could not aggregate, cumulative since [`StackCounter::load`].
/// Samples it could not count were handed to the ring ("spilled"), where the ring path
/// reads them with their callchains: only `unresolved` is a loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MissingStacks {
    /// User-stack failures.
    pub user: StackFailures,
    /// Kernel-stack failures.
    pub kernel: StackFailures,
    /// Samples spilled because the count map was full.
    pub count_map_full: u64,
    /// Samples spilled because their key was drained while being inserted.
    pub insert_race: u64,
    /// Samples handed to the ring, for any reason.
    pub spilled: u64,
    /// Counted stacks whose id no longer resolved at drain time (counted per sample).
    pub unresolved: u64,
}

impl MissingStacks {
    /// Samples the program handed to the ring instead of counting them.
    pub fn spilled_samples(&self) -> u64 {
        self.spilled
    }

    /// Samples counted with a stack that should have been there but is missing.
    pub fn lost_stacks(&self) -> u64 {
        self.unresolved
    }
}

/// The loaded program and its maps. Dropping it closes the program and map fds; perf
/// events it was attached to keep the program alive until they are closed themselves.
#[derive(Debug)]
pub struct StackCounter {
    prog: OwnedFd,
    counts: Map,
    stacks: Option<StackGens>,
    missing_map: Map,
    missing: MissingStacks,
    log: String,
    drainer: HashDrain,
}

/// Frames per stack the kernel records (`kernel.perf_event_max_stack`, at most 127).
pub(crate) fn max_depth() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_stack")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(DEFAULT_MAX_DEPTH, |n| n.clamp(1, DEFAULT_MAX_DEPTH))
}

/// Create a map, raising RLIMIT_MEMLOCK once if the kernel charges maps to it (before
/// 5.11, where the default limit of 64 KiB–8 MiB is smaller than a stack map).
pub(crate) fn create_map(
    what: &'static str,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> Result<Map, BpfError> {
    match Map::create(map_type, key_size, value_size, max_entries, name) {
        Err(Errno::EPERM) if raise_memlock() => {
            Map::create(map_type, key_size, value_size, max_entries, name)
        }
        other => other,
    }
    .map_err(|e| error::syscall(what, e))
}

/// Returns whether the limit was actually raised.
fn raise_memlock() -> bool {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK) else {
        return false;
    };
    if soft == RLIM_INFINITY {
        return false;
    }
    if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok() {
        return true;
    }
    // Without CAP_SYS_RESOURCE the soft limit can still go up to the hard one.
    hard > soft && setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard).is_ok()
}

/// Map fds the program refers to.
struct ProgramMaps {
    counts: i32,
    stacks: Option<StackGenFds>,
    missing: i32,
}

/// Emit the stack ids of both sides into the key; leaves r9 = 1 when a stack that exists
/// could not be recorded (the sample then goes to the ring instead).
fn emit_stack_ids(a: &mut Asm, maps: &ProgramMaps, user: bool, kernel: bool) {
    let counters = Counters {
        fd: maps.missing,
        key_off: SLOT_OFF,
    };
    a.mov64_imm(Reg::R9, 0);
    match &maps.stacks {
        Some(gens) => {
            gens.emit_load_epoch(a, Reg::R8, ZERO_OFF);
            a.store_reg(size::W, FP, EPOCH_OFF, Reg::R8);
        }
        None => {
            a.store_imm(size::W, FP, EPOCH_OFF, 0);
        }
    }
    for (wanted, flags, off, side) in [
        (user, F_USER_STACK, USER_ID_OFF, slot::USER),
        (kernel, 0, KERNEL_ID_OFF, slot::KERNEL),
    ] {
        match &maps.stacks {
            Some(gens) if wanted => {
                let ok = a.new_label();
                gens.emit_get_stackid(a, Reg::R6, Reg::R8, flags);
                a.store_reg(size::W, FP, off, Reg::R0)
                    .jmp_imm(jmp::JSGE, Reg::R0, 0, ok);
                counters.bump_failure(a, side, Reg::R7);
                // EFAULT: there is no such stack (kept as a negative id, counted as such).
                a.jmp_imm(jmp::JEQ, Reg::R7, (side + failure::NO_STACK) as i32, ok)
                    .mov64_imm(Reg::R9, 1);
                a.bind(ok);
            }
            _ => {
                a.store_imm(size::W, FP, off, NOT_COLLECTED);
            }
        }
    }
}

/// The sampling program. `maps.stacks` is `None` when neither stack side is collected.
/// Returns 0 (the kernel drops the sample) when it was counted, and 1 (the kernel writes
/// it to the event's ring as usual, with its callchain) when it could not be: a stack
/// that did not fit the stack map, a full count map, an insert race. So the in-kernel
/// path loses nothing the ring path would have kept.
/// Emit: the key's tgid and tid, from the current task's global ids or, with `ns`, its ids
/// in that namespace (0 and 0 when it is not in it). Clobbers r0-r5; r6 is kept.
fn store_ids(a: &mut Asm, ns: Option<PidNamespace>) {
    let Some(ns) = ns else {
        a.call(helper::GET_CURRENT_PID_TGID)
            // tid = low half. The idle task (tid 0) is counted too: a system-wide profile
            // shows idle time as `swapper`, as perf's does and as the ring-buffer path does.
            .mov64_reg(Reg::R1, Reg::R0)
            .alu64_imm(alu::LSH, Reg::R1, 32)
            .alu64_imm(alu::RSH, Reg::R1, 32)
            .store_reg(size::W, FP, KEY_OFF + 4, Reg::R1)
            .alu64_imm(alu::RSH, Reg::R0, 32)
            .store_reg(size::W, FP, KEY_OFF, Reg::R0);
        return;
    };
    let found = a.new_label();
    // On failure the helper zeroes nsdata: the key gets pid 0, tid 0.
    a.ld_imm64(Reg::R1, ns.dev)
        .ld_imm64(Reg::R2, ns.ino)
        .mov64_reg(Reg::R3, FP)
        .alu64_imm(alu::ADD, Reg::R3, i32::from(NSDATA_OFF))
        .mov64_imm(Reg::R4, 8)
        .call(helper::GET_NS_CURRENT_PID_TGID)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, found)
        .store_imm(size::DW, FP, NSDATA_OFF, 0);
    a.bind(found);
    a.load(size::W, Reg::R1, FP, NSDATA_OFF)
        .store_reg(size::W, FP, KEY_OFF + 4, Reg::R1)
        .load(size::W, Reg::R1, FP, NSDATA_OFF + 4)
        .store_reg(size::W, FP, KEY_OFF, Reg::R1);
}

fn build_program(
    maps: &ProgramMaps,
    user: bool,
    kernel: bool,
    ns: Option<PidNamespace>,
) -> Result<Vec<Insn>, BpfError> {
    let mut a = Asm::new();
    let counted = a.new_label();
    let spill = a.new_label();
    let counters = Counters {
        fd: maps.missing,
        key_off: SLOT_OFF,
    };

    a.mov64_reg(Reg::R6, Reg::R1);
    store_ids(&mut a, ns);
    emit_stack_ids(&mut a, maps, user, kernel);
    a.jmp_imm(jmp::JNE, Reg::R9, 0, spill);

    let insert = a.new_label();
    let full = a.new_label();
    a.ld_map_fd(Reg::R1, maps.counts);
    frame_ptr(&mut a, Reg::R2, KEY_OFF);
    a.call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, insert)
        .mov64_imm(Reg::R1, 1);
    atomic_add(&mut a, Reg::R0, 0, Reg::R1);
    a.ja(counted);

    a.bind(insert);
    a.store_imm(size::DW, FP, ONE_OFF, 1)
        .ld_map_fd(Reg::R1, maps.counts);
    frame_ptr(&mut a, Reg::R2, KEY_OFF);
    frame_ptr(&mut a, Reg::R3, ONE_OFF);
    a.mov64_imm(Reg::R4, sys::update::NOEXIST as i32)
        .call(helper::MAP_UPDATE_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, counted)
        .jmp_imm(jmp::JNE, Reg::R0, -(Errno::EEXIST as i32), full)
        // Another CPU inserted the same key between our lookup and insert: add to theirs.
        .ld_map_fd(Reg::R1, maps.counts);
    frame_ptr(&mut a, Reg::R2, KEY_OFF);
    let raced = a.new_label();
    a.call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, raced)
        .mov64_imm(Reg::R1, 1);
    atomic_add(&mut a, Reg::R0, 0, Reg::R1);
    a.ja(counted);

    a.bind(full);
    counters.bump(&mut a, slot::COUNT_MAP_FULL);
    a.ja(spill);
    a.bind(raced);
    counters.bump(&mut a, slot::INSERT_RACE);

    a.bind(spill);
    counters.bump(&mut a, slot::SPILLED);
    a.mov64_imm(Reg::R0, 1).exit();
    a.bind(counted);
    a.mov64_imm(Reg::R0, 0).exit();
    Ok(a.finish()?)
}

/// Initial verifier-log buffer; grown on ENOSPC up to the kernel's limit.
const LOG_START: usize = 256 * 1024;

/// Load `insns` as a program of `prog_type` (a `sys::prog_type`), capturing the verifier
/// log when asked or when the load fails.
pub(crate) fn load_program(
    prog_type: u32,
    name: &str,
    insns: &[Insn],
    want_log: bool,
) -> Result<(OwnedFd, String), BpfError> {
    let what: &'static str = if prog_type == sys::prog_type::TRACEPOINT {
        "bpf(BPF_PROG_LOAD tracepoint)"
    } else {
        "bpf(BPF_PROG_LOAD perf_event)"
    };
    let bytes = super::insn::to_bytes(insns);
    let license: &CStr = c"GPL";
    let kern_version = sys::kernel_version_code();
    let load = |log: Option<&mut [u8]>| {
        sys::prog_load(sys::ProgLoad {
            prog_type,
            insns: &bytes,
            license,
            kern_version,
            name,
            log,
        })
    };

    let first_err = if want_log {
        None
    } else {
        match load(None) {
            Ok(fd) => return Ok((fd, String::new())),
            // No verifier involved: the log would not explain these.
            Err(e @ (Errno::ENOSYS | Errno::EPERM | Errno::E2BIG | Errno::ENOMEM)) => {
                return Err(error::syscall(what, e))
            }
            Err(e) => Some(e),
        }
    };

    let mut buf = vec![0u8; LOG_START];
    loop {
        let result = load(Some(&mut buf));
        let log = log_text(&buf);
        match result {
            Ok(fd) => return Ok((fd, log)),
            Err(Errno::ENOSPC) if buf.len() < sys::MAX_LOG_SIZE as usize => {
                let grown = (buf.len() * 4).min(sys::MAX_LOG_SIZE as usize);
                buf = vec![0u8; grown];
            }
            Err(e) => {
                let errno = first_err.unwrap_or(e);
                if log.trim().is_empty() {
                    return Err(error::syscall(what, errno));
                }
                return Err(BpfError::Verifier {
                    errno,
                    log,
                    hint: error::hint(what, errno),
                });
            }
        }
    }
}

fn log_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).into_owned()
}

struct RawCount {
    pid: u32,
    tid: u32,
    user_id: i32,
    kernel_id: i32,
    epoch: u32,
    count: u64,
}

impl StackCounter {
    /// Builds + loads the BPF_PROG_TYPE_PERF_EVENT program and creates its maps. Raises
    /// RLIMIT_MEMLOCK when needed (older kernels charge maps to it). Errors carry errno +
    /// a one-line what-to-do.
    pub fn load(opts: &StackCounterOptions) -> Result<StackCounter, BpfError> {
        if opts.max_entries == 0 {
            return Err(BpfError::InvalidOption(
                "the count map needs at least 1 entry (max_entries = 0)".into(),
            ));
        }
        let want_stacks = opts.user_stacks || opts.kernel_stacks;
        if want_stacks && opts.stack_map_entries == 0 {
            return Err(BpfError::InvalidOption(
                "the stack map needs at least 1 entry (stack_map_entries = 0)".into(),
            ));
        }

        let counts = create_map(
            "bpf(BPF_MAP_CREATE hash)",
            sys::map_type::HASH,
            KEY_SIZE as u32,
            8,
            opts.max_entries,
            "psample_counts",
        )?;
        let stacks = if want_stacks {
            Some(StackGens::create(opts.stack_map_entries, max_depth())?)
        } else {
            None
        };
        let missing_map = create_map(
            "bpf(BPF_MAP_CREATE array)",
            sys::map_type::ARRAY,
            4,
            8,
            slot::COUNT,
            "psample_missing",
        )?;

        let insns = build_program(
            &ProgramMaps {
                counts: counts.raw_fd(),
                stacks: stacks.as_ref().map(StackGens::fds),
                missing: missing_map.raw_fd(),
            },
            opts.user_stacks,
            opts.kernel_stacks,
            opts.pid_namespace,
        )?;
        let (prog, log) = load_program(
            sys::prog_type::PERF_EVENT,
            "psample_stacks",
            &insns,
            opts.log_verifier,
        )?;
        Ok(StackCounter {
            prog,
            counts,
            stacks,
            missing_map,
            missing: MissingStacks::default(),
            log,
            drainer: HashDrain::default(),
        })
    }

    /// The program fd, for callers that issue PERF_EVENT_IOC_SET_BPF through their own
    /// kernel abstraction (e.g. an emulated kernel in tests).
    pub fn prog_fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }

    /// PERF_EVENT_IOC_SET_BPF on a sampling event fd (one per CPU or per thread).
    pub fn attach(&self, perf_fd: BorrowedFd<'_>) -> Result<(), BpfError> {
        let prog = u32::try_from(self.prog.as_raw_fd())
            .map_err(|_| error::syscall("ioctl(PERF_EVENT_IOC_SET_BPF)", Errno::EBADF))?;
        // SAFETY: SET_BPF takes the program fd by value; both fds are live for the call.
        let rc = unsafe { perf_event_open_sys::ioctls::SET_BPF(perf_fd.as_raw_fd(), prog) };
        if rc < 0 {
            return Err(error::syscall(
                "ioctl(PERF_EVENT_IOC_SET_BPF)",
                Errno::last(),
            ));
        }
        Ok(())
    }

    /// Reads and clears the count map, resolving stack ids through the stack maps, then
    /// starts a new stack epoch (see [`StackGens`]) so long runs don't fill them. Safe to
    /// call while the events are running (periodic drains): a key counted during the
    /// drain is picked up by the next one, with its stacks still resolvable.
    pub fn drain(&mut self) -> Result<Vec<StackCount>, BpfError> {
        let raw = self.take_counts()?;
        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            let mut side = |id: i32| -> Vec<u64> {
                let (Ok(id), Some(gens)) = (u32::try_from(id), self.stacks.as_mut()) else {
                    return Vec::new();
                };
                match gens.resolve(r.epoch, id) {
                    Some(stack) => stack.to_vec(),
                    None => {
                        self.missing.unresolved += r.count;
                        Vec::new()
                    }
                }
            };
            let user_stack = side(r.user_id);
            let kernel_stack = side(r.kernel_id);
            out.push(StackCount {
                pid: r.pid,
                tid: r.tid,
                user_stack,
                kernel_stack,
                count: r.count,
            });
        }
        if let Some(gens) = self.stacks.as_mut() {
            // Nothing holds ids across drains here: only counts name them.
            gens.rotate([])?;
        }
        self.refresh_missing()?;
        Ok(out)
    }

    fn take_counts(&mut self) -> Result<Vec<RawCount>, BpfError> {
        let entries = self
            .drainer
            .take(&self.counts, "bpf(BPF_MAP_LOOKUP_ELEM counts)")?;
        Ok(entries
            .into_iter()
            .filter_map(|(key, value)| {
                Some(RawCount {
                    pid: read_u32(&key, 0)?,
                    tid: read_u32(&key, 4)?,
                    user_id: read_u32(&key, 8)? as i32,
                    kernel_id: read_u32(&key, 12)? as i32,
                    epoch: read_u32(&key, 16)?,
                    count: read_u64(&value, 0)?,
                })
            })
            .collect())
    }

    fn refresh_missing(&mut self) -> Result<(), BpfError> {
        let mut slots = [0u64; slot::COUNT as usize];
        let mut value = [0u8; 8];
        for (i, out) in (0u32..).zip(slots.iter_mut()) {
            if self
                .missing_map
                .lookup(&i.to_ne_bytes(), &mut value)
                .map_err(|e| error::syscall("bpf(BPF_MAP_LOOKUP_ELEM missing)", e))?
            {
                *out = u64::from_ne_bytes(value);
            }
        }
        let get = |i: u32| slots.get(i as usize).copied().unwrap_or(0);
        let side = |base: u32| StackFailures {
            collision: get(base + failure::COLLISION),
            map_full: get(base + failure::STACK_MAP_FULL),
            no_stack: get(base + failure::NO_STACK),
            other: get(base + failure::OTHER),
        };
        self.missing.user = side(slot::USER);
        self.missing.kernel = side(slot::KERNEL);
        self.missing.count_map_full = get(slot::COUNT_MAP_FULL);
        self.missing.insert_race = get(slot::INSERT_RACE);
        self.missing.spilled = get(slot::SPILLED);
        Ok(())
    }

    /// Failed bpf_get_stackid (-EEXIST/-ENOMEM/-EFAULT), map full; as of the last drain.
    pub fn missing(&self) -> MissingStacks {
        self.missing
    }

    /// The verifier's output, when [`StackCounterOptions::log_verifier`] was set.
    pub fn verifier_log(&self) -> &str {
        &self.log
    }
}

/// Cheap probe for `--bpf auto`: can this process load a perf_event program + create a
/// stack map here? Loads the real program with one-entry maps, so a pass means the
/// verifier accepts it on this kernel.
pub fn probe() -> Result<(), BpfError> {
    StackCounter::load(&StackCounterOptions {
        max_entries: 1,
        stack_map_entries: 1,
        user_stacks: true,
        kernel_stacks: true,
        log_verifier: false,
        pid_namespace: PidNamespace::own_if_nested(),
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::insn::class;

    fn program(user: bool, kernel: bool) -> Vec<Insn> {
        build_program(
            &ProgramMaps {
                counts: 3,
                stacks: Some(StackGenFds {
                    stacks: [4, 6],
                    epoch: 7,
                }),
                missing: 5,
            },
            user,
            kernel,
            None,
        )
        .expect("assembles")
    }

    #[test]
    fn program_ends_with_return_zero() {
        let p = program(true, true);
        let n = p.len();
        assert_eq!(p[n - 1].code, class::JMP | jmp::EXIT);
        assert_eq!((p[n - 2].code, p[n - 2].imm), (0xb7, 0));
    }

    /// A sample the maps cannot take returns 1: the kernel then writes it to the ring.
    #[test]
    fn program_has_a_spill_exit_returning_one() {
        let p = program(true, true);
        let spills = p
            .windows(2)
            .filter(|w| w[1].code == class::JMP | jmp::EXIT && (w[0].code, w[0].imm) == (0xb7, 1))
            .count();
        assert_eq!(spills, 1);
    }

    #[test]
    fn program_calls_stackid_per_requested_side() {
        let stackid_flags = |p: &[Insn]| -> Vec<i32> {
            p.windows(2)
                .filter(|w| w[1].code == class::JMP | jmp::CALL && w[1].imm == helper::GET_STACKID)
                .map(|w| w[0].imm)
                .collect()
        };
        assert_eq!(stackid_flags(&program(true, true)), [F_USER_STACK, 0]);
        assert_eq!(stackid_flags(&program(false, true)), [0]);
        assert!(stackid_flags(&program(false, false)).is_empty());
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let p = program(true, true);
        for (i, insn) in p.iter().enumerate() {
            let op = insn.code & 0xf0;
            if insn.code & 0x07 == class::JMP && op != jmp::CALL && op != jmp::EXIT {
                let target = i as i64 + 1 + i64::from(insn.off);
                assert!(
                    (0..p.len() as i64).contains(&target),
                    "insn {i} jumps to {target}"
                );
            }
        }
    }

    #[test]
    fn map_references_use_pseudo_map_fd() {
        let p = program(true, true);
        let fds: std::collections::BTreeSet<i32> = p
            .iter()
            .filter(|i| i.code == 0x18)
            .map(|i| {
                assert_eq!(i.src, super::super::insn::PSEUDO_MAP_FD);
                i.imm
            })
            .collect();
        assert_eq!(fds.into_iter().collect::<Vec<_>>(), [3, 4, 5, 6, 7]);
    }

    #[test]
    fn zero_sized_options_are_refused_before_any_syscall() {
        let err = StackCounter::load(&StackCounterOptions {
            max_entries: 0,
            ..Default::default()
        })
        .expect_err("0 entries is invalid");
        assert!(err.to_string().contains("max_entries"), "{err}");
        let err = StackCounter::load(&StackCounterOptions {
            stack_map_entries: 0,
            ..Default::default()
        })
        .expect_err("0 entries is invalid");
        assert!(err.to_string().contains("stack_map_entries"), "{err}");
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;

    /// Reads r2 before writing it: every verifier rejects that, and the error must carry
    /// the log explaining why. Needs root.
    #[test]
    fn verifier_rejection_carries_the_log() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root for bpf(2)");
        let mut a = Asm::new();
        a.mov64_reg(Reg::R0, Reg::R2).exit();
        let insns = a.finish().expect("assembles");
        for want_log in [false, true] {
            let err = load_program(sys::prog_type::PERF_EVENT, "psample_test", &insns, want_log)
                .expect_err("uninitialised read");
            let log = err
                .verifier_log()
                .unwrap_or_else(|| panic!("no log in {err:?}"));
            assert!(log.contains("R2"), "{log}");
            assert!(err.to_string().contains("R2 !read_ok"), "{err}");
        }
    }
}

//! In-kernel stack aggregation: a `BPF_PROG_TYPE_PERF_EVENT` program that, on every
//! sample, records the user and kernel stacks in a `BPF_MAP_TYPE_STACK_TRACE` and counts
//! samples per (tgid, tid, user stack id, kernel stack id) in a hash map — bcc's `profile`
//! design. Userspace only reads the maps, so nothing crosses the ring buffer per sample.
//!
//! The program returns 0, which tells the kernel's overflow handler not to also write the
//! sample to the event's ring.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::error::{self, BpfError};
use super::insn::{alu, jmp, size, Asm, Insn, Reg, FP};
use super::maps::Map;
use super::sys;

/// Helper function ids (stable ABI, include/uapi/linux/bpf.h).
mod helper {
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    pub const MAP_UPDATE_ELEM: i32 = 2;
    pub const GET_CURRENT_PID_TGID: i32 = 14;
    pub const GET_STACKID: i32 = 27;
    /// Since 5.7.
    pub const GET_NS_CURRENT_PID_TGID: i32 = 120;
}

/// `bpf_get_stackid` flag selecting the user stack.
const F_USER_STACK: i32 = 1 << 8;

/// Stored as a stack id when that side's stack was not asked for (never a real errno).
const NOT_COLLECTED: i32 = i32::MIN;

/// Slots of the missing-stack counter array. Per side: EEXIST (bucket held another stack,
/// a hash collision), ENOMEM (stack map full), EFAULT (no stack of that kind — a user-mode
/// sample has no kernel stack, a kernel thread no user stack), anything else.
mod slot {
    pub const USER: u32 = 0;
    pub const KERNEL: u32 = 4;
    pub const COLLISION: u32 = 0;
    pub const STACK_MAP_FULL: u32 = 1;
    pub const NO_STACK: u32 = 2;
    pub const OTHER: u32 = 3;
    /// The count map was full: the whole sample was dropped.
    pub const COUNT_MAP_FULL: u32 = 8;
    /// The key vanished between a failed NOEXIST insert and the second lookup (userspace
    /// drained it in between): the sample was dropped.
    pub const INSERT_RACE: u32 = 9;
    pub const COUNT: u32 = 10;
}

// Stack frame layout of the program (offsets from r10).
const KEY_OFF: i16 = -16; // {u32 tgid, u32 tid, s32 user_id, s32 kernel_id}
const USER_ID_OFF: i16 = -8;
const KERNEL_ID_OFF: i16 = -4;
const ONE_OFF: i16 = -24; // u64 initial count
const SLOT_OFF: i16 = -28; // u32 counter index
const NSDATA_OFF: i16 = -40; // struct bpf_pidns_info {u32 pid (thread), u32 tgid}
const KEY_SIZE: usize = 16;

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
    /// Stacks that existed but were not recorded.
    pub fn lost(&self) -> u64 {
        self.collision + self.map_full + self.other
    }
}

/// Everything the in-kernel path failed to record, cumulative since [`StackCounter::load`].
/// Report these like lost records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MissingStacks {
    /// User-stack failures.
    pub user: StackFailures,
    /// Kernel-stack failures.
    pub kernel: StackFailures,
    /// Samples dropped entirely because the count map was full.
    pub count_map_full: u64,
    /// Samples dropped because their key was drained while being inserted.
    pub insert_race: u64,
    /// Sampled stacks whose id no longer resolved at drain time (counted per sample).
    pub unresolved: u64,
}

impl MissingStacks {
    /// Samples not counted at all.
    pub fn dropped_samples(&self) -> u64 {
        self.count_map_full + self.insert_race
    }

    /// Samples counted with a stack that should have been there but is missing.
    pub fn lost_stacks(&self) -> u64 {
        self.user.lost() + self.kernel.lost() + self.unresolved
    }
}

/// The loaded program and its maps. Dropping it closes the program and map fds; perf
/// events it was attached to keep the program alive until they are closed themselves.
#[derive(Debug)]
pub struct StackCounter {
    prog: OwnedFd,
    counts: Map,
    stacks: Option<Map>,
    missing_map: Map,
    missing: MissingStacks,
    log: String,
    /// Stacks deleted from the stack map by the previous drain: keys counted while that
    /// drain ran may still name them.
    recent_stacks: HashMap<u32, Vec<u64>>,
    /// Whether BPF_MAP_LOOKUP_AND_DELETE_ELEM works on hash maps here (5.14+).
    atomic_drain: bool,
}

fn max_depth() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_stack")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(DEFAULT_MAX_DEPTH, |n| n.clamp(1, DEFAULT_MAX_DEPTH))
}

/// Create a map, raising RLIMIT_MEMLOCK once if the kernel charges maps to it (before
/// 5.11, where the default limit of 64 KiB–8 MiB is smaller than a stack map).
fn create_map(
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

/// Emit: bump counter slot held in `slot_reg` (must be r6–r9; r1–r5 and r0 are clobbered).
fn bump_slot(a: &mut Asm, missing_fd: i32, slot_reg: Reg) {
    let skip = a.new_label();
    a.store_reg(size::W, FP, SLOT_OFF, slot_reg)
        .ld_map_fd(Reg::R1, missing_fd)
        .mov64_reg(Reg::R2, FP)
        .alu64_imm(alu::ADD, Reg::R2, i32::from(SLOT_OFF))
        .call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, skip)
        .mov64_imm(Reg::R1, 1)
        .atomic_add(size::DW, Reg::R0, 0, Reg::R1);
    a.bind(skip);
}

/// Emit: classify the negative errno in r0 and bump the matching slot of `side`.
fn bump_failure(a: &mut Asm, missing_fd: i32, side: u32) {
    let bump = a.new_label();
    let not_eexist = a.new_label();
    let not_enomem = a.new_label();
    let slot = |s: u32| (side + s) as i32;
    a.mov64_imm(Reg::R7, slot(slot::OTHER))
        .jmp_imm(jmp::JNE, Reg::R0, -(Errno::EEXIST as i32), not_eexist)
        .mov64_imm(Reg::R7, slot(slot::COLLISION))
        .ja(bump);
    a.bind(not_eexist);
    a.jmp_imm(jmp::JNE, Reg::R0, -(Errno::ENOMEM as i32), not_enomem)
        .mov64_imm(Reg::R7, slot(slot::STACK_MAP_FULL))
        .ja(bump);
    a.bind(not_enomem);
    a.jmp_imm(jmp::JNE, Reg::R0, -(Errno::EFAULT as i32), bump)
        .mov64_imm(Reg::R7, slot(slot::NO_STACK));
    a.bind(bump);
    bump_slot(a, missing_fd, Reg::R7);
}

/// Emit: atomically add 1 to the count the map-value pointer in r0 points at.
fn add_one_at_r0(a: &mut Asm) {
    a.mov64_imm(Reg::R1, 1)
        .atomic_add(size::DW, Reg::R0, 0, Reg::R1);
}

fn key_ptr_in(a: &mut Asm, reg: Reg, off: i16) {
    a.mov64_reg(reg, FP)
        .alu64_imm(alu::ADD, reg, i32::from(off));
}

/// Map fds the program refers to.
struct ProgramMaps {
    counts: i32,
    stacks: Option<i32>,
    missing: i32,
}

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

/// The sampling program. `maps.stacks` is `None` when neither stack side is collected.
fn build_program(
    maps: &ProgramMaps,
    user: bool,
    kernel: bool,
    ns: Option<PidNamespace>,
) -> Result<Vec<Insn>, BpfError> {
    let mut a = Asm::new();
    let out = a.new_label();

    a.mov64_reg(Reg::R6, Reg::R1);
    store_ids(&mut a, ns);

    for (wanted, flags, off, side) in [
        (user, F_USER_STACK, USER_ID_OFF, slot::USER),
        (kernel, 0, KERNEL_ID_OFF, slot::KERNEL),
    ] {
        match maps.stacks {
            Some(stacks_fd) if wanted => {
                let ok = a.new_label();
                a.mov64_reg(Reg::R1, Reg::R6)
                    .ld_map_fd(Reg::R2, stacks_fd)
                    .mov64_imm(Reg::R3, flags)
                    .call(helper::GET_STACKID)
                    // A failure keeps its negative errno as the id, so the sample is still
                    // counted (with that side's stack missing).
                    .store_reg(size::W, FP, off, Reg::R0)
                    .jmp_imm(jmp::JSGE, Reg::R0, 0, ok);
                bump_failure(&mut a, maps.missing, side);
                a.bind(ok);
            }
            _ => {
                a.store_imm(size::W, FP, off, NOT_COLLECTED);
            }
        }
    }

    let insert = a.new_label();
    let full = a.new_label();
    let raced = a.new_label();
    a.ld_map_fd(Reg::R1, maps.counts);
    key_ptr_in(&mut a, Reg::R2, KEY_OFF);
    a.call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, insert);
    add_one_at_r0(&mut a);
    a.ja(out);

    a.bind(insert);
    a.store_imm(size::DW, FP, ONE_OFF, 1)
        .ld_map_fd(Reg::R1, maps.counts);
    key_ptr_in(&mut a, Reg::R2, KEY_OFF);
    key_ptr_in(&mut a, Reg::R3, ONE_OFF);
    a.mov64_imm(Reg::R4, sys::update::NOEXIST as i32)
        .call(helper::MAP_UPDATE_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, out)
        .jmp_imm(jmp::JNE, Reg::R0, -(Errno::EEXIST as i32), full)
        // Another CPU inserted the same key between our lookup and insert: add to theirs.
        .ld_map_fd(Reg::R1, maps.counts);
    key_ptr_in(&mut a, Reg::R2, KEY_OFF);
    a.call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, raced);
    add_one_at_r0(&mut a);
    a.ja(out);

    a.bind(full);
    a.mov64_imm(Reg::R7, slot::COUNT_MAP_FULL as i32);
    bump_slot(&mut a, maps.missing, Reg::R7);
    a.ja(out);

    a.bind(raced);
    a.mov64_imm(Reg::R7, slot::INSERT_RACE as i32);
    bump_slot(&mut a, maps.missing, Reg::R7);

    a.bind(out);
    a.mov64_imm(Reg::R0, 0).exit();
    Ok(a.finish()?)
}

/// Initial verifier-log buffer; grown on ENOSPC up to the kernel's limit.
const LOG_START: usize = 256 * 1024;

/// Load `insns`, capturing the verifier log when asked or when the load fails.
fn load_program(insns: &[Insn], want_log: bool) -> Result<(OwnedFd, String), BpfError> {
    const WHAT: &str = "bpf(BPF_PROG_LOAD perf_event)";
    let bytes = super::insn::to_bytes(insns);
    let license: &CStr = c"GPL";
    let kern_version = sys::kernel_version_code();
    let load = |log: Option<&mut [u8]>| {
        sys::prog_load(sys::ProgLoad {
            prog_type: sys::prog_type::PERF_EVENT,
            insns: &bytes,
            license,
            kern_version,
            name: "psample_stacks",
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
                return Err(error::syscall(WHAT, e))
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
                    return Err(error::syscall(WHAT, errno));
                }
                return Err(BpfError::Verifier {
                    errno,
                    log,
                    hint: error::hint(WHAT, errno),
                });
            }
        }
    }
}

fn log_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(buf.get(..end).unwrap_or_default()).into_owned()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    Some(u64::from_ne_bytes(b.try_into().ok()?))
}

/// A stack-map value: `depth` u64 ips, leaf first, zero-padded after the last frame.
fn parse_stack(value: &[u8]) -> Vec<u64> {
    value
        .chunks_exact(8)
        .map_while(|c| c.try_into().ok().map(u64::from_ne_bytes))
        .take_while(|&ip| ip != 0)
        .collect()
}

struct RawCount {
    pid: u32,
    tid: u32,
    user_id: i32,
    kernel_id: i32,
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
            Some(create_map(
                "bpf(BPF_MAP_CREATE STACK_TRACE)",
                sys::map_type::STACK_TRACE,
                4,
                8 * max_depth(),
                opts.stack_map_entries,
                "psample_stacks",
            )?)
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
                stacks: stacks.as_ref().map(Map::raw_fd),
                missing: missing_map.raw_fd(),
            },
            opts.user_stacks,
            opts.kernel_stacks,
            opts.pid_namespace,
        )?;
        let (prog, log) = load_program(&insns, opts.log_verifier)?;
        Ok(StackCounter {
            prog,
            counts,
            stacks,
            missing_map,
            missing: MissingStacks::default(),
            log,
            recent_stacks: HashMap::new(),
            atomic_drain: true,
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

    /// Reads and clears the count map, resolving stack ids through the stack-trace map;
    /// also deletes consumed stack ids so long runs don't fill it. Safe to call while the
    /// events are running (periodic drains): a key counted during the drain is picked up
    /// by the next one.
    pub fn drain(&mut self) -> Result<Vec<StackCount>, BpfError> {
        let raw = self.take_counts()?;

        let mut resolved: HashMap<u32, Option<Vec<u64>>> = HashMap::new();
        if let Some(stacks) = &self.stacks {
            let mut value = vec![0u8; stacks.value_size()];
            for r in &raw {
                for id in [r.user_id, r.kernel_id] {
                    let Ok(id) = u32::try_from(id) else { continue };
                    if resolved.contains_key(&id) {
                        continue;
                    }
                    // The counts are already consumed, so a failed lookup only loses
                    // this stack (counted as unresolved), never the whole drain.
                    let found = stacks
                        .lookup(&id.to_ne_bytes(), &mut value)
                        .unwrap_or(false);
                    let stack = if found {
                        Some(parse_stack(&value))
                    } else {
                        self.recent_stacks.get(&id).cloned()
                    };
                    resolved.insert(id, stack);
                }
            }
        }

        let mut out = Vec::with_capacity(raw.len());
        for r in raw {
            let mut side = |id: i32| -> Vec<u64> {
                let Ok(id) = u32::try_from(id) else {
                    return Vec::new();
                };
                match resolved.get(&id) {
                    Some(Some(stack)) => stack.clone(),
                    _ => {
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

        // Free the consumed stacks; keep them one more round for keys that were counted
        // against them while this drain ran.
        let mut recent = HashMap::with_capacity(resolved.len());
        if let Some(stacks) = &self.stacks {
            for (id, stack) in resolved {
                let Some(stack) = stack else { continue };
                // A stack that cannot be freed merely stays in the map until it is reused.
                let _ = stacks.delete(&id.to_ne_bytes());
                recent.insert(id, stack);
            }
        }
        self.recent_stacks = recent;

        self.refresh_missing()?;
        Ok(out)
    }

    fn take_counts(&mut self) -> Result<Vec<RawCount>, BpfError> {
        let keys = self
            .counts
            .keys()
            .map_err(|e| error::syscall("bpf(BPF_MAP_GET_NEXT_KEY counts)", e))?;
        let mut raw = Vec::with_capacity(keys.len());
        let mut value = [0u8; 8];
        for key in keys {
            let found = if self.atomic_drain {
                match self.counts.lookup_and_delete(&key, &mut value) {
                    Ok(found) => found,
                    // Hash maps refuse this command before 5.14, and not always with a
                    // standard errno: 5.10 returns the kernel-internal ENOTSUPP (524), seen
                    // under QEMU on Debian's 5.10. Any refusal means "use lookup + delete" for
                    // the rest of the run; a real failure then shows up on that path.
                    Err(_) => {
                        self.atomic_drain = false;
                        self.lookup_then_delete(&key, &mut value)?
                    }
                }
            } else {
                self.lookup_then_delete(&key, &mut value)?
            };
            if !found {
                continue;
            }
            let (Some(pid), Some(tid), Some(user), Some(kernel), Some(count)) = (
                read_u32(&key, 0),
                read_u32(&key, 4),
                read_u32(&key, 8),
                read_u32(&key, 12),
                read_u64(&value, 0),
            ) else {
                continue;
            };
            raw.push(RawCount {
                pid,
                tid,
                user_id: user as i32,
                kernel_id: kernel as i32,
                count,
            });
        }
        Ok(raw)
    }

    /// Pre-5.14 drain: increments landing between the two calls are lost (a handful of
    /// samples per drain at most).
    fn lookup_then_delete(&self, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError> {
        let found = self
            .counts
            .lookup(key, value)
            .map_err(|e| error::syscall("bpf(BPF_MAP_LOOKUP_ELEM counts)", e))?;
        if found {
            self.counts
                .delete(key)
                .map_err(|e| error::syscall("bpf(BPF_MAP_DELETE_ELEM counts)", e))?;
        }
        Ok(found)
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
            collision: get(base + slot::COLLISION),
            map_full: get(base + slot::STACK_MAP_FULL),
            no_stack: get(base + slot::NO_STACK),
            other: get(base + slot::OTHER),
        };
        self.missing.user = side(slot::USER);
        self.missing.kernel = side(slot::KERNEL);
        self.missing.count_map_full = get(slot::COUNT_MAP_FULL);
        self.missing.insert_race = get(slot::INSERT_RACE);
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
        program_in(user, kernel, None)
    }

    fn program_in(user: bool, kernel: bool, ns: Option<PidNamespace>) -> Vec<Insn> {
        build_program(
            &ProgramMaps {
                counts: 3,
                stacks: Some(4),
                missing: 5,
            },
            user,
            kernel,
            ns,
        )
        .expect("assembles")
    }

    #[test]
    fn a_nested_namespace_uses_the_namespace_aware_helper() {
        let calls = |p: &[Insn]| -> Vec<i32> {
            p.iter()
                .filter(|i| i.code == class::JMP | jmp::CALL)
                .map(|i| i.imm)
                .collect()
        };
        let global = calls(&program(true, true));
        assert!(global.contains(&helper::GET_CURRENT_PID_TGID));
        assert!(!global.contains(&helper::GET_NS_CURRENT_PID_TGID));
        let ns = PidNamespace {
            dev: 4,
            ino: 4026532000,
        };
        let nested = calls(&program_in(true, true, Some(ns)));
        assert!(nested.contains(&helper::GET_NS_CURRENT_PID_TGID));
        assert!(!nested.contains(&helper::GET_CURRENT_PID_TGID));
    }

    #[test]
    fn program_ends_with_return_zero() {
        let p = program(true, true);
        let n = p.len();
        assert_eq!(p[n - 1].code, class::JMP | jmp::EXIT);
        assert_eq!((p[n - 2].code, p[n - 2].imm), (0xb7, 0));
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
        assert_eq!(fds.into_iter().collect::<Vec<_>>(), [3, 4, 5]);
    }

    #[test]
    fn stack_values_stop_at_the_first_zero() {
        let mut v = Vec::new();
        for ip in [0x401000u64, 0x402000, 0, 0x999] {
            v.extend_from_slice(&ip.to_ne_bytes());
        }
        assert_eq!(parse_stack(&v), [0x401000, 0x402000]);
        assert_eq!(parse_stack(&v[..5]), Vec::<u64>::new());
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
            let err = load_program(&insns, want_log).expect_err("uninitialised read");
            let log = err
                .verifier_log()
                .unwrap_or_else(|| panic!("no log in {err:?}"));
            assert!(log.contains("R2"), "{log}");
            assert!(err.to_string().contains("R2 !read_ok"), "{err}");
        }
    }
}

//! The off-CPU programs, offcputime/offwaketime style, as tracepoint programs:
//!
//! - `sched_switch`: closes the interval of the task switching in (`next_pid`) — adds its
//!   blocked time to the count map — then opens one for the task switching out (the current
//!   task, `prev_pid`) when its state passes `--state` and it is a target: time, state,
//!   comm and stack ids go into the start map;
//! - `sched_waking`: runs in the waker's context before the wakee is queued, so the wakee
//!   cannot switch in meanwhile; stores the wakeup time in the wakee's entry and, with
//!   `--wakers`, the waker's stacks;
//! - `sched_process_fork` (process targets): children of a target process become targets.
//!
//! Some context switches fire no `sched_switch` at all (on the 6.18 development VM: every
//! switch away from one thread of its init process, and every switch away from the idle
//! task on CPU 1 — perf's own switch-out records are missing for them too, while its
//! switch-in records are there). The task switching in then keeps its interval open; its
//! next switch-out finds it. That interval ended at a switch-in between its last wakeup and
//! now. Where the kernel's BTF says where a task's CPU time is (`se.sum_exec_runtime`),
//! the entry keeps the CPU time at the switch-out, and the switch-in is found exactly: the
//! thread has run since for the CPU time it gained, so it switched in that long before now.
//! Without BTF the interval is closed at its last wakeup (the switch-in follows it by the
//! run-queue wait), or, with no wakeup seen, dropped and counted as unpaired.
//!
//! The switch program does nothing until userspace arms it (the gate map), so a system-wide
//! profile starts when the session does, and stops counting at its stop.
//!
//! Every program returns 1, so perf events other tools opened on the same tracepoint keep
//! receiving their samples (0 would suppress them system-wide).
//!
//! Stack ids that cannot be recorded, and intervals the count map cannot take, go to the
//! ring through `bpf_perf_event_output` (see [`super::layout::spill`]).

use crate::bpf::emit::{failure, frame_ptr, Counters};
use crate::bpf::helpers::{self, F_CURRENT_CPU, F_USER_STACK};
use crate::bpf::insn::{alu, jmp, size, Asm, AsmError, Insn, Label, Reg, FP};
use crate::bpf::stack_gens::StackGenFds;
use crate::bpf::sys;

use super::layout::{entry, flags, spill, KEY_SIZE, NO_WAKER};
use super::slot;

/// Where the tracepoint fields are (offsets into the RAW record, from the format files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SwitchFields {
    /// `prev_pid` (4 bytes).
    pub prev_pid: i16,
    /// `prev_state` offset.
    pub prev_state: i16,
    /// `prev_state` size (4 or 8).
    pub prev_state_size: u8,
    /// `next_pid` (4 bytes).
    pub next_pid: i16,
}

/// Which tasks are profiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Every task but psample and the idle tasks.
    All,
    /// Tasks whose process id is a key of the targets map.
    Processes,
    /// Tasks whose thread id is a key of the targets map.
    Threads,
}

/// Map fds the programs refer to.
#[derive(Debug, Clone, Copy)]
pub struct Maps {
    /// tid → open interval (the start entry).
    pub start: i32,
    /// Count key → (blocked ns, intervals).
    pub counts: i32,
    /// Profiled process or thread ids.
    pub targets: i32,
    /// `prev_state` → [`accept`] decision.
    pub states: i32,
    /// The counter slots.
    pub counters: i32,
    /// Per-CPU scratch value for spilled stack records.
    pub scratch: i32,
    /// Per-CPU bpf-output events for spilled records.
    pub spill: i32,
    /// One u64: non-zero while the switch program is armed.
    pub gate: i32,
    /// The stack generations.
    pub stacks: StackGenFds,
}

/// What is baked into the programs as immediates.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Which tasks are profiled.
    pub filter: Filter,
    /// psample's own process (never profiled).
    pub own_tgid: u32,
    /// Shortest interval counted (`-m`), ns.
    pub min_ns: u64,
    /// Longest interval counted (`-M`), ns.
    pub max_ns: Option<u64>,
    /// Accept decision for `prev_state` values beyond the state table.
    pub unknown_state: u32,
    /// Record user stacks.
    pub user_stacks: bool,
    /// Record kernel stacks.
    pub kernel_stacks: bool,
    /// The waking program records the waker's stacks (`--wakers`), not only the time.
    pub wakers: bool,
    /// Offset of `se.sum_exec_runtime` in `task_struct` (from BTF), to date switch-ins
    /// that fired no `sched_switch`.
    pub runtime_off: Option<i32>,
}

/// `prev_state` values the state array covers; larger ones get `Config::unknown_state`.
pub const STATE_TABLE_SIZE: u32 = 4096;
/// State array values.
pub mod accept {
    /// Not blocked (a preemption, by default): no interval.
    pub const NO: u32 = 0;
    /// Opens an interval.
    pub const YES: u32 = 1;
    /// The task's final switch-out.
    pub const DEAD: u32 = 2;
}

// The switch program's frame (offsets from r10).
const ENTRY_OFF: i16 = -(entry::SIZE as i16); // -120: the entry built at switch-out
const IREC_OFF: i16 = ENTRY_OFF - spill::INTERVAL_SIZE as i16; // -224: interval record
const VAL_OFF: i16 = IREC_OFF - 16; // -240: count value to insert
const TID_OFF: i16 = VAL_OFF - 8; // -248: u32 tid key
const SLOT_OFF: i16 = TID_OFF - 4; // -252: counter key
const ZERO_OFF: i16 = SLOT_OFF - 4; // -256: u32 0 (array keys)

fn counters(maps: &Maps) -> Counters {
    Counters {
        fd: maps.counters,
        key_off: SLOT_OFF,
    }
}

/// Emit: spill both stacks of the current task to the ring under a fresh sequence number,
/// left in r9 (0 when the scratch buffer was unavailable). `aux_off` holds the u32 tgid and
/// tid for the record. Needs the context in r6; clobbers r0–r5, r8.
fn emit_spill_stacks(a: &mut Asm, maps: &Maps, aux_off: i16) {
    let c = counters(maps);
    let no_buffer = a.new_label();
    let done = a.new_label();
    a.store_imm(size::W, FP, ZERO_OFF, 0)
        .ld_map_fd(Reg::R1, maps.scratch);
    frame_ptr(a, Reg::R2, ZERO_OFF);
    a.call(helpers::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, no_buffer)
        .mov64_reg(Reg::R8, Reg::R0)
        // seq = cpu << 48 | ++per-CPU counter (kept past the record in the scratch value).
        .load(size::DW, Reg::R9, Reg::R8, SCRATCH_SEQ)
        .alu64_imm(alu::ADD, Reg::R9, 1)
        .store_reg(size::DW, Reg::R8, SCRATCH_SEQ, Reg::R9)
        .call(helpers::GET_SMP_PROCESSOR_ID)
        .alu64_imm(alu::LSH, Reg::R0, 48)
        .alu64_reg(alu::OR, Reg::R9, Reg::R0)
        .store_imm(size::W, Reg::R8, 0, spill::STACKS as i32)
        .store_reg(size::DW, Reg::R8, 8, Reg::R9)
        .load(size::W, Reg::R1, FP, aux_off)
        .store_reg(size::W, Reg::R8, 16, Reg::R1)
        .load(size::W, Reg::R1, FP, aux_off + 4)
        .store_reg(size::W, Reg::R8, 20, Reg::R1);
    // The kernel stack at STACKS_IPS, the user stack right after it: only the bytes they
    // take go to the ring. Lengths are re-checked after each load so the verifier knows
    // their bounds (get_stack returns at most the size it was given).
    let max = spill::MAX_STACK_BYTES as i32;
    a.mov64_reg(Reg::R1, Reg::R6)
        .mov64_reg(Reg::R2, Reg::R8)
        .alu64_imm(alu::ADD, Reg::R2, spill::STACKS_IPS as i32)
        .mov64_imm(Reg::R3, max)
        .mov64_imm(Reg::R4, 0)
        .call(helpers::GET_STACK);
    emit_store_len(a, 24);
    a.load(size::W, Reg::R1, Reg::R8, 24)
        .jmp_imm(jmp::JGT, Reg::R1, max, no_buffer)
        .mov64_reg(Reg::R2, Reg::R8)
        .alu64_reg(alu::ADD, Reg::R2, Reg::R1)
        .alu64_imm(alu::ADD, Reg::R2, spill::STACKS_IPS as i32)
        .mov64_reg(Reg::R1, Reg::R6)
        .mov64_imm(Reg::R3, max)
        .mov64_imm(Reg::R4, F_USER_STACK)
        .call(helpers::GET_STACK);
    emit_store_len(a, 4);
    a.load(size::W, Reg::R5, Reg::R8, 24)
        .jmp_imm(jmp::JGT, Reg::R5, max, no_buffer)
        .load(size::W, Reg::R1, Reg::R8, 4)
        .jmp_imm(jmp::JGT, Reg::R1, max, no_buffer)
        .alu64_reg(alu::ADD, Reg::R5, Reg::R1)
        .alu64_imm(alu::ADD, Reg::R5, spill::STACKS_IPS as i32);
    a.mov64_reg(Reg::R1, Reg::R6)
        .ld_map_fd(Reg::R2, maps.spill)
        .ld_imm64(Reg::R3, F_CURRENT_CPU)
        .mov64_reg(Reg::R4, Reg::R8)
        .call(helpers::PERF_EVENT_OUTPUT)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, done);
    c.bump(a, slot::SPILL_FAILED);
    a.ja(done);
    a.bind(no_buffer);
    c.bump(a, slot::SPILL_FAILED);
    a.mov64_imm(Reg::R9, 0);
    a.bind(done);
}

/// Emit: `[r8 + at]` = r0 as a stack length in bytes (a negative errno: 0).
fn emit_store_len(a: &mut Asm, at: i16) {
    let ok = a.new_label();
    a.jmp_imm(jmp::JSGE, Reg::R0, 0, ok).mov64_imm(Reg::R0, 0);
    a.bind(ok);
    a.store_reg(size::W, Reg::R8, at, Reg::R0);
}

/// Offset of the per-CPU sequence counter in the scratch value (after a stacks record).
pub const SCRATCH_SEQ: i16 = spill::STACKS_SIZE as i16;
/// Bytes of the scratch value.
pub const SCRATCH_SIZE: u32 = spill::STACKS_SIZE as u32 + 8;

/// Emit: both stack ids of the current task into `[base + uoff]`, `[base + koff]` (base is
/// FP or a map-value pointer), with the epoch reloaded from `[base + eoff]` before each
/// call. Sets r9 = 1 when a stack that exists could not be recorded. Clobbers r0–r5, r8.
fn emit_stack_ids(a: &mut Asm, maps: &Maps, cfg: &Config, base: Reg, offs: (i16, i16, i16)) {
    let c = counters(maps);
    let (uoff, koff, eoff) = offs;
    a.mov64_imm(Reg::R9, 0);
    for (wanted, flags, off, side) in [
        (cfg.user_stacks, F_USER_STACK, uoff, slot::USER),
        (cfg.kernel_stacks, 0, koff, slot::KERNEL),
    ] {
        if !wanted {
            a.store_imm(size::W, base, off, -(nix::errno::Errno::EFAULT as i32));
            continue;
        }
        let ok = a.new_label();
        a.load(size::W, Reg::R8, base, eoff);
        maps.stacks.emit_get_stackid(a, Reg::R6, Reg::R8, flags);
        a.store_reg(size::W, base, off, Reg::R0)
            .jmp_imm(jmp::JSGE, Reg::R0, 0, ok);
        c.bump_failure(a, side, Reg::R8);
        // EFAULT: there is no such stack (a kernel thread has no user stack).
        a.jmp_imm(jmp::JEQ, Reg::R8, (side + failure::NO_STACK) as i32, ok)
            .mov64_imm(Reg::R9, 1);
        a.bind(ok);
    }
}

/// Emit the switch-in half: close the interval of `next_pid`, if it has one.
fn emit_switch_in(a: &mut Asm, f: &SwitchFields, maps: &Maps, cfg: &Config) {
    let done = a.new_label();
    a.load(size::W, Reg::R1, Reg::R6, f.next_pid)
        .jmp_imm(jmp::JEQ, Reg::R1, 0, done)
        .store_reg(size::W, FP, TID_OFF, Reg::R1)
        .ld_map_fd(Reg::R1, maps.start);
    frame_ptr(a, Reg::R2, TID_OFF);
    a.call(helpers::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, done)
        .mov64_reg(Reg::R8, Reg::R0)
        .mov64_reg(Reg::R9, Reg::R7);
    emit_close(a, maps, cfg);
    a.bind(done);
}

/// Emit: close the interval of the entry at r8 (whose tid is at `[TID_OFF]`) at time r9:
/// add it to the count map, or spill it, unless `-m`/`-M` filter it; then delete the entry.
/// Clobbers r0–r5, r9.
fn emit_close(a: &mut Asm, maps: &Maps, cfg: &Config) {
    let c = counters(maps);
    let filtered = a.new_label();
    let remove = a.new_label();
    let output = a.new_label();
    let positive = a.new_label();
    a.load(size::DW, Reg::R1, Reg::R8, entry::TS)
        .alu64_reg(alu::SUB, Reg::R9, Reg::R1)
        .jmp_imm(jmp::JSGE, Reg::R9, 0, positive)
        .mov64_imm(Reg::R9, 0);
    a.bind(positive);
    if cfg.min_ns > 0 {
        a.ld_imm64(Reg::R1, cfg.min_ns)
            .jmp_reg(jmp::JGT, Reg::R1, Reg::R9, filtered);
    }
    if let Some(max) = cfg.max_ns {
        a.ld_imm64(Reg::R1, max)
            .jmp_reg(jmp::JGT, Reg::R9, Reg::R1, filtered);
    }
    // The interval record on the stack; its key part is the count key.
    let key = IREC_OFF + spill::INTERVAL_KEY as i16;
    for i in (0..KEY_SIZE as i16).step_by(8) {
        a.load(size::DW, Reg::R1, Reg::R8, i)
            .store_reg(size::DW, FP, key + i, Reg::R1);
    }
    for (from, to) in [(entry::BLOCKED_SEQ, 88), (entry::WAKER_SEQ, 96)] {
        a.load(size::DW, Reg::R1, Reg::R8, from)
            .store_reg(size::DW, FP, IREC_OFF + to, Reg::R1);
    }
    a.store_imm(size::W, FP, IREC_OFF, spill::INTERVAL as i32)
        .load(size::W, Reg::R1, Reg::R8, entry::FLAGS)
        .store_reg(size::W, FP, IREC_OFF + 4, Reg::R1)
        .store_reg(size::DW, FP, IREC_OFF + 8, Reg::R9)
        .jmp_imm(
            jmp::JSET,
            Reg::R1,
            (flags::SPILL_BLOCKED | flags::SPILL_WAKER) as i32,
            output,
        );
    emit_count(a, maps, key, remove, output);
    a.bind(output);
    c.bump(a, slot::SPILLED_INTERVALS);
    a.mov64_reg(Reg::R1, Reg::R6)
        .ld_map_fd(Reg::R2, maps.spill)
        .ld_imm64(Reg::R3, F_CURRENT_CPU);
    frame_ptr(a, Reg::R4, IREC_OFF);
    a.mov64_imm(Reg::R5, spill::INTERVAL_SIZE as i32)
        .call(helpers::PERF_EVENT_OUTPUT)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, remove);
    c.bump(a, slot::SPILL_FAILED);
    if cfg.min_ns > 0 || cfg.max_ns.is_some() {
        // Emitted only when something jumps here: the verifier refuses unreachable code.
        a.ja(remove);
        a.bind(filtered);
        c.bump(a, slot::FILTERED);
    }
    a.bind(remove);
    a.ld_map_fd(Reg::R1, maps.start);
    frame_ptr(a, Reg::R2, TID_OFF);
    a.call(helpers::MAP_DELETE_ELEM);
}

/// Emit: add (r9 ns, 1 interval) to the count of the key at `key_off`; on success go to
/// `counted`, when the map cannot take it to `spill`.
fn emit_count(a: &mut Asm, maps: &Maps, key_off: i16, counted: Label, spill: Label) {
    let c = counters(maps);
    let insert = a.new_label();
    let add = a.new_label();
    let full = a.new_label();
    a.ld_map_fd(Reg::R1, maps.counts);
    frame_ptr(a, Reg::R2, key_off);
    a.call(helpers::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, insert);
    a.bind(add);
    a.atomic_add(size::DW, Reg::R0, 0, Reg::R9)
        .mov64_imm(Reg::R1, 1)
        .atomic_add(size::DW, Reg::R0, 8, Reg::R1)
        .ja(counted);
    a.bind(insert);
    a.store_reg(size::DW, FP, VAL_OFF, Reg::R9)
        .store_imm(size::DW, FP, VAL_OFF + 8, 1)
        .ld_map_fd(Reg::R1, maps.counts);
    frame_ptr(a, Reg::R2, key_off);
    frame_ptr(a, Reg::R3, VAL_OFF);
    a.mov64_imm(Reg::R4, sys::update::NOEXIST as i32)
        .call(helpers::MAP_UPDATE_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, counted)
        .jmp_imm(jmp::JNE, Reg::R0, -(nix::errno::Errno::EEXIST as i32), full)
        // Another CPU inserted the same key between our lookup and insert: add to theirs.
        .ld_map_fd(Reg::R1, maps.counts);
    frame_ptr(a, Reg::R2, key_off);
    a.call(helpers::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JNE, Reg::R0, 0, add);
    a.bind(full);
    c.bump(a, slot::COUNT_MAP_FULL);
    a.ja(spill);
}

/// Emit: go to `skip` when the current task is not profiled (idle, psample, not a
/// target). Leaves its tgid and tid in the entry being built, and the tid in `[TID_OFF]`.
fn emit_switch_out_filter(a: &mut Asm, f: &SwitchFields, maps: &Maps, cfg: &Config, skip: Label) {
    a.load(size::W, Reg::R1, Reg::R6, f.prev_pid)
        .jmp_imm(jmp::JEQ, Reg::R1, 0, skip)
        .store_reg(size::W, FP, TID_OFF, Reg::R1)
        .store_reg(size::W, FP, ENTRY_OFF + entry::TID, Reg::R1)
        .call(helpers::GET_CURRENT_PID_TGID)
        .alu64_imm(alu::RSH, Reg::R0, 32)
        .store_reg(size::W, FP, ENTRY_OFF + entry::TGID, Reg::R0)
        .jmp_imm(jmp::JEQ, Reg::R0, cfg.own_tgid as i32, skip);
    let key = match cfg.filter {
        Filter::All => return,
        Filter::Processes => ENTRY_OFF + entry::TGID,
        Filter::Threads => TID_OFF,
    };
    a.ld_map_fd(Reg::R1, maps.targets);
    frame_ptr(a, Reg::R2, key);
    a.call(helpers::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, skip);
}

/// Emit: r9 = the state array's decision for `prev_state`, also stored in the entry.
fn emit_state(a: &mut Asm, f: &SwitchFields, maps: &Maps, cfg: &Config) {
    let big = a.new_label();
    let done = a.new_label();
    let sz = if f.prev_state_size == 8 {
        size::DW
    } else {
        size::W
    };
    a.load(sz, Reg::R1, Reg::R6, f.prev_state)
        .store_reg(size::W, FP, ENTRY_OFF + entry::STATE, Reg::R1)
        .jmp_imm(jmp::JGT, Reg::R1, STATE_TABLE_SIZE as i32 - 1, big)
        .store_reg(size::W, FP, SLOT_OFF, Reg::R1)
        .ld_map_fd(Reg::R1, maps.states);
    frame_ptr(a, Reg::R2, SLOT_OFF);
    a.call(helpers::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, big)
        .load(size::W, Reg::R9, Reg::R0, 0)
        .ja(done);
    a.bind(big);
    a.mov64_imm(Reg::R9, cfg.unknown_state as i32);
    a.bind(done);
}

/// Emit: an entry still open at a switch-out means its switch-in fired no `sched_switch`
/// (or, for a thread found blocked at start, that it was running after all). Close it at
/// the switch-in its CPU time dates, else at its last wakeup, else drop it. Keeps r9 (the
/// state decision).
fn emit_stale(a: &mut Asm, maps: &Maps, cfg: &Config) {
    let c = counters(maps);
    let none = a.new_label();
    let not_woken = a.new_label();
    let unconfirmed = a.new_label();
    let delete = a.new_label();
    // The state decision moves to the stack while r9 holds the interval's end.
    a.store_reg(size::W, FP, ENTRY_OFF + entry::FLAGS, Reg::R9)
        .ld_map_fd(Reg::R1, maps.start);
    frame_ptr(a, Reg::R2, TID_OFF);
    a.call(helpers::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, none)
        .mov64_reg(Reg::R8, Reg::R0);
    if let Some(off) = cfg.runtime_off {
        let no_runtime = a.new_label();
        emit_switch_in_from_runtime(a, off, no_runtime);
        c.bump(a, slot::ENDED_BY_RUNTIME);
        emit_close(a, maps, cfg);
        a.ja(none);
        a.bind(no_runtime);
    }
    a.load(size::DW, Reg::R9, Reg::R8, entry::WOKEN)
        .jmp_imm(jmp::JEQ, Reg::R9, 0, not_woken);
    c.bump(a, slot::ENDED_AT_WAKEUP);
    emit_close(a, maps, cfg);
    a.ja(none);
    a.bind(not_woken);
    a.load(size::W, Reg::R1, Reg::R8, entry::FLAGS).jmp_imm(
        jmp::JSET,
        Reg::R1,
        flags::AT_START as i32,
        unconfirmed,
    );
    c.bump(a, slot::UNPAIRED);
    a.ja(delete);
    a.bind(unconfirmed);
    c.bump(a, slot::START_UNCONFIRMED);
    a.bind(delete);
    a.ld_map_fd(Reg::R1, maps.start);
    frame_ptr(a, Reg::R2, TID_OFF);
    a.call(helpers::MAP_DELETE_ELEM);
    a.bind(none);
    a.load(size::W, Reg::R9, FP, ENTRY_OFF + entry::FLAGS);
}

/// Emit: r1 = the current task's `se.sum_exec_runtime` (`off` into `task_struct`), read
/// into `[VAL_OFF]`; go to `fail` when the read fails. Clobbers r0–r5.
fn emit_read_runtime(a: &mut Asm, off: i32, fail: Label) {
    a.call(helpers::GET_CURRENT_TASK)
        .mov64_reg(Reg::R3, Reg::R0)
        .alu64_imm(alu::ADD, Reg::R3, off);
    frame_ptr(a, Reg::R1, VAL_OFF);
    a.mov64_imm(Reg::R2, 8)
        .call(helpers::PROBE_READ)
        .jmp_imm(jmp::JNE, Reg::R0, 0, fail)
        .load(size::DW, Reg::R1, FP, VAL_OFF);
}

/// Emit: r9 = when the thread of the stale entry at r8 switched in: now (r7) less the CPU
/// time it gained since the entry opened. Go to `fail` when that is unknown, or not after
/// the switch-out (a thread found blocked at start that was running after all).
fn emit_switch_in_from_runtime(a: &mut Asm, off: i32, fail: Label) {
    emit_read_runtime(a, off, fail);
    a.load(size::DW, Reg::R2, Reg::R8, entry::RUNTIME)
        .jmp_imm(jmp::JEQ, Reg::R2, 0, fail)
        .alu64_reg(alu::SUB, Reg::R1, Reg::R2)
        .mov64_imm(Reg::R3, 0)
        .jmp_reg(jmp::JSGT, Reg::R3, Reg::R1, fail)
        .mov64_reg(Reg::R9, Reg::R7)
        .alu64_reg(alu::SUB, Reg::R9, Reg::R1)
        .load(size::DW, Reg::R2, Reg::R8, entry::TS)
        .jmp_reg(jmp::JSGE, Reg::R2, Reg::R9, fail);
}

/// Emit the switch-out half: open an interval for the current task.
fn emit_switch_out(a: &mut Asm, f: &SwitchFields, maps: &Maps, cfg: &Config) {
    let c = counters(maps);
    let done = a.new_label();
    emit_switch_out_filter(a, f, maps, cfg, done);
    emit_state(a, f, maps, cfg);
    emit_stale(a, maps, cfg);
    let open = a.new_label();
    a.jmp_imm(jmp::JEQ, Reg::R9, accept::YES as i32, open)
        .jmp_imm(jmp::JEQ, Reg::R9, accept::DEAD as i32, done);
    c.bump(a, slot::NOT_BLOCKED);
    a.ja(done);

    a.bind(open);
    a.store_reg(size::DW, FP, ENTRY_OFF + entry::TS, Reg::R7)
        .store_imm(size::DW, FP, ENTRY_OFF + entry::FLAGS, 0)
        .store_imm(size::DW, FP, ENTRY_OFF + entry::BLOCKED_SEQ, 0)
        .store_imm(size::DW, FP, ENTRY_OFF + entry::WAKER_SEQ, 0)
        .store_imm(size::DW, FP, ENTRY_OFF + entry::WOKEN, 0)
        .store_imm(size::DW, FP, ENTRY_OFF + entry::RUNTIME, 0);
    if let Some(off) = cfg.runtime_off {
        let unknown = a.new_label();
        emit_read_runtime(a, off, unknown);
        a.store_reg(size::DW, FP, ENTRY_OFF + entry::RUNTIME, Reg::R1);
        a.bind(unknown);
    }
    for off in (entry::WAKER_TGID..entry::TS).step_by(8) {
        a.store_imm(size::DW, FP, ENTRY_OFF + off, 0);
    }
    a.store_imm(size::W, FP, ENTRY_OFF + entry::WAKER_USTACK, NO_WAKER)
        .store_imm(size::W, FP, ENTRY_OFF + entry::WAKER_KSTACK, NO_WAKER);
    frame_ptr(a, Reg::R1, ENTRY_OFF + entry::COMM);
    a.mov64_imm(Reg::R2, 16).call(helpers::GET_CURRENT_COMM);
    maps.stacks.emit_load_epoch(a, Reg::R8, ZERO_OFF);
    a.store_reg(size::W, FP, ENTRY_OFF + entry::EPOCH, Reg::R8);
    emit_stack_ids(
        a,
        maps,
        cfg,
        FP,
        (
            ENTRY_OFF + entry::USTACK,
            ENTRY_OFF + entry::KSTACK,
            ENTRY_OFF + entry::EPOCH,
        ),
    );
    let insert = a.new_label();
    a.jmp_imm(jmp::JEQ, Reg::R9, 0, insert);
    emit_spill_stacks(a, maps, ENTRY_OFF);
    a.store_reg(size::DW, FP, ENTRY_OFF + entry::BLOCKED_SEQ, Reg::R9)
        .store_imm(
            size::W,
            FP,
            ENTRY_OFF + entry::FLAGS,
            flags::SPILL_BLOCKED as i32,
        );
    a.bind(insert);
    a.ld_map_fd(Reg::R1, maps.start);
    frame_ptr(a, Reg::R2, TID_OFF);
    frame_ptr(a, Reg::R3, ENTRY_OFF);
    a.mov64_imm(Reg::R4, sys::update::ANY as i32)
        .call(helpers::MAP_UPDATE_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, done);
    c.bump(a, slot::START_MAP_FULL);
    a.bind(done);
}

/// The `sched_switch` program.
pub fn switch_program(f: &SwitchFields, maps: &Maps, cfg: &Config) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    let out = a.new_label();
    a.mov64_reg(Reg::R6, Reg::R1)
        .store_imm(size::W, FP, ZERO_OFF, 0)
        .ld_map_fd(Reg::R1, maps.gate);
    frame_ptr(&mut a, Reg::R2, ZERO_OFF);
    a.call(helpers::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, out)
        .load(size::DW, Reg::R1, Reg::R0, 0)
        .jmp_imm(jmp::JEQ, Reg::R1, 0, out)
        .call(helpers::KTIME_GET_NS)
        .mov64_reg(Reg::R7, Reg::R0);
    emit_switch_in(&mut a, f, maps, cfg);
    emit_switch_out(&mut a, f, maps, cfg);
    a.bind(out);
    a.mov64_imm(Reg::R0, 1).exit();
    a.finish()
}

// The waking program's frame (counters and the epoch lookup use the switch program's
// slots, which are free here).
const W_TID_OFF: i16 = -8;
const W_AUX_OFF: i16 = -16;

/// The `sched_waking` program. `pid_off` is the wakee's `pid` field.
pub fn waking_program(pid_off: i16, maps: &Maps, cfg: &Config) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    let done = a.new_label();
    a.mov64_reg(Reg::R6, Reg::R1)
        .load(size::W, Reg::R1, Reg::R6, pid_off)
        .jmp_imm(jmp::JEQ, Reg::R1, 0, done)
        .store_reg(size::W, FP, W_TID_OFF, Reg::R1)
        .ld_map_fd(Reg::R1, maps.start);
    frame_ptr(&mut a, Reg::R2, W_TID_OFF);
    a.call(helpers::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, done)
        .mov64_reg(Reg::R7, Reg::R0)
        .call(helpers::KTIME_GET_NS)
        .store_reg(size::DW, Reg::R7, entry::WOKEN, Reg::R0);
    if cfg.wakers {
        emit_waker(&mut a, maps, cfg, done);
    }
    a.bind(done);
    a.mov64_imm(Reg::R0, 1).exit();
    a.finish()
}

/// Emit: the waker's comm, process and stacks into the wakee's entry at r7.
fn emit_waker(a: &mut Asm, maps: &Maps, cfg: &Config, done: Label) {
    a.call(helpers::GET_CURRENT_PID_TGID)
        .store_reg(size::W, FP, W_AUX_OFF + 4, Reg::R0)
        .alu64_imm(alu::RSH, Reg::R0, 32)
        .store_reg(size::W, FP, W_AUX_OFF, Reg::R0)
        .store_reg(size::W, Reg::R7, entry::WAKER_TGID, Reg::R0)
        .mov64_reg(Reg::R1, Reg::R7)
        .alu64_imm(alu::ADD, Reg::R1, i32::from(entry::WAKER_COMM))
        .mov64_imm(Reg::R2, 16)
        .call(helpers::GET_CURRENT_COMM);
    maps.stacks.emit_load_epoch(a, Reg::R8, ZERO_OFF);
    a.store_reg(size::W, Reg::R7, entry::WAKER_EPOCH, Reg::R8);
    emit_stack_ids(
        a,
        maps,
        cfg,
        Reg::R7,
        (entry::WAKER_USTACK, entry::WAKER_KSTACK, entry::WAKER_EPOCH),
    );
    let clear = a.new_label();
    a.jmp_imm(jmp::JEQ, Reg::R9, 0, clear);
    emit_spill_stacks(a, maps, W_AUX_OFF);
    a.store_reg(size::DW, Reg::R7, entry::WAKER_SEQ, Reg::R9)
        .load(size::W, Reg::R1, Reg::R7, entry::FLAGS)
        .alu64_imm(alu::OR, Reg::R1, flags::SPILL_WAKER as i32)
        .store_reg(size::W, Reg::R7, entry::FLAGS, Reg::R1)
        .ja(done);
    // A later wakeup that recorded its stacks replaces an earlier spilled one.
    a.bind(clear);
    a.load(size::W, Reg::R1, Reg::R7, entry::FLAGS)
        .alu64_imm(alu::AND, Reg::R1, !(flags::SPILL_WAKER as i32))
        .store_reg(size::W, Reg::R7, entry::FLAGS, Reg::R1);
}

// The fork program's frame.
const F_PARENT_OFF: i16 = -4;
const F_CHILD_OFF: i16 = -8;
const F_ONE_OFF: i16 = -12;

/// The `sched_process_fork` program for process targets: a child of a target is a target.
/// `child_pid_off` is the format's `child_pid` field.
pub fn fork_program(child_pid_off: i16, maps: &Maps) -> Result<Vec<Insn>, AsmError> {
    let mut a = Asm::new();
    let done = a.new_label();
    a.mov64_reg(Reg::R6, Reg::R1)
        .call(helpers::GET_CURRENT_PID_TGID)
        .alu64_imm(alu::RSH, Reg::R0, 32)
        .store_reg(size::W, FP, F_PARENT_OFF, Reg::R0)
        .ld_map_fd(Reg::R1, maps.targets);
    frame_ptr(&mut a, Reg::R2, F_PARENT_OFF);
    a.call(helpers::MAP_LOOKUP_ELEM)
        .jmp_imm(jmp::JEQ, Reg::R0, 0, done)
        .load(size::W, Reg::R1, Reg::R6, child_pid_off)
        .store_reg(size::W, FP, F_CHILD_OFF, Reg::R1)
        .store_imm(size::W, FP, F_ONE_OFF, 1)
        .ld_map_fd(Reg::R1, maps.targets);
    frame_ptr(&mut a, Reg::R2, F_CHILD_OFF);
    frame_ptr(&mut a, Reg::R3, F_ONE_OFF);
    a.mov64_imm(Reg::R4, sys::update::ANY as i32)
        .call(helpers::MAP_UPDATE_ELEM);
    a.bind(done);
    a.mov64_imm(Reg::R0, 1).exit();
    a.finish()
}

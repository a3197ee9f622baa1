//! Instruction sequences shared by psample's programs: counters, stack-id failure
//! classification, pointers into the program's stack frame.

use nix::errno::Errno;

use super::helpers;
use super::insn::{alu, jmp, size, Asm, Reg, FP};

/// Per-side failure slots of a counter array, relative to the side's base slot: EEXIST (the
/// bucket held another stack, a hash collision), ENOMEM (stack map full), EFAULT (no stack
/// of that kind: a user-mode sample has no kernel stack, a kernel thread no user stack),
/// anything else.
pub mod failure {
    /// -EEXIST.
    pub const COLLISION: u32 = 0;
    /// -ENOMEM.
    pub const STACK_MAP_FULL: u32 = 1;
    /// -EFAULT: expected, not a loss.
    pub const NO_STACK: u32 = 2;
    /// Anything else.
    pub const OTHER: u32 = 3;
}

/// A counter array (`u32` index → `u64` count) and a free 4-byte slot of the program's
/// stack frame to build its keys in.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    /// The array's fd.
    pub fd: i32,
    /// Frame offset of the scratch key.
    pub key_off: i16,
}

impl Counters {
    /// Emit: add 1 to the slot held in `slot_reg` (r6–r9; r0–r5 are clobbered).
    pub fn bump_reg(&self, a: &mut Asm, slot_reg: Reg) {
        a.store_reg(size::W, FP, self.key_off, slot_reg);
        self.add_one_at_key(a);
    }

    /// Emit: add 1 to slot `slot` (r0–r5 are clobbered).
    pub fn bump(&self, a: &mut Asm, slot: u32) {
        a.store_imm(size::W, FP, self.key_off, slot as i32);
        self.add_one_at_key(a);
    }

    fn add_one_at_key(&self, a: &mut Asm) {
        let skip = a.new_label();
        a.ld_map_fd(Reg::R1, self.fd)
            .mov64_reg(Reg::R2, FP)
            .alu64_imm(alu::ADD, Reg::R2, i32::from(self.key_off))
            .call(helpers::MAP_LOOKUP_ELEM)
            .jmp_imm(jmp::JEQ, Reg::R0, 0, skip)
            .mov64_imm(Reg::R1, 1)
            .atomic_add(size::DW, Reg::R0, 0, Reg::R1);
        a.bind(skip);
    }

    /// Emit: classify the negative errno of `bpf_get_stackid` in r0 and bump the matching
    /// [`failure`] slot of the side starting at `side`. Leaves the slot in `slot_reg`
    /// (r6–r9), so the caller can tell an expected EFAULT from a loss.
    pub fn bump_failure(&self, a: &mut Asm, side: u32, slot_reg: Reg) {
        let bump = a.new_label();
        let not_eexist = a.new_label();
        let not_enomem = a.new_label();
        let slot = |s: u32| (side + s) as i32;
        a.mov64_imm(slot_reg, slot(failure::OTHER))
            .jmp_imm(jmp::JNE, Reg::R0, -(Errno::EEXIST as i32), not_eexist)
            .mov64_imm(slot_reg, slot(failure::COLLISION))
            .ja(bump);
        a.bind(not_eexist);
        a.jmp_imm(jmp::JNE, Reg::R0, -(Errno::ENOMEM as i32), not_enomem)
            .mov64_imm(slot_reg, slot(failure::STACK_MAP_FULL))
            .ja(bump);
        a.bind(not_enomem);
        a.jmp_imm(jmp::JNE, Reg::R0, -(Errno::EFAULT as i32), bump)
            .mov64_imm(slot_reg, slot(failure::NO_STACK));
        a.bind(bump);
        self.bump_reg(a, slot_reg);
    }
}

/// Emit: `reg = r10 + off`, a pointer into the program's stack frame.
pub fn frame_ptr(a: &mut Asm, reg: Reg, off: i16) {
    a.mov64_reg(reg, FP)
        .alu64_imm(alu::ADD, reg, i32::from(off));
}

/// Emit: atomically add `src` to the u64 at `ptr + off`.
pub fn atomic_add(a: &mut Asm, ptr: Reg, off: i16, src: Reg) {
    a.atomic_add(size::DW, ptr, off, src);
}

//! A small eBPF assembler: instruction encoding plus forward/backward labels.
//!
//! Only the instruction forms that every eBPF-capable kernel (3.18+) understands are
//! offered — no JMP32 (5.1), no BPF-to-BPF calls (4.16), no JLT/JSLT (4.14) — so a program
//! built here verifies on the oldest kernels that have `BPF_PROG_TYPE_PERF_EVENT`.
//!
//! Encoding follows `struct bpf_insn` from include/uapi/linux/bpf.h: `u8 code`,
//! `u8 dst_reg:4, src_reg:4` (dst in the low nibble on little-endian), `s16 off`, `s32 imm`.

use std::fmt;

/// Instruction classes (low three bits of `code`).
pub mod class {
    /// BPF_LD: loads (only `ld_imm64` is used).
    pub const LD: u8 = 0x00;
    /// BPF_LDX: load from memory into a register.
    pub const LDX: u8 = 0x01;
    /// BPF_ST: store an immediate.
    pub const ST: u8 = 0x02;
    /// BPF_STX: store a register.
    pub const STX: u8 = 0x03;
    /// BPF_ALU: 32-bit arithmetic.
    pub const ALU: u8 = 0x04;
    /// BPF_JMP: jumps, calls, exit.
    pub const JMP: u8 = 0x05;
    /// BPF_ALU64: 64-bit arithmetic.
    pub const ALU64: u8 = 0x07;
}

/// Memory access sizes.
pub mod size {
    /// BPF_W: 4 bytes.
    pub const W: u8 = 0x00;
    /// BPF_H: 2 bytes.
    pub const H: u8 = 0x08;
    /// BPF_B: 1 byte.
    pub const B: u8 = 0x10;
    /// BPF_DW: 8 bytes.
    pub const DW: u8 = 0x18;
}

/// Memory access modes.
pub mod mode {
    /// BPF_IMM: an immediate (`ld_imm64`).
    pub const IMM: u8 = 0x00;
    /// BPF_MEM: memory at register + offset.
    pub const MEM: u8 = 0x60;
    /// Atomic read-modify-write (was `BPF_XADD`; the `imm` selects the operation).
    pub const ATOMIC: u8 = 0xc0;
}

/// Operand source: immediate (`K`) or register (`X`).
pub mod src {
    /// BPF_K: the immediate.
    pub const K: u8 = 0x00;
    /// BPF_X: the source register.
    pub const X: u8 = 0x08;
}

/// ALU operations (high four bits of `code`).
pub mod alu {
    /// BPF_ADD.
    pub const ADD: u8 = 0x00;
    /// BPF_SUB.
    pub const SUB: u8 = 0x10;
    /// BPF_MUL.
    pub const MUL: u8 = 0x20;
    /// BPF_DIV.
    pub const DIV: u8 = 0x30;
    /// BPF_OR.
    pub const OR: u8 = 0x40;
    /// BPF_AND.
    pub const AND: u8 = 0x50;
    /// BPF_LSH.
    pub const LSH: u8 = 0x60;
    /// BPF_RSH.
    pub const RSH: u8 = 0x70;
    /// BPF_NEG.
    pub const NEG: u8 = 0x80;
    /// BPF_MOD.
    pub const MOD: u8 = 0x90;
    /// BPF_XOR.
    pub const XOR: u8 = 0xa0;
    /// BPF_MOV.
    pub const MOV: u8 = 0xb0;
    /// BPF_ARSH.
    pub const ARSH: u8 = 0xc0;
}

/// Jump operations (high four bits of `code`), limited to those present since 3.18.
pub mod jmp {
    /// BPF_JA: always.
    pub const JA: u8 = 0x00;
    /// BPF_JEQ: equal.
    pub const JEQ: u8 = 0x10;
    /// BPF_JGT: unsigned greater.
    pub const JGT: u8 = 0x20;
    /// BPF_JGE: unsigned greater or equal.
    pub const JGE: u8 = 0x30;
    /// BPF_JSET: any bit in common.
    pub const JSET: u8 = 0x40;
    /// BPF_JNE: not equal.
    pub const JNE: u8 = 0x50;
    /// BPF_JSGT: signed greater.
    pub const JSGT: u8 = 0x60;
    /// BPF_JSGE: signed greater or equal.
    pub const JSGE: u8 = 0x70;
    /// BPF_CALL: a helper call.
    pub const CALL: u8 = 0x80;
    /// BPF_EXIT: return R0.
    pub const EXIT: u8 = 0x90;
}

/// `src_reg` value of an `ld_imm64` whose immediate is a map fd to be resolved by the
/// kernel at load time.
pub const PSEUDO_MAP_FD: u8 = 1;

/// eBPF registers. R0 return value, R1–R5 arguments (clobbered by calls), R6–R9 callee
/// saved, R10 read-only frame pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// Return value of helpers and of the program.
    R0 = 0,
    /// Argument 1 (the program's context on entry).
    R1,
    /// Argument 2.
    R2,
    /// Argument 3.
    R3,
    /// Argument 4.
    R4,
    /// Argument 5.
    R5,
    /// Callee-saved.
    R6,
    /// Callee-saved.
    R7,
    /// Callee-saved.
    R8,
    /// Callee-saved.
    R9,
    /// Read-only frame pointer.
    R10,
}

/// Alias for the frame pointer.
pub const FP: Reg = Reg::R10;

/// One encoded 8-byte instruction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register.
    pub dst: u8,
    /// Source register.
    pub src: u8,
    /// Offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    /// An instruction from its fields.
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// The kernel's wire format.
    pub fn to_bytes(self) -> [u8; 8] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [
            self.code,
            (self.dst & 0x0f) | ((self.src & 0x0f) << 4),
            off[0],
            off[1],
            imm[0],
            imm[1],
            imm[2],
            imm[3],
        ]
    }
}

impl fmt::Debug for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Insn {{ code: {:#04x}, dst: r{}, src: r{}, off: {}, imm: {} }}",
            self.code, self.dst, self.src, self.off, self.imm
        )
    }
}

/// A jump target, created by [`Asm::new_label`] and placed by [`Asm::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Assembly failed: a label misuse or a jump that does not fit the 16-bit offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    /// A jump to a label that was never bound.
    #[error("label {0} used by a jump but never bound")]
    Unbound(usize),
    /// A label bound twice.
    #[error("label {0} bound twice")]
    Rebound(usize),
    /// A jump farther than 16 bits reach.
    #[error("jump at instruction {at} to label {label} is out of the 16-bit offset range")]
    OutOfRange {
        /// The jump's slot.
        at: usize,
        /// The label.
        label: usize,
    },
}

/// Builder for a program. Jumps name [`Label`]s; offsets are fixed in [`Asm::finish`].
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
    rebound: Option<usize>,
}

impl Asm {
    /// An empty program.
    pub fn new() -> Asm {
        Asm::default()
    }

    /// Number of instruction slots emitted so far (`ld_imm64` takes two).
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// A label to jump to, bound later with [`Asm::bind`].
    pub fn new_label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Place `label` at the next instruction.
    pub fn bind(&mut self, label: Label) {
        match self.labels.get_mut(label.0) {
            Some(slot @ None) => *slot = Some(self.insns.len()),
            // Remember the misuse and report it from finish(), keeping the builder chainable.
            _ => self.rebound = self.rebound.or(Some(label.0)),
        }
    }

    /// Emit an instruction as is.
    pub fn raw(&mut self, insn: Insn) -> &mut Asm {
        self.insns.push(insn);
        self
    }

    /// `dst = src` (64-bit).
    pub fn mov64_reg(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.alu64_reg(alu::MOV, dst, src)
    }

    /// `dst = imm` (sign-extended to 64 bits).
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.alu64_imm(alu::MOV, dst, imm)
    }

    /// `dst = (u32)src` — a 32-bit move zero-extends into the upper half.
    pub fn mov32_reg(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.raw(Insn::new(
            class::ALU | src::X | alu::MOV,
            dst as u8,
            src as u8,
            0,
            0,
        ))
    }

    /// `dst op= imm` (64-bit).
    pub fn alu64_imm(&mut self, op: u8, dst: Reg, imm: i32) -> &mut Asm {
        self.raw(Insn::new(class::ALU64 | src::K | op, dst as u8, 0, 0, imm))
    }

    /// `dst op= src` (64-bit).
    pub fn alu64_reg(&mut self, op: u8, dst: Reg, src: Reg) -> &mut Asm {
        self.raw(Insn::new(
            class::ALU64 | src::X | op,
            dst as u8,
            src as u8,
            0,
            0,
        ))
    }

    /// `dst = *(size *)(src + off)`.
    pub fn load(&mut self, sz: u8, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.raw(Insn::new(
            class::LDX | mode::MEM | sz,
            dst as u8,
            src as u8,
            off,
            0,
        ))
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store_reg(&mut self, sz: u8, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.raw(Insn::new(
            class::STX | mode::MEM | sz,
            dst as u8,
            src as u8,
            off,
            0,
        ))
    }

    /// `*(size *)(dst + off) = imm` (sign-extended for DW).
    pub fn store_imm(&mut self, sz: u8, dst: Reg, off: i16, imm: i32) -> &mut Asm {
        self.raw(Insn::new(
            class::ST | mode::MEM | sz,
            dst as u8,
            0,
            off,
            imm,
        ))
    }

    /// `lock *(size *)(dst + off) += src`; sz must be W or DW. Encoded with imm 0 (BPF_ADD),
    /// which is exactly the pre-5.12 `BPF_XADD` encoding, so old kernels accept it too.
    pub fn atomic_add(&mut self, sz: u8, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.raw(Insn::new(
            class::STX | mode::ATOMIC | sz,
            dst as u8,
            src as u8,
            off,
            i32::from(alu::ADD),
        ))
    }

    /// `dst = imm64` — two instruction slots.
    pub fn ld_imm64(&mut self, dst: Reg, imm: u64) -> &mut Asm {
        self.raw(Insn::new(
            class::LD | mode::IMM | size::DW,
            dst as u8,
            0,
            0,
            imm as u32 as i32,
        ));
        self.raw(Insn::new(0, 0, 0, 0, (imm >> 32) as u32 as i32))
    }

    /// `dst = map` — the kernel replaces the fd with the map's address at load time.
    pub fn ld_map_fd(&mut self, dst: Reg, map_fd: i32) -> &mut Asm {
        self.raw(Insn::new(
            class::LD | mode::IMM | size::DW,
            dst as u8,
            PSEUDO_MAP_FD,
            0,
            map_fd,
        ));
        self.raw(Insn::new(0, 0, 0, 0, 0))
    }

    /// `if dst op imm goto target` (64-bit compare; imm sign-extended).
    pub fn jmp_imm(&mut self, op: u8, dst: Reg, imm: i32, target: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), target));
        self.raw(Insn::new(class::JMP | src::K | op, dst as u8, 0, 0, imm))
    }

    /// `if dst op src goto target`.
    pub fn jmp_reg(&mut self, op: u8, dst: Reg, src: Reg, target: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), target));
        self.raw(Insn::new(
            class::JMP | src::X | op,
            dst as u8,
            src as u8,
            0,
            0,
        ))
    }

    /// `goto target`.
    pub fn ja(&mut self, target: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), target));
        self.raw(Insn::new(class::JMP | jmp::JA, 0, 0, 0, 0))
    }

    /// Call kernel helper number `helper`.
    pub fn call(&mut self, helper: i32) -> &mut Asm {
        self.raw(Insn::new(class::JMP | jmp::CALL, 0, 0, 0, helper))
    }

    /// `exit`: return R0.
    pub fn exit(&mut self) -> &mut Asm {
        self.raw(Insn::new(class::JMP | jmp::EXIT, 0, 0, 0, 0))
    }

    /// Resolve jump offsets (relative to the instruction after the jump) and return the
    /// program.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        if let Some(label) = self.rebound {
            return Err(AsmError::Rebound(label));
        }
        for &(at, label) in &self.fixups {
            let target = self
                .labels
                .get(label.0)
                .copied()
                .flatten()
                .ok_or(AsmError::Unbound(label.0))?;
            let delta = target as i64 - (at as i64 + 1);
            let off =
                i16::try_from(delta).map_err(|_| AsmError::OutOfRange { at, label: label.0 })?;
            if let Some(insn) = self.insns.get_mut(at) {
                insn.off = off;
            }
        }
        Ok(self.insns)
    }
}

/// Serialise a program for `BPF_PROG_LOAD`.
pub fn to_bytes(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Reg::*;

    fn one(build: impl FnOnce(&mut Asm)) -> Vec<[u8; 8]> {
        let mut asm = Asm::new();
        build(&mut asm);
        asm.finish()
            .expect("assembles")
            .into_iter()
            .map(Insn::to_bytes)
            .collect()
    }

    // Expected bytes are the encodings the kernel's own BPF_* macros (filter.h) and
    // llvm-objdump produce for these instructions.
    #[test]
    fn alu_encodings() {
        assert_eq!(
            one(|a| {
                a.mov64_reg(R6, R1);
            }),
            [[0xbf, 0x16, 0, 0, 0, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.mov64_reg(R2, FP);
            }),
            [[0xbf, 0xa2, 0, 0, 0, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.mov64_imm(R0, 0);
            }),
            [[0xb7, 0x00, 0, 0, 0, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.mov64_imm(R3, 256);
            }),
            [[0xb7, 0x03, 0, 0, 0x00, 0x01, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.mov32_reg(R1, R0);
            }),
            [[0xbc, 0x01, 0, 0, 0, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.alu64_imm(alu::ADD, R2, -16);
            }),
            [[0x07, 0x02, 0, 0, 0xf0, 0xff, 0xff, 0xff]]
        );
        assert_eq!(
            one(|a| {
                a.alu64_imm(alu::LSH, R1, 32);
            }),
            [[0x67, 0x01, 0, 0, 0x20, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.alu64_imm(alu::RSH, R0, 32);
            }),
            [[0x77, 0x00, 0, 0, 0x20, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.alu64_reg(alu::ADD, R1, R2);
            }),
            [[0x0f, 0x21, 0, 0, 0, 0, 0, 0]]
        );
    }

    #[test]
    fn memory_encodings() {
        assert_eq!(
            one(|a| {
                a.store_reg(size::W, FP, -16, R0);
            }),
            [[0x63, 0x0a, 0xf0, 0xff, 0, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.store_reg(size::DW, FP, -8, R1);
            }),
            [[0x7b, 0x1a, 0xf8, 0xff, 0, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.store_imm(size::DW, FP, -24, 1);
            }),
            [[0x7a, 0x0a, 0xe8, 0xff, 1, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.store_imm(size::W, FP, -28, 3);
            }),
            [[0x62, 0x0a, 0xe4, 0xff, 3, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.load(size::DW, R0, R1, 8);
            }),
            [[0x79, 0x10, 8, 0, 0, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.load(size::W, R2, R6, 0);
            }),
            [[0x61, 0x62, 0, 0, 0, 0, 0, 0]]
        );
        // Historic BPF_STX | BPF_XADD | BPF_DW == 0xdb with imm 0.
        assert_eq!(
            one(|a| {
                a.atomic_add(size::DW, R0, 0, R1);
            }),
            [[0xdb, 0x10, 0, 0, 0, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.atomic_add(size::W, R0, 4, R1);
            }),
            [[0xc3, 0x10, 4, 0, 0, 0, 0, 0]]
        );
    }

    #[test]
    fn wide_immediates() {
        assert_eq!(
            one(|a| {
                a.ld_map_fd(R1, 5);
            }),
            [[0x18, 0x11, 0, 0, 5, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.ld_imm64(R2, 0x1122_3344_5566_7788);
            }),
            [
                [0x18, 0x02, 0, 0, 0x88, 0x77, 0x66, 0x55],
                [0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11]
            ]
        );
    }

    #[test]
    fn control_flow_encodings() {
        assert_eq!(
            one(|a| {
                a.call(14);
            }),
            [[0x85, 0, 0, 0, 14, 0, 0, 0]]
        );
        assert_eq!(
            one(|a| {
                a.exit();
            }),
            [[0x95, 0, 0, 0, 0, 0, 0, 0]]
        );
        let prog = one(|a| {
            let l = a.new_label();
            a.jmp_imm(jmp::JEQ, R0, 0, l)
                .jmp_imm(jmp::JNE, R0, -17, l)
                .jmp_imm(jmp::JSGE, R0, 0, l)
                .jmp_reg(jmp::JEQ, R1, R2, l)
                .ja(l);
            a.bind(l);
            a.exit();
        });
        assert_eq!(
            prog,
            [
                [0x15, 0x00, 4, 0, 0, 0, 0, 0],
                [0x55, 0x00, 3, 0, 0xef, 0xff, 0xff, 0xff],
                [0x75, 0x00, 2, 0, 0, 0, 0, 0],
                [0x1d, 0x21, 1, 0, 0, 0, 0, 0],
                [0x05, 0x00, 0, 0, 0, 0, 0, 0],
                [0x95, 0, 0, 0, 0, 0, 0, 0],
            ]
        );
    }

    #[test]
    fn backward_jump_and_wide_slots_count() {
        let prog = one(|a| {
            let top = a.new_label();
            a.bind(top);
            a.ld_imm64(R1, 1).ja(top);
        });
        // ja is at slot 2; target 0 → off = 0 - 3.
        assert_eq!(prog[2], [0x05, 0, 0xfd, 0xff, 0, 0, 0, 0]);
    }

    #[test]
    fn label_errors() {
        let mut a = Asm::new();
        let l = a.new_label();
        a.ja(l);
        assert_eq!(a.finish(), Err(AsmError::Unbound(0)));

        let mut a = Asm::new();
        let l = a.new_label();
        a.bind(l);
        a.bind(l);
        a.exit();
        assert_eq!(a.finish(), Err(AsmError::Rebound(0)));

        let mut a = Asm::new();
        let l = a.new_label();
        a.ja(l);
        for _ in 0..40_000 {
            a.mov64_imm(Reg::R0, 0);
        }
        a.bind(l);
        assert!(matches!(
            a.finish(),
            Err(AsmError::OutOfRange { at: 0, .. })
        ));
    }
}

//! x86_64 register set as perf_event reports it (`arch/x86/include/uapi/asm/perf_regs.h`).

use super::UserRegs;

/// perf_regs index of RBP.
pub const PERF_REG_BP: usize = 6;
/// perf_regs index of RSP.
pub const PERF_REG_SP: usize = 7;
/// perf_regs index of RIP.
pub const PERF_REG_IP: usize = 8;

/// `sample_regs_user` mask requested in DWARF mode.
///
/// framehop's x86_64 CFI evaluation only ever reads RIP, RSP and RBP (CFA rules and PLT
/// expressions are expressed in those), so asking the kernel for more would only make every
/// sample record bigger. The kernel rejects DS/ES/FS/GS bits, so never widen this blindly.
pub const SAMPLE_REGS_USER: u64 = (1 << PERF_REG_BP) | (1 << PERF_REG_SP) | (1 << PERF_REG_IP);

/// Extract IP/SP/BP from a sample's REGS_USER payload.
///
/// `mask` is the event's `sample_regs_user`; `values` holds one u64 per set bit, in bit order
/// (exactly what follows the `abi` word). Returns `None` if the payload is too short or a
/// required register was not requested.
pub fn user_regs_from_perf(mask: u64, values: &[u64]) -> Option<UserRegs> {
    let value_of = |index: usize| -> Option<u64> {
        if mask & (1u64 << index) == 0 {
            return None;
        }
        // Position of this register among the requested ones = number of set bits below it.
        let below = mask & ((1u64 << index) - 1);
        values.get(below.count_ones() as usize).copied()
    };
    Some(UserRegs {
        ip: value_of(PERF_REG_IP)?,
        sp: value_of(PERF_REG_SP)?,
        bp: value_of(PERF_REG_BP)?,
    })
}

/// Layout of the kernel's `struct rt_sigframe` as seen from the signal trampoline.
///
/// When a handler returns into `__restore_rt`, the return address (`pretcode`) has been
/// popped, so SP points at the `struct ucontext`. `uc_mcontext` starts after uc_flags (8),
/// uc_link (8) and uc_stack (24), and its general registers are laid out
/// r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip (`struct sigcontext`).
pub mod sigframe {
    const MCONTEXT: u64 = 40;
    /// Offset of the interrupted RBP from SP inside the trampoline.
    pub const BP_OFFSET: u64 = MCONTEXT + 10 * 8;
    /// Offset of the interrupted RSP.
    pub const SP_OFFSET: u64 = MCONTEXT + 15 * 8;
    /// Offset of the interrupted RIP.
    pub const IP_OFFSET: u64 = MCONTEXT + 16 * 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_ip_sp_bp() {
        assert_eq!(SAMPLE_REGS_USER, 0x1c0);
    }

    #[test]
    fn sigframe_offsets_match_glibc_cfi() {
        // glibc's __restore_rt CFI: CFA = *(rsp + 160), rip at rsp + 168, rbp at rsp + 120.
        assert_eq!(sigframe::SP_OFFSET, 160);
        assert_eq!(sigframe::IP_OFFSET, 168);
        assert_eq!(sigframe::BP_OFFSET, 120);
    }

    #[test]
    fn regs_from_full_mask_pick_right_slots() {
        // Full usable mask 0xff0fff: AX..SS (0..=11) then R8..R15 (16..=23).
        let mask = 0xff0fffu64;
        let values: Vec<u64> = (0..20).map(|i| 100 + i).collect();
        let regs = user_regs_from_perf(mask, &values).expect("all present");
        assert_eq!((regs.bp, regs.sp, regs.ip), (106, 107, 108));
        let regs = user_regs_from_perf(SAMPLE_REGS_USER, &[1, 2, 3]).expect("minimal");
        assert_eq!((regs.bp, regs.sp, regs.ip), (1, 2, 3));
        assert!(user_regs_from_perf(SAMPLE_REGS_USER, &[1, 2]).is_none());
        assert!(user_regs_from_perf(1 << PERF_REG_IP, &[1]).is_none());
    }
}

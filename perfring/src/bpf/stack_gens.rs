//! Two generations of stack-trace maps, so that a stack id names one stack for as long as
//! anything refers to it.
//!
//! A `BPF_MAP_TYPE_STACK_TRACE` id is a hash bucket: once its entry is deleted, the bucket
//! can take another stack under the same id. Deleting consumed ids (so that a long run does
//! not fill the map) therefore races with keys that still name them — samples counted while
//! a drain runs, off-CPU intervals that opened long ago and close later. Instead, programs
//! write into the map of the current *epoch* (`epoch & 1`) and store the epoch next to every
//! id; at each [`StackGens::rotate`] userspace
//!
//! 1. reads and keeps ("pins") the stacks of the previous epoch that open intervals still
//!    hold (the caller lists them),
//! 2. — after the caller drained its counts — clears the other map, which only held the
//!    previous epoch's stacks, all drained or pinned by now,
//! 3. makes it current for the next epoch.
//!
//! So an (epoch, id) pair is never reused for another stack, and [`StackGens::resolve`]
//! finds it in the live map of its epoch or among the pins.

use std::collections::HashMap;
use std::sync::Arc;

use super::error::BpfError;
use super::insn::{alu, jmp, size, Asm, Reg, FP};
use super::maps::Map;
use super::stack_counter::create_map;
use super::sys;

/// A resolved stack: instruction pointers, leaf first.
pub type Stack = Arc<[u64]>;

/// Drains a pin survives without being listed as held again: one round for keys counted
/// between the caller's scan of open intervals and its drain.
const PIN_GRACE: u64 = 2;

/// The two stack maps, the epoch map the programs read, and the pins.
#[derive(Debug)]
pub struct StackGens {
    maps: [Map; 2],
    epoch_map: Map,
    epoch: u32,
    round: u64,
    pinned: HashMap<(u32, u32), (Stack, u64)>,
    /// Lookups of this round (cleared at each rotation).
    memo: HashMap<(u32, u32), Option<Stack>>,
}

/// Parse a stack-map value: `depth` u64 ips, leaf first, zero-padded after the last frame.
pub fn parse_stack(value: &[u8]) -> Vec<u64> {
    value
        .chunks_exact(8)
        .map_while(|c| c.try_into().ok().map(u64::from_ne_bytes))
        .take_while(|&ip| ip != 0)
        .collect()
}

impl StackGens {
    /// Create both maps (`entries` stacks of up to `depth` frames each) and the epoch map.
    pub fn create(entries: u32, depth: u32) -> Result<StackGens, BpfError> {
        let stack_map = |name| {
            create_map(
                "bpf(BPF_MAP_CREATE STACK_TRACE)",
                sys::map_type::STACK_TRACE,
                4,
                8 * depth,
                entries,
                name,
            )
        };
        let maps = [stack_map("psample_stk0")?, stack_map("psample_stk1")?];
        let epoch_map = create_map(
            "bpf(BPF_MAP_CREATE array)",
            sys::map_type::ARRAY,
            4,
            4,
            1,
            "psample_epoch",
        )?;
        Ok(StackGens {
            maps,
            epoch_map,
            epoch: 0,
            round: 0,
            pinned: HashMap::new(),
            memo: HashMap::new(),
        })
    }

    /// Fds of the two stack maps and the epoch map, for the program builder.
    pub fn fds(&self) -> StackGenFds {
        StackGenFds {
            stacks: [self.maps[0].raw_fd(), self.maps[1].raw_fd()],
            epoch: self.epoch_map.raw_fd(),
        }
    }

    /// The epoch programs write now.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Stacks held by pins (for the verbose table sizes).
    pub fn pinned(&self) -> usize {
        self.pinned.len()
    }

    /// The stack `id` of `epoch`, or `None` when it cannot be found (never recorded, or
    /// cleared without a pin: a loss the caller counts).
    pub fn resolve(&mut self, epoch: u32, id: u32) -> Option<Stack> {
        if let Some(found) = self.memo.get(&(epoch, id)) {
            return found.clone();
        }
        let found = match self.pinned.get(&(epoch, id)) {
            Some((stack, _)) => Some(stack.clone()),
            // Only the current and the previous epoch are still in a map.
            None if epoch == self.epoch || epoch.wrapping_add(1) == self.epoch => {
                self.lookup(epoch, id)
            }
            None => None,
        };
        self.memo.insert((epoch, id), found.clone());
        found
    }

    fn lookup(&self, epoch: u32, id: u32) -> Option<Stack> {
        let map = &self.maps[(epoch & 1) as usize];
        let mut value = vec![0u8; map.value_size()];
        match map.lookup(&id.to_ne_bytes(), &mut value) {
            Ok(true) => Some(parse_stack(&value).into()),
            _ => None,
        }
    }

    /// End an epoch. `held` lists the (epoch, id) pairs open intervals hold, read before
    /// the caller drained the counts of this epoch. Pins the previous epoch's, clears its
    /// map and makes it current. A clearing failure leaves stale stacks that only cost
    /// room (their ids are unreachable: no key names that epoch any more).
    pub fn rotate(&mut self, held: impl IntoIterator<Item = (u32, u32)>) -> Result<(), BpfError> {
        self.round += 1;
        let previous = self.epoch.wrapping_sub(1);
        for (epoch, id) in held {
            if let Some(pin) = self.pinned.get_mut(&(epoch, id)) {
                pin.1 = self.round;
            } else if epoch == previous {
                if let Some(stack) = self.resolve(epoch, id) {
                    self.pinned.insert((epoch, id), (stack, self.round));
                }
            }
        }
        let round = self.round;
        self.pinned.retain(|_, (_, seen)| *seen + PIN_GRACE > round);
        let stale = &self.maps[(previous & 1) as usize];
        let keys = stale
            .keys()
            .map_err(|e| super::error::syscall("bpf(BPF_MAP_GET_NEXT_KEY stacks)", e))?;
        for key in keys {
            let _ = stale.delete(&key);
        }
        let next = self.epoch.wrapping_add(1);
        self.epoch_map
            .update(&0u32.to_ne_bytes(), &next.to_ne_bytes(), sys::update::ANY)
            .map_err(|e| super::error::syscall("bpf(BPF_MAP_UPDATE_ELEM epoch)", e))?;
        self.epoch = next;
        self.memo.clear();
        Ok(())
    }
}

/// What a program needs to refer to the generations.
#[derive(Debug, Clone, Copy)]
pub struct StackGenFds {
    /// The stack maps of even and odd epochs.
    pub stacks: [i32; 2],
    /// The one-element array holding the current epoch.
    pub epoch: i32,
}

impl StackGenFds {
    /// Emit: `dst` = the current epoch (0 if the lookup fails, which it cannot for an
    /// array's element 0). `scratch_off` is a free 4-byte stack slot. Clobbers r0–r5.
    pub fn emit_load_epoch(&self, a: &mut Asm, dst: Reg, scratch_off: i16) {
        let missing = a.new_label();
        let done = a.new_label();
        a.store_imm(size::W, FP, scratch_off, 0)
            .ld_map_fd(Reg::R1, self.epoch)
            .mov64_reg(Reg::R2, FP)
            .alu64_imm(alu::ADD, Reg::R2, i32::from(scratch_off))
            .call(super::helpers::MAP_LOOKUP_ELEM)
            .jmp_imm(jmp::JEQ, Reg::R0, 0, missing)
            .load(size::W, dst, Reg::R0, 0)
            .ja(done);
        a.bind(missing);
        a.mov64_imm(dst, 0);
        a.bind(done);
    }

    /// Emit: `bpf_get_stackid(ctx, stacks[epoch & 1], flags)` → r0. Clobbers r1–r5.
    pub fn emit_get_stackid(&self, a: &mut Asm, ctx: Reg, epoch: Reg, flags: i32) {
        let even = a.new_label();
        a.ld_map_fd(Reg::R2, self.stacks[0])
            .mov64_reg(Reg::R1, epoch)
            .alu64_imm(alu::AND, Reg::R1, 1)
            .jmp_imm(jmp::JEQ, Reg::R1, 0, even)
            .ld_map_fd(Reg::R2, self.stacks[1]);
        a.bind(even);
        a.mov64_reg(Reg::R1, ctx)
            .mov64_imm(Reg::R3, flags)
            .call(super::helpers::GET_STACKID);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_values_stop_at_the_first_zero() {
        let mut v = Vec::new();
        for ip in [0x401000u64, 0x402000, 0, 0x999] {
            v.extend_from_slice(&ip.to_ne_bytes());
        }
        assert_eq!(parse_stack(&v), [0x401000, 0x402000]);
        assert_eq!(parse_stack(&v[..5]), Vec::<u64>::new());
    }
}

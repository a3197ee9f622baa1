//! Byte layouts shared by the off-CPU programs and their reader: the per-thread start entry
//! (whose first [`KEY_SIZE`] bytes are the count key), the count value, and the records
//! spilled to the ring. Native endian, as the kernel writes them.

use crate::bpf::drain::{read_u32, read_u64};

/// Start entry: the count key part.
pub mod entry {
    /// u32 process id (tgid) of the blocked thread.
    pub const TGID: i16 = 0;
    /// u32 thread id.
    pub const TID: i16 = 4;
    /// s32 user stack id (negative: an errno, or a marker).
    pub const USTACK: i16 = 8;
    /// s32 kernel stack id.
    pub const KSTACK: i16 = 12;
    /// u32 `prev_state` at switch-out (low half).
    pub const STATE: i16 = 16;
    /// u32 stack epoch of both ids.
    pub const EPOCH: i16 = 20;
    /// 16 bytes: the thread's comm at switch-out.
    pub const COMM: i16 = 24;
    /// u32 waker's process id (0: the idle task, or no wakeup seen).
    pub const WAKER_TGID: i16 = 40;
    /// s32 waker's user stack id ([`super::NO_WAKER`] when no wakeup was seen).
    pub const WAKER_USTACK: i16 = 44;
    /// s32 waker's kernel stack id.
    pub const WAKER_KSTACK: i16 = 48;
    /// u32 stack epoch of the waker's ids.
    pub const WAKER_EPOCH: i16 = 52;
    /// 16 bytes: the waker's comm.
    pub const WAKER_COMM: i16 = 56;
    /// u64 switch-out time (CLOCK_MONOTONIC ns). Not part of the key.
    pub const TS: i16 = 72;
    /// u32 [`super::flags`].
    pub const FLAGS: i16 = 80;
    /// u64 sequence number of the spilled blocked stacks.
    pub const BLOCKED_SEQ: i16 = 88;
    /// u64 sequence number of the spilled waker stacks.
    pub const WAKER_SEQ: i16 = 96;
    /// u64 time of the last wakeup (`sched_waking`) while open; 0: none seen.
    pub const WOKEN: i16 = 104;
    /// u64 the thread's CPU time (`se.sum_exec_runtime`) at the switch-out; 0: unknown.
    pub const RUNTIME: i16 = 112;
    /// Bytes per entry.
    pub const SIZE: usize = 120;
}

/// Bytes of the count key: the start entry up to the switch-out time.
pub const KEY_SIZE: usize = 72;
/// Count value: u64 blocked ns, u64 intervals.
pub const VALUE_SIZE: usize = 16;

/// Start entry flags.
pub mod flags {
    /// The blocked stacks did not fit the stack map; they went to the ring with
    /// `BLOCKED_SEQ`.
    pub const SPILL_BLOCKED: u32 = 1;
    /// The waker's stacks went to the ring with `WAKER_SEQ`.
    pub const SPILL_WAKER: u32 = 2;
    /// Inserted by userspace for a thread found blocked when recording started; its stack
    /// ids are [`super::AT_START`] and an index the caller chose.
    pub const AT_START: u32 = 4;
}

/// Stored as a waker stack id when no wakeup was seen (never a real errno).
pub const NO_WAKER: i32 = i32::MIN;
/// User stack id of an entry inserted for a thread blocked at start (its kernel stack id
/// is the caller's index).
pub const AT_START: i32 = i32::MIN + 1;

/// Spilled records (the RAW payload of bpf-output samples): the first u32 says which.
pub mod spill {
    /// Both stacks of a switch-out or a wakeup whose ids could not be recorded.
    pub const STACKS: u32 = 1;
    /// A closed interval that could not be counted in the kernel.
    pub const INTERVAL: u32 = 2;
    /// Stacks record: u32 user bytes at 4, u64 seq at 8, u32 tgid at 16, u32 tid at 20,
    /// u32 kernel bytes at 24, kernel ips at [`STACKS_IPS`], the user ips right after them.
    /// Only the bytes the stacks take are written to the ring (a few hundred, where a
    /// fixed-size record would take [`STACKS_SIZE`]): under a storm of stack map
    /// collisions, the spill ring is what keeps the result complete.
    pub const STACKS_IPS: usize = 32;
    /// Bytes reserved per side (127 frames).
    pub const MAX_STACK_BYTES: usize = 127 * 8;
    /// Bytes of the largest stacks record.
    pub const STACKS_SIZE: usize = STACKS_IPS + 2 * MAX_STACK_BYTES;
    /// Interval record: u32 flags at 4, u64 blocked ns at 8, the count key at 16, u64
    /// blocked seq at 88, u64 waker seq at 96.
    pub const INTERVAL_KEY: usize = 16;
    /// Bytes of an interval record.
    pub const INTERVAL_SIZE: usize = 104;
}

/// A decoded count key (or the key part of a spilled interval).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawKey {
    /// Process id of the blocked thread.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// User stack id (negative: none).
    pub ustack: i32,
    /// Kernel stack id (negative: none).
    pub kstack: i32,
    /// `prev_state` (low 32 bits).
    pub state: u32,
    /// Epoch of the two stack ids.
    pub epoch: u32,
    /// The thread's comm when it blocked.
    pub comm: [u8; 16],
    /// The waker's process id.
    pub waker_tgid: u32,
    /// The waker's user stack id ([`NO_WAKER`]: no wakeup seen).
    pub waker_ustack: i32,
    /// The waker's kernel stack id.
    pub waker_kstack: i32,
    /// Epoch of the waker's ids.
    pub waker_epoch: u32,
    /// The waker's comm.
    pub waker_comm: [u8; 16],
}

fn comm_at(bytes: &[u8], at: usize) -> Option<[u8; 16]> {
    bytes.get(at..at + 16)?.try_into().ok()
}

impl RawKey {
    /// Decode the [`KEY_SIZE`] bytes at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Option<RawKey> {
        let u = |off: i16| read_u32(bytes, off as usize);
        Some(RawKey {
            tgid: u(entry::TGID)?,
            tid: u(entry::TID)?,
            ustack: u(entry::USTACK)? as i32,
            kstack: u(entry::KSTACK)? as i32,
            state: u(entry::STATE)?,
            epoch: u(entry::EPOCH)?,
            comm: comm_at(bytes, entry::COMM as usize)?,
            waker_tgid: u(entry::WAKER_TGID)?,
            waker_ustack: u(entry::WAKER_USTACK)? as i32,
            waker_kstack: u(entry::WAKER_KSTACK)? as i32,
            waker_epoch: u(entry::WAKER_EPOCH)?,
            waker_comm: comm_at(bytes, entry::WAKER_COMM as usize)?,
        })
    }

    /// Whether a wakeup was recorded for the interval.
    pub fn has_waker(&self) -> bool {
        self.waker_ustack != NO_WAKER
    }
}

/// A start entry as userspace reads it (open intervals at stop, held stack ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// The key part.
    pub key: RawKey,
    /// Switch-out time (CLOCK_MONOTONIC ns).
    pub ts: u64,
    /// [`flags`].
    pub flags: u32,
    /// Sequence number of the spilled blocked stacks.
    pub blocked_seq: u64,
    /// Sequence number of the spilled waker stacks.
    pub waker_seq: u64,
    /// Time of the last wakeup while open (0: none seen).
    pub woken: u64,
    /// The thread's CPU time in ns when the interval opened (0: unknown).
    pub runtime: u64,
}

impl RawEntry {
    /// Decode an [`entry::SIZE`]-byte start entry.
    pub fn decode(bytes: &[u8]) -> Option<RawEntry> {
        Some(RawEntry {
            key: RawKey::decode(bytes)?,
            ts: read_u64(bytes, entry::TS as usize)?,
            flags: read_u32(bytes, entry::FLAGS as usize)?,
            blocked_seq: read_u64(bytes, entry::BLOCKED_SEQ as usize)?,
            waker_seq: read_u64(bytes, entry::WAKER_SEQ as usize)?,
            woken: read_u64(bytes, entry::WOKEN as usize)?,
            runtime: read_u64(bytes, entry::RUNTIME as usize)?,
        })
    }

    /// Encode, for entries userspace inserts (threads blocked at start).
    pub fn encode(&self) -> [u8; entry::SIZE] {
        let mut b = [0u8; entry::SIZE];
        let mut put = |off: i16, v: &[u8]| {
            let off = off as usize;
            b[off..off + v.len()].copy_from_slice(v);
        };
        let k = &self.key;
        put(entry::TGID, &k.tgid.to_ne_bytes());
        put(entry::TID, &k.tid.to_ne_bytes());
        put(entry::USTACK, &k.ustack.to_ne_bytes());
        put(entry::KSTACK, &k.kstack.to_ne_bytes());
        put(entry::STATE, &k.state.to_ne_bytes());
        put(entry::EPOCH, &k.epoch.to_ne_bytes());
        put(entry::COMM, &k.comm);
        put(entry::WAKER_TGID, &k.waker_tgid.to_ne_bytes());
        put(entry::WAKER_USTACK, &k.waker_ustack.to_ne_bytes());
        put(entry::WAKER_KSTACK, &k.waker_kstack.to_ne_bytes());
        put(entry::WAKER_EPOCH, &k.waker_epoch.to_ne_bytes());
        put(entry::WAKER_COMM, &k.waker_comm);
        put(entry::TS, &self.ts.to_ne_bytes());
        put(entry::FLAGS, &self.flags.to_ne_bytes());
        put(entry::BLOCKED_SEQ, &self.blocked_seq.to_ne_bytes());
        put(entry::WAKER_SEQ, &self.waker_seq.to_ne_bytes());
        put(entry::WOKEN, &self.woken.to_ne_bytes());
        put(entry::RUNTIME, &self.runtime.to_ne_bytes());
        b
    }
}

/// A record the programs spilled to the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spilled {
    /// The stacks of a switch-out or wakeup, under a sequence number.
    Stacks {
        /// Sequence number (CPU in the top 16 bits).
        seq: u64,
        /// Process of the stacks' thread.
        tgid: u32,
        /// The thread.
        tid: u32,
        /// Leaf first.
        user: Vec<u64>,
        /// Leaf first.
        kernel: Vec<u64>,
    },
    /// An interval the kernel could not count.
    Interval {
        /// The count key (its ids are void where `flags` says spilled).
        key: RawKey,
        /// [`flags`] of the entry.
        flags: u32,
        /// Blocked ns.
        blocked_ns: u64,
        /// Where the blocked stacks are, when spilled.
        blocked_seq: u64,
        /// Where the waker stacks are, when spilled.
        waker_seq: u64,
    },
}

fn ips(bytes: &[u8], at: usize, len: u32) -> Vec<u64> {
    // A length past the record's end (or past one side's room) reads what is there.
    let end = at
        .saturating_add((len as usize).min(spill::MAX_STACK_BYTES))
        .min(bytes.len());
    bytes
        .get(at..end)
        .unwrap_or_default()
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok().map(u64::from_ne_bytes))
        .take_while(|&ip| ip != 0)
        .collect()
}

impl Spilled {
    /// Decode a bpf-output RAW payload (the kernel may pad it to a multiple of 8 bytes
    /// plus 4; extra bytes are ignored). `None` for anything malformed.
    pub fn decode(raw: &[u8]) -> Option<Spilled> {
        match read_u32(raw, 0)? {
            spill::STACKS if raw.len() >= spill::STACKS_IPS => {
                let kernel_len = read_u32(raw, 24)?.min(spill::MAX_STACK_BYTES as u32);
                let user_at = spill::STACKS_IPS + kernel_len as usize;
                Some(Spilled::Stacks {
                    seq: read_u64(raw, 8)?,
                    tgid: read_u32(raw, 16)?,
                    tid: read_u32(raw, 20)?,
                    user: ips(raw, user_at, read_u32(raw, 4)?),
                    kernel: ips(raw, spill::STACKS_IPS, kernel_len),
                })
            }
            spill::INTERVAL if raw.len() >= spill::INTERVAL_SIZE => Some(Spilled::Interval {
                flags: read_u32(raw, 4)?,
                blocked_ns: read_u64(raw, 8)?,
                key: RawKey::decode(raw.get(spill::INTERVAL_KEY..)?)?,
                blocked_seq: read_u64(raw, 88)?,
                waker_seq: read_u64(raw, 96)?,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_entry() -> RawEntry {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"sh\0\0");
        RawEntry {
            key: RawKey {
                tgid: 10,
                tid: 11,
                ustack: 3,
                kstack: -14,
                state: 2,
                epoch: 7,
                comm,
                waker_tgid: 20,
                waker_ustack: NO_WAKER,
                waker_kstack: 5,
                waker_epoch: 6,
                waker_comm: [b'w'; 16],
            },
            ts: 123_456_789,
            flags: flags::SPILL_WAKER,
            blocked_seq: 0,
            waker_seq: (1 << 48) | 9,
            woken: 123_999_000,
            runtime: 77,
        }
    }

    #[test]
    fn entries_round_trip() {
        let e = sample_entry();
        let bytes = e.encode();
        assert_eq!(RawEntry::decode(&bytes), Some(e.clone()));
        assert_eq!(RawKey::decode(&bytes[..KEY_SIZE]), Some(e.key.clone()));
        assert!(!e.key.has_waker());
        assert_eq!(RawEntry::decode(&bytes[..50]), None);
    }

    #[test]
    fn interval_records_decode() {
        let e = sample_entry();
        let mut rec = vec![0u8; spill::INTERVAL_SIZE + 4];
        rec[..4].copy_from_slice(&spill::INTERVAL.to_ne_bytes());
        rec[4..8].copy_from_slice(&e.flags.to_ne_bytes());
        rec[8..16].copy_from_slice(&5000u64.to_ne_bytes());
        rec[16..88].copy_from_slice(&e.encode()[..KEY_SIZE]);
        rec[96..104].copy_from_slice(&e.waker_seq.to_ne_bytes());
        let Some(Spilled::Interval {
            key,
            blocked_ns,
            waker_seq,
            ..
        }) = Spilled::decode(&rec)
        else {
            panic!("not decoded");
        };
        assert_eq!((key, blocked_ns, waker_seq), (e.key, 5000, e.waker_seq));
        assert_eq!(Spilled::decode(&rec[..100]), None);
    }

    #[test]
    fn stack_records_stop_at_their_lengths_and_zeroes() {
        // Two kernel frames, then the user frames right after them.
        let mut rec = vec![0u8; spill::STACKS_IPS + 5 * 8 + 4];
        rec[..4].copy_from_slice(&spill::STACKS.to_ne_bytes());
        rec[4..8].copy_from_slice(&16u32.to_ne_bytes());
        rec[8..16].copy_from_slice(&42u64.to_ne_bytes());
        rec[24..28].copy_from_slice(&16u32.to_ne_bytes());
        let ips = [
            0xffff_ffff_8100_0000u64,
            0xffff_ffff_8100_1000,
            0x401000,
            0x402000,
            0x403000,
        ];
        for (i, ip) in ips.iter().enumerate() {
            let at = spill::STACKS_IPS + i * 8;
            rec[at..at + 8].copy_from_slice(&ip.to_ne_bytes());
        }
        let Some(Spilled::Stacks {
            seq, user, kernel, ..
        }) = Spilled::decode(&rec)
        else {
            panic!("not decoded");
        };
        assert_eq!(seq, 42);
        assert_eq!(kernel, [0xffff_ffff_8100_0000, 0xffff_ffff_8100_1000]);
        // 16 bytes of user stack: two frames, the third is past the length.
        assert_eq!(user, [0x401000, 0x402000]);
        // An absurd kernel length is capped and the record's end ends the frames.
        rec[24..28].copy_from_slice(&u32::MAX.to_ne_bytes());
        let Some(Spilled::Stacks { kernel, user, .. }) = Spilled::decode(&rec) else {
            panic!("not decoded");
        };
        assert_eq!(kernel.len(), 5);
        assert!(user.is_empty());
        // A zero ends a stack.
        rec[24..28].copy_from_slice(&24u32.to_ne_bytes());
        rec[spill::STACKS_IPS + 8..spill::STACKS_IPS + 16].fill(0);
        let Some(Spilled::Stacks { kernel, .. }) = Spilled::decode(&rec) else {
            panic!("not decoded");
        };
        assert_eq!(kernel, [0xffff_ffff_8100_0000]);
        assert_eq!(Spilled::decode(&rec[..20]), None);
        assert_eq!(Spilled::decode(&[9, 0, 0, 0]), None);
    }
}

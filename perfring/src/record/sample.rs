//! PERF_RECORD_SAMPLE: the body layout is driven entirely by `sample_type`, in the
//! kernel's fixed field order (see `perf_output_sample` in kernel/events/core.c).

use perf_event_open_sys::bindings as b;

use super::callchain::Callchain;
use super::cursor::{read_u64, Cursor};
use super::{bits, ParseError, SampleFormat};

const RECORD_SAMPLE: u32 = b::PERF_RECORD_SAMPLE;

/// One decoded sample. Fields are `None` when `sample_type` did not request them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample<'a> {
    /// Flags (cpumode, EXACT_IP).
    pub misc: u16,
    /// IDENTIFIER.
    pub identifier: Option<u64>,
    /// IP.
    pub ip: Option<u64>,
    /// TID: process.
    pub pid: Option<u32>,
    /// TID: thread.
    pub tid: Option<u32>,
    /// TIME.
    pub time: Option<u64>,
    /// ADDR.
    pub addr: Option<u64>,
    /// ID.
    pub id: Option<u64>,
    /// STREAM_ID.
    pub stream_id: Option<u64>,
    /// CPU.
    pub cpu: Option<u32>,
    /// PERIOD.
    pub period: Option<u64>,
    /// READ.
    pub read: Option<ReadValues<'a>>,
    /// CALLCHAIN.
    pub callchain: Option<Callchain<'a>>,
    /// The RAW payload (a tracepoint's record), without the u32 size and the padding.
    pub raw: Option<&'a [u8]>,
    /// BRANCH_STACK.
    pub branch_stack: Option<BranchStack<'a>>,
    /// REGS_USER.
    pub regs_user: Option<UserRegs<'a>>,
    /// The copied user stack, already cut to the `dyn_size` the kernel actually filled.
    /// `Some(&[])` when the stack was requested but nothing was copied.
    pub stack_user: Option<&'a [u8]>,
    /// WEIGHT or WEIGHT_STRUCT (the same 8 bytes, packed differently).
    pub weight: Option<u64>,
    /// DATA_SRC.
    pub data_src: Option<u64>,
    /// TRANSACTION.
    pub transaction: Option<u64>,
}

impl Sample<'_> {
    /// `PERF_RECORD_MISC_CPUMODE_MASK` bits of `misc` (kernel, user, guest …).
    pub fn cpumode(&self) -> u16 {
        self.misc & b::PERF_RECORD_MISC_CPUMODE_MASK as u16
    }

    /// The kernel marked `ip` as the exact instruction (precise_ip).
    pub fn exact_ip(&self) -> bool {
        self.misc & b::PERF_RECORD_MISC_EXACT_IP as u16 != 0
    }
}

/// An array of native-endian u64 stored in record bytes of any alignment.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct U64Array<'a> {
    bytes: &'a [u8],
}

impl<'a> U64Array<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        U64Array { bytes }
    }
    /// Number of values.
    pub fn len(&self) -> usize {
        self.bytes.len() / 8
    }
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() < 8
    }
    /// Value `index`.
    pub fn get(&self, index: usize) -> Option<u64> {
        if index < self.len() {
            Some(read_u64(self.bytes, index * 8))
        } else {
            None
        }
    }
    /// The values in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u64> + ExactSizeIterator + 'a {
        self.bytes.chunks_exact(8).map(|c| read_u64(c, 0))
    }
    /// The underlying bytes (native endian), e.g. to copy a whole callchain at once.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl std::fmt::Debug for U64Array<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(Hex)).finish()
    }
}

/// Addresses read better in hex in `{:?}` output.
struct Hex(u64);

impl std::fmt::Debug for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// PERF_SAMPLE_REGS_USER: the ABI word and one u64 per bit set in `sample_regs_user`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs<'a> {
    abi: u64,
    mask: u64,
    regs: U64Array<'a>,
}

impl<'a> UserRegs<'a> {
    /// 0: no registers (kernel thread), 1: 32-bit task, 2: 64-bit task
    /// (`PERF_SAMPLE_REGS_ABI_*`).
    pub fn abi(&self) -> u64 {
        self.abi
    }
    /// The sampled register mask.
    pub fn mask(&self) -> u64 {
        self.mask
    }
    /// The value of perf register `perf_reg_index` (e.g. 8 = IP on x86_64), if present.
    pub fn get(&self, perf_reg_index: u32) -> Option<u64> {
        if self.abi == u64::from(b::PERF_SAMPLE_REGS_ABI_NONE) || perf_reg_index >= 64 {
            return None;
        }
        let bit = 1u64 << perf_reg_index;
        if self.mask & bit == 0 {
            return None;
        }
        let slot = (self.mask & (bit - 1)).count_ones() as usize;
        self.regs.get(slot)
    }
    /// The registers in mask order.
    pub fn values(&self) -> U64Array<'a> {
        self.regs
    }
}

/// One `{value, id, lost}` entry of PERF_SAMPLE_READ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadValue {
    /// The counter value.
    pub value: u64,
    /// Its event id (PERF_FORMAT_ID).
    pub id: Option<u64>,
    /// Lost samples of the event (PERF_FORMAT_LOST).
    pub lost: Option<u64>,
}

/// PERF_SAMPLE_READ, either one counter or a whole group (PERF_FORMAT_GROUP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadValues<'a> {
    /// PERF_FORMAT_TOTAL_TIME_ENABLED.
    pub time_enabled: Option<u64>,
    /// PERF_FORMAT_TOTAL_TIME_RUNNING.
    pub time_running: Option<u64>,
    /// Without PERF_FORMAT_GROUP the single entry is split around the times, so it is
    /// decoded eagerly; group entries stay in the record bytes.
    single: Option<ReadValue>,
    has_id: bool,
    has_lost: bool,
    entries: &'a [u8],
}

impl<'a> ReadValues<'a> {
    fn stride(&self) -> usize {
        8 * (1 + usize::from(self.has_id) + usize::from(self.has_lost))
    }
    /// Whether this came from a PERF_FORMAT_GROUP read (leader and members).
    pub fn is_group(&self) -> bool {
        self.single.is_none()
    }
    /// Number of counters.
    pub fn len(&self) -> usize {
        usize::from(self.single.is_some()) + self.entries.len() / self.stride()
    }
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The counters, leader first.
    pub fn iter(&self) -> impl Iterator<Item = ReadValue> + 'a {
        let (has_id, has_lost) = (self.has_id, self.has_lost);
        let group = self.entries.chunks_exact(self.stride()).map(move |c| {
            let mut at = 8;
            let mut next = |present: bool| {
                present.then(|| {
                    let v = read_u64(c, at);
                    at += 8;
                    v
                })
            };
            let id = next(has_id);
            let lost = next(has_lost);
            ReadValue {
                value: read_u64(c, 0),
                id,
                lost,
            }
        });
        self.single.into_iter().chain(group)
    }
}

/// One PERF_SAMPLE_BRANCH_STACK entry; `flags` packs mispred/predicted/in_tx/abort/cycles/type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BranchEntry {
    /// Branch source.
    pub from: u64,
    /// Branch target.
    pub to: u64,
    /// Packed flags.
    pub flags: u64,
}

/// PERF_SAMPLE_BRANCH_STACK (LBR records).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BranchStack<'a> {
    /// Present when `branch_sample_type` has PERF_SAMPLE_BRANCH_HW_INDEX.
    pub hw_index: Option<u64>,
    entries: &'a [u8],
    /// Present when `branch_sample_type` has PERF_SAMPLE_BRANCH_COUNTERS.
    pub counters: Option<U64Array<'a>>,
}

impl<'a> BranchStack<'a> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len() / 24
    }
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The entries, most recent first.
    pub fn iter(&self) -> impl Iterator<Item = BranchEntry> + 'a {
        self.entries.chunks_exact(24).map(|c| BranchEntry {
            from: read_u64(c, 0),
            to: read_u64(c, 8),
            flags: read_u64(c, 16),
        })
    }
}

fn has(fmt: &SampleFormat, bit: u64) -> bool {
    fmt.sample_type & bit != 0
}

/// Parses a sample body; `body` is the whole record including its 8-byte header.
pub(super) fn parse_sample<'a>(
    body: &'a [u8],
    misc: u16,
    fmt: &SampleFormat,
) -> Result<Sample<'a>, ParseError> {
    let mut c = Cursor::new(body, 8, RECORD_SAMPLE);
    let mut s = Sample {
        misc,
        ..Sample::default()
    };
    let opt = |c: &mut Cursor<'a>, bit: u64, field| -> Result<Option<u64>, ParseError> {
        if has(fmt, bit) {
            c.u64(field).map(Some)
        } else {
            Ok(None)
        }
    };
    s.identifier = opt(&mut c, bits::IDENTIFIER, "identifier")?;
    s.ip = opt(&mut c, bits::IP, "ip")?;
    if has(fmt, bits::TID) {
        let (pid, tid) = c.u32_pair("pid/tid")?;
        s.pid = Some(pid);
        s.tid = Some(tid);
    }
    s.time = opt(&mut c, bits::TIME, "time")?;
    s.addr = opt(&mut c, bits::ADDR, "addr")?;
    s.id = opt(&mut c, bits::ID, "id")?;
    s.stream_id = opt(&mut c, bits::STREAM_ID, "stream_id")?;
    if has(fmt, bits::CPU) {
        s.cpu = Some(c.u32_pair("cpu")?.0);
    }
    s.period = opt(&mut c, bits::PERIOD, "period")?;
    if has(fmt, bits::READ) {
        s.read = Some(parse_read(&mut c, fmt.read_format)?);
    }
    if has(fmt, bits::CALLCHAIN) {
        let nr = c.u64("callchain.nr")?;
        let entries = c.array(nr, 8, "callchain")?;
        s.callchain = Some(Callchain::new(U64Array::new(entries)));
    }
    if has(fmt, bits::RAW) {
        // u32 size + data, padded by the kernel so that the pair ends 8-byte aligned.
        let size = c.u32("raw.size")?;
        let data = c.array(u64::from(size), 1, "raw")?;
        let pad = (8 - (4 + data.len()) % 8) % 8;
        c.bytes(pad, "raw padding")?;
        s.raw = Some(data);
    }
    if has(fmt, bits::BRANCH_STACK) {
        let nr = c.u64("branch_stack.nr")?;
        let hw_index = if fmt.branch_sample_type & bits::BRANCH_HW_INDEX != 0 {
            Some(c.u64("branch_stack.hw_idx")?)
        } else {
            None
        };
        let entries = c.array(nr, 24, "branch_stack")?;
        let counters = if fmt.branch_sample_type & bits::BRANCH_COUNTERS != 0 {
            Some(U64Array::new(c.array(nr, 8, "branch_stack.counters")?))
        } else {
            None
        };
        s.branch_stack = Some(BranchStack {
            hw_index,
            entries,
            counters,
        });
    }
    if has(fmt, bits::REGS_USER) {
        let abi = c.u64("regs_user.abi")?;
        let regs = if abi == u64::from(b::PERF_SAMPLE_REGS_ABI_NONE) {
            &[][..]
        } else {
            let n = fmt.regs_user_mask.count_ones();
            c.array(u64::from(n), 8, "regs_user")?
        };
        s.regs_user = Some(UserRegs {
            abi,
            mask: fmt.regs_user_mask,
            regs: U64Array::new(regs),
        });
    }
    if has(fmt, bits::STACK_USER) {
        let size = c.u64("stack_user.size")?;
        let stack = if size == 0 {
            &[][..]
        } else {
            let data = c.array(size, 1, "stack_user")?;
            let dyn_size = c.u64("stack_user.dyn_size")?;
            usize::try_from(dyn_size)
                .ok()
                .and_then(|n| data.get(..n))
                .ok_or(ParseError::CountTooLarge {
                    record_type: RECORD_SAMPLE,
                    field: "stack_user.dyn_size",
                    count: dyn_size,
                    available: data.len(),
                })?
        };
        s.stack_user = Some(stack);
    }
    // The remaining fields are decoded only while their size is known without extra
    // attr state; REGS_INTR needs sample_regs_intr, which SampleFormat does not carry,
    // so parsing stops there.
    s.weight = opt(&mut c, bits::WEIGHT | bits::WEIGHT_STRUCT, "weight")?;
    s.data_src = opt(&mut c, bits::DATA_SRC, "data_src")?;
    s.transaction = opt(&mut c, bits::TRANSACTION, "transaction")?;
    Ok(s)
}

fn parse_read<'a>(c: &mut Cursor<'a>, read_format: u64) -> Result<ReadValues<'a>, ParseError> {
    let flag = |bit: u64| read_format & bit != 0;
    let has_id = flag(bits::FORMAT_ID);
    let has_lost = flag(bits::FORMAT_LOST);
    let time = |c: &mut Cursor<'a>, bit, field| -> Result<Option<u64>, ParseError> {
        if flag(bit) {
            c.u64(field).map(Some)
        } else {
            Ok(None)
        }
    };
    let stride = 8 * (1 + usize::from(has_id) + usize::from(has_lost));
    if flag(bits::FORMAT_GROUP) {
        let nr = c.u64("read.nr")?;
        let time_enabled = time(c, bits::FORMAT_TOTAL_TIME_ENABLED, "read.time_enabled")?;
        let time_running = time(c, bits::FORMAT_TOTAL_TIME_RUNNING, "read.time_running")?;
        let entries = c.array(nr, stride, "read.values")?;
        Ok(ReadValues {
            time_enabled,
            time_running,
            single: None,
            has_id,
            has_lost,
            entries,
        })
    } else {
        let value = c.u64("read.value")?;
        let time_enabled = time(c, bits::FORMAT_TOTAL_TIME_ENABLED, "read.time_enabled")?;
        let time_running = time(c, bits::FORMAT_TOTAL_TIME_RUNNING, "read.time_running")?;
        let id = time(c, bits::FORMAT_ID, "read.id")?;
        let lost = time(c, bits::FORMAT_LOST, "read.lost")?;
        Ok(ReadValues {
            time_enabled,
            time_running,
            single: Some(ReadValue { value, id, lost }),
            has_id,
            has_lost,
            entries: &[],
        })
    }
}
